"""A schedule that runs and guards itself: four "days" of a growing image folder, as docs/operations.md's
cron and Airflow examples run them, with the drift gates and promotion on. Day 1 ingests and trains
the first champion; day 2 appends and scores the day's new raw files by alias; day 3 appends and
trains a challenger warm-started from day 1's model. Day 4's new files are inverted images: the
append flags them, the warm-started challenger is not promoted, scoring by alias keeps using the
champion, and the lineage of one of that day's predictions leads back to its raw file. Each day reads
only its new files, and every run says which dataset version it used."""
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
from pipelines import cli, guards, promotion
from pipelines.lineage import lineage
from pipelines.tracking import TRACKING_OFF

pytestmark = pytest.mark.slow
LABELS = (DIGITS_DIR / "labels.csv").read_text().splitlines()
DAYS = {1: LABELS[1:1001], 2: LABELS[1001:1301], 3: LABELS[1301:]}  # 1000, 300 and 497 new images
# Day 4: 300 inverted copies of day 2's images under new names (a camera or export that flipped its polarity)
DAYS[4] = [f"{row.split(',')[0].replace('digit_', 'inverted_')},{row.split(',')[1]}" for row in DAYS[2]]
GUARDS = ["drift.max_psi=0.25", "drift.max_label_shift=0.1", "promotion.alias=current"]


def _copy(name: str, target: Path) -> None:
    """Day 4's files are inverted copies of the bundled digits; the other days' are the digits."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if "inverted_" not in name:
        shutil.copy(DIGITS_DIR / name, target)
        return
    from PIL import Image, ImageOps

    ImageOps.invert(Image.open(DIGITS_DIR / name.replace("inverted_", "digit_")).convert("L")).save(target)


def _arrive(src: Path, day: int, incoming: Path | None = None) -> None:
    """The day's images land in the source folder (and, for scoring, in that day's incoming folder)."""
    for row in DAYS[day]:
        name = row.split(",")[0]
        for folder in filter(None, (src, incoming)):
            _copy(name, folder / name)
    labels = src / "labels.csv"
    before = labels.read_text().splitlines() if labels.exists() else [LABELS[0]]
    labels.write_text("\n".join(before + DAYS[day]) + "\n")


def _config(workdir: Path, src: Path, *overrides: str):
    return load_config(REPO_ROOT / "pipelines" / "configs" / "digits_cnn.yaml", [
        f"workdir={workdir}", f"etl.source.path={src}", "etl.mode=append", "master=local[2]", *TRACKING_OFF,
        *GUARDS, *overrides])


def test_four_days_of_appends_scoring_and_warm_started_challengers_with_the_guards_on(spark, tmp_path, capsys):
    src, work = tmp_path / "uploads", tmp_path / "work"

    # Day 1: the first ingest and a training run.
    _arrive(src, 1)
    day1 = run.main(spark, _config(work, src, "run_id=day1", "train.epochs=6"))
    assert day1.status == "ok" and day1.etl.version == 1 and day1.etl.records_in == 1000
    assert day1.dataset_version == 1 and day1.eval.accuracy > 0.9
    assert day1.promotion.promoted and day1.promotion.champion_run == "" and day1.promotion.entry == 1
    assert promotion.read_alias(str(work), "current").run_id == "day1"  # the first model becomes the champion

    # Day 2: the day's new files are appended; they are also scored raw with day 1's model.
    _arrive(src, 2, incoming=tmp_path / "incoming-day2")
    appended = etl.main(spark, _config(work, src, "run_id=day2"))
    assert (appended.version, appended.records_in, appended.input_files.listed) == (2, 300, 300)  # nothing re-read
    assert appended.drift is not None and appended.drift_problems == []  # more of the same: no gate
    assert appended.drift.max_psi < 0.25 and appended.drift.current_rows == 300
    scored = infer.main(spark, _config(work, src, "run_id=score-day2", "infer.model_alias=current",
                                       "infer.source.kind=images", f"infer.source.path={tmp_path / 'incoming-day2'}"))
    assert scored.rows == 300 and scored.bad_rows == 0 and scored.model_run == "day1"
    assert scored.drift is not None and scored.drift_problems == []

    # Day 3: append again and train from day 1's weights on all three days' data.
    _arrive(src, 3)
    day3 = run.main(spark, _config(work, src, "run_id=day3", "train.epochs=3", "train.init_from=day1"))
    assert day3.status == "ok" and day3.etl.version == 3 and day3.etl.records_in == len(DAYS[3])
    assert day3.dataset_version == 3 and day3.train.init_from.endswith("runs/day1/model/model.pt")
    challenge = day3.promotion  # both scored on the same records: v3's test split
    assert challenge.champion_run == "day1" and challenge.champion_score is not None
    assert challenge.evaluated_on.startswith("digits v3 split test")
    assert challenge.promoted == (challenge.challenger_score >= challenge.champion_score)
    champion = "day3" if challenge.promoted else "day1"
    assert promotion.read_alias(str(work), "current").run_id == champion
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
    assert len(promotion.alias_history(str(work), "current")) == (2 if champion == "day3" else 1)  # no new entry

    # Day 4: inverted images arrive. With drift.action=stop the append publishes nothing and says why.
    _arrive(src, 4, incoming=tmp_path / "incoming-day4")
    with pytest.raises(guards.DriftGateError, match=r"PSI above drift.max_psi=0.25 .*Version 4 was not published"):
        etl.main(spark, _config(work, src, "run_id=day4-etl", "drift.action=stop"))
    assert len(ds.read_head(view.location).versions) == 3
    # With drift.action=warn (the default) the version is published, flagged; the challenger trains on it.
    day4 = run.main(spark, _config(work, src, "run_id=day4", "train.epochs=2", f"train.init_from={champion}"))
    assert day4.etl.version == 4 and day4.drift.max_psi > 1.0 and day4.drift_problems
    assert "WARNING drift gate: PSI above drift.max_psi=0.25" in capsys.readouterr().out
    assert not day4.promotion.promoted and "drift gates were above their thresholds" in day4.promotion.reason
    assert day4.promotion.champion_run == champion and day4.promotion.champion_score is not None
    assert promotion.read_alias(str(work), "current").run_id == champion  # the champion stays
    report = (work / "runs" / "day4" / "report" / "report.md").read_text()
    assert "not promoted" in report and "Data drift" in report and (work / "runs" / "day4" / "report" /
                                                                      "drift.png").stat().st_size > 0

    # Scoring day 4's files by alias uses the champion; their drift against its training data is flagged.
    with pytest.raises(guards.DriftGateError, match="Nothing was published"):
        infer.main(spark, _config(work, src, "run_id=score-day4", "infer.model_alias=current", "drift.action=stop",
                                  "infer.source.kind=images", f"infer.source.path={tmp_path / 'incoming-day4'}"))
    scored4 = infer.main(spark, _config(work, src, "run_id=score-day4", "infer.model_alias=current",
                                        "infer.source.kind=images", f"infer.source.path={tmp_path / 'incoming-day4'}"))
    assert scored4.rows == 300 and scored4.model_run == champion and scored4.drift_problems

    # Lineage: one of day 4's predictions -> the champion -> its data and warm start -> the raw file.
    name = DAYS[4][7].split(",")[0]
    chain = lineage(str(work), "score-day4", prediction=name)
    assert chain[0].startswith(f"prediction '{name}' of run score-day4") and f"model of run {champion}" in chain[0]
    assert f"input: raw file {tmp_path / 'incoming-day4' / name}" in chain[1] + chain[2]
    assert any("trained on dataset digits versions v1" in line for line in chain)
    assert any(line.strip().startswith("warm-started from") for line in chain) == (champion == "day3")
    # ... and the same image as a dataset record of version 4, back to its file in the upload folder.
    record = lineage(str(work), "day4", record=name)
    assert record[-1].startswith(f"record '{name}': dataset digits v4") and str(src / name) in record[-1]
    # The command line says the same, from the work folder alone.
    capsys.readouterr()
    assert cli.main(["lineage", "score-day4", "--prediction", name, f"workdir={work}"]) == 0
    assert f"raw file {tmp_path / 'incoming-day4' / name}" in capsys.readouterr().out
    # A rollback by hand: the alias names day 4's model, then scoring by alias uses it.
    assert cli.main(["promote", "current", "day4", "--reason", "reviewed: inverted scans are real", f"workdir={work}"]) == 0
    assert promotion.read_alias(str(work), "current").run_id == "day4"
