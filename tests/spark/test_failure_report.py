"""A failure reads in a few lines: when a rank fails, the console says which rank, which file and
what to do, once, and where the full logs are; the Java stack traces and the rank's traceback stay
in those log files (issue 31, item 10)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from testkit import REPO_ROOT, publish_dataset
from pipelines import dataset
from pipelines.tracking import TRACKING_OFF

TRAIN_TIMEOUT_S = 300  # a Spark of its own and two ranks failing at their first read: ~25 s quiet


JVM_INCUBATOR_WARNING = "WARNING: Using incubator modules: jdk.incubator.vector"


def test_a_damaged_dataset_file_fails_the_training_in_two_lines_naming_the_file_and_the_logs(tmp_path):
    workdir = tmp_path / "work"
    dataset_dir = workdir / "datasets" / "digits"
    manifest = publish_dataset(str(dataset_dir), {"train": 64, "val": 16, "test": 16})
    folder = dataset.read_head(str(dataset_dir)).versions[0].folder
    damaged = dataset_dir / folder / manifest.splits["train"].files[0].path
    damaged.write_bytes(damaged.read_bytes()[:200])  # a torn copy: no Parquet footer

    # secrets in their proper places (the credential chains' variables): the failure prints none of them
    planted = {"MLFLOW_TRACKING_PASSWORD": "PLANTEDfailPw4Hq", "AZURE_STORAGE_KEY": "PLANTEDfailAz8Lm"}
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **planted}
    env.pop("DLPIPE_SPARK_LOG", None)  # this test's own Spark log file, not the suite's
    done = subprocess.run(
        [sys.executable, "-m", "pipelines", "train", "--config", "pipelines/configs/digits_cnn.yaml",
         "--run-id", "damaged", f"workdir={workdir}", "master=local[2]", "train.epochs=1", *TRACKING_OFF],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S)

    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    # Spark 4's JVM announces the incubator module it loads (jdk.incubator.vector) on its own stderr
    # before any of dlpipe's code runs: the one line that is not dlpipe's (README "Spark lines")
    error = [line for line in done.stderr.strip().splitlines() if line != JVM_INCUBATOR_WARNING]
    assert len(error) == 2, done.stderr  # the cause, and where the full traces are
    assert error[0].startswith("dlpipe train: TrainError: training failed after 1 attempt(s)")
    assert f"{damaged}: not a readable Parquet file" in error[0] and "rebuild it (dlpipe etl" in error[0]
    assert re.search(r"rank [01] failed: DatasetError: ", error[0]) and error[0].count(str(damaged)) == 1
    for output in (done.stdout, done.stderr):
        assert "Traceback" not in output and "\tat org.apache" not in output
    # the traces are where the console says
    rank_log = re.search(r"traceback in its log [^:]+:(\S+)\)", error[0]).group(1)
    assert "Traceback (most recent call last)" in Path(rank_log).read_text()
    spark_log = Path(re.fullmatch(r"\(full traces: (\S+)\)", error[1]).group(1))
    text = spark_log.read_text()
    assert "at org.apache.spark" in text and "pipelines.train.driver.TrainError" in text
    written = [done.stdout, done.stderr, text, Path(rank_log).read_text(),
               *(p.read_text(errors="replace") for p in workdir.rglob("*") if p.is_file())]
    assert not [name for name, secret in planted.items() if any(secret in w for w in written)]
    assert re.findall(r"\[rank (\d)\] failed: DatasetError \(traceback in its log", done.stdout)
