"""A schedule that runs: three "days" of a growing image folder, as docs/operations.md's cron and Airflow
examples run them. Day 1 ingests and trains; day 2 appends and scores the day's new raw files with
day 1's model; day 3 appends and trains warm-started from day 1's model. Each day reads only its
new files, and every run says which dataset version it used."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from testkit import DIGITS_DIR, REPO_ROOT
from pipelines import dataset as ds
from pipelines import run
from pipelines.config import load_config
from pipelines.etl import job as etl
from pipelines.infer import job as infer
from pipelines.tracking import TRACKING_OFF

pytestmark = pytest.mark.slow
LABELS = (DIGITS_DIR / "labels.csv").read_text().splitlines()
DAYS = {1: LABELS[1:1001], 2: LABELS[1001:1301], 3: LABELS[1301:]}  # 1000, 300 and 497 new images


def _arrive(src: Path, day: int, incoming: Path | None = None) -> None:
    """The day's images land in the source folder (and, for scoring, in that day's incoming folder)."""
    for row in DAYS[day]:
        name = row.split(",")[0]
        for folder in filter(None, (src, incoming)):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(DIGITS_DIR / name, folder / name)
    labels = src / "labels.csv"
    before = labels.read_text().splitlines() if labels.exists() else [LABELS[0]]
    labels.write_text("\n".join(before + DAYS[day]) + "\n")


def _config(workdir: Path, src: Path, *overrides: str):
    return load_config(REPO_ROOT / "pipelines" / "configs" / "digits_cnn.yaml", [
        f"workdir={workdir}", f"etl.source.path={src}", "etl.mode=append", "master=local[2]", *TRACKING_OFF,
        *overrides])


def test_three_days_of_appends_scoring_and_a_warm_started_training(spark, tmp_path):
    src, work = tmp_path / "uploads", tmp_path / "work"

    # Day 1: the first ingest and a training run.
    _arrive(src, 1)
    day1 = run.main(spark, _config(work, src, "run_id=day1", "train.epochs=6"))
    assert day1.status == "ok" and day1.etl.version == 1 and day1.etl.records_in == 1000
    assert day1.dataset_version == 1 and day1.eval.accuracy > 0.9

    # Day 2: the day's new files are appended; they are also scored raw with day 1's model.
    _arrive(src, 2, incoming=tmp_path / "incoming-day2")
    appended = etl.main(spark, _config(work, src, "run_id=day2"))
    assert (appended.version, appended.records_in, appended.input_files.listed) == (2, 300, 300)  # nothing re-read
    scored = infer.main(spark, _config(work, src, "run_id=score-day2", "infer.model_run=day1",
                                       "infer.source.kind=images", f"infer.source.path={tmp_path / 'incoming-day2'}"))
    assert scored.rows == 300 and scored.bad_rows == 0

    # Day 3: append again and train from day 1's weights on all three days' data.
    _arrive(src, 3)
    day3 = run.main(spark, _config(work, src, "run_id=day3", "train.epochs=3", "train.init_from=day1"))
    assert day3.status == "ok" and day3.etl.version == 3 and day3.etl.records_in == len(DAYS[3])
    assert day3.dataset_version == 3 and day3.train.init_from.endswith("runs/day1/model/model.pt")
    view = ds.open_dataset(str(work / "datasets" / "digits"))
    assert view.version == 3 and sum(view.counts.values()) == 1797  # every image once, over three versions
    assert day3.eval.accuracy >= 0.9
    cold = [json.loads(x) for x in (work / "runs" / "day1" / "metrics.jsonl").read_text().splitlines()]
    warm = [json.loads(x) for x in (work / "runs" / "day3" / "metrics.jsonl").read_text().splitlines()]
    assert warm[0]["val_loss"] < cold[0]["val_loss"]  # the warm start begins where day 1 ended, not from scratch
    report = (work / "runs" / "day3" / "report" / "report.md").read_text()
    assert "Warm-started from" in report and "version 3" in report
    artifact = json.loads((work / "runs" / "day3" / "dataset.json").read_text())
    assert artifact["version"] == 3

    # A retry of day 3 (the same run id) appends nothing and finds its training complete.
    again = run.main(spark, _config(work, src, "run_id=day3", "train.epochs=3", "train.init_from=day1"))
    assert again.status == "ok" and again.dataset_version == 3 and len(ds.read_head(view.location).versions) == 3
