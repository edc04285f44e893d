"""Readers are not pulled out from under: a full ETL that commits a new version while a training
reads the old one keeps the old one until the training ends (the issue's nightly-rebuild case)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from testkit import REPO_ROOT, make_config
from pipelines import dataset, events
from pipelines.etl import job as etl
from pipelines.tracking import TRACKING_OFF
from pipelines.train import driver as train

ETL_TIMEOUT_S = 240  # a second Spark (its own JVM, local[1]) ETL of the digits: ~20 s quiet


@pytest.mark.slow
def test_a_full_etl_beside_a_running_training_keeps_its_version_and_the_training_finishes(spark, tmp_path):
    """At the end of epoch 2 the test runs `dlpipe etl` (a full rebuild of the same dataset) in
    another process, while the training's driver waits for it in its event handler (so the training
    job, and its read lease, are live for the whole ETL). The ETL commits its new version, keeps the
    old one naming the training, and the training then finishes on the old one; the next ETL removes it."""
    config = make_config(tmp_path, "run_id=reader", "train.epochs=5", "train.failure_timeout_s=600")
    etl.main(spark, config)
    root = config.dataset_dir
    old = dataset.read_head(root).versions[0].folder
    seen: dict[str, object] = {}

    def rebuild_at_epoch_2(event):
        if isinstance(event, events.EpochEnded) and event.record.epoch == 2 and "etl" not in seen:
            env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"}
            seen["etl"] = subprocess.run(
                [sys.executable, "-m", "pipelines", "etl", "--config", "pipelines/configs/digits_cnn.yaml",
                 f"workdir={tmp_path}", "master=local[1]", *TRACKING_OFF], cwd=REPO_ROOT, env=env,
                capture_output=True, text=True, timeout=ETL_TIMEOUT_S)
            seen["old_kept"] = Path(root, old).is_dir()
            seen["new_head"] = dataset.read_head(root)

    result = train.main(spark, config, on_event=rebuild_at_epoch_2)
    done = seen["etl"]
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"etl: kept the superseded {old} (" in done.stdout and "dlpipe train (run reader)" in done.stdout
    assert seen["old_kept"] and seen["new_head"].versions[0].folder != old  # committed, yet the old one stays
    assert result.epochs_completed == 5 and result.dataset_version == 1
    etl.main(spark, config)  # the next rebuild, after the training ended: the space is given back
    assert not Path(root, old).exists()
