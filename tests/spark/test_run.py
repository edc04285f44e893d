"""End to end: `dlpipe run` for each model through Spark ETL, Horovod training and Spark inference."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from pathlib import Path

from testkit import REPO_ROOT, make_config
from pipelines import run
from pipelines.dataset import open_dataset
from pipelines.summary import RunSummary
from pipelines.tracking import TRACKING_OFF

# Figures each case study must reach on the bundled digits test split (see docs/case-studies.md).
def _half_of_untrained(summary) -> bool:
    """A generative model's samples: at most half the Fréchet distance of its untrained self, and
    never better than real images (the floor)."""
    q = summary.sample_quality
    return q.real_vs_real < q.frechet_distance <= 0.5 * q.untrained_generator


CASES = {
    # config file (+ overrides), check on the summary, report figures
    "cnn": ("digits_cnn.yaml", lambda s: s.eval.accuracy >= 0.97, ["loss_curves.png", "confusion_matrix.png"]),
    "mlp": ("digits_cnn.yaml model.name=mlp", lambda s: s.eval.accuracy >= 0.95,
            ["loss_curves.png", "confusion_matrix.png"]),
    "autoencoder": ("digits_autoencoder.yaml", lambda s: s.eval.error_vs_baseline <= 0.4,
                    ["loss_curves.png", "reconstructions.png"]),
    "vae": ("digits_vae.yaml", lambda s: s.eval.error_vs_baseline <= 0.6 and _half_of_untrained(s),
            ["loss_curves.png", "reconstructions.png", "samples.png"]),
    "gan": ("digits_gan.yaml train.epochs=15", _half_of_untrained, ["loss_curves.png", "samples.png"]),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CASES))
def test_each_model_trains_through_the_pipeline_to_its_figure(spark, tmp_path, name):
    config_file, good_enough, figures = CASES[name]
    from pipelines.config import load_config

    config_file, *overrides = config_file.split()
    config = load_config(REPO_ROOT / "pipelines" / "configs" / config_file,
                         [f"workdir={tmp_path}", "master=local[2]", f"run_id={name}", *TRACKING_OFF, *overrides])
    summary = run.main(spark, config)
    assert summary.status == "ok"
    assert (summary.etl.records_in, summary.etl.accepted, summary.etl.quarantined) == (1797, 1797, 0)
    assert summary.train.epochs_completed == config.train.epochs
    assert good_enough(summary), (summary.eval, summary.sample_quality)
    report_dir = Path(config.run_dir()) / "report"
    for figure in figures:
        assert (report_dir / figure).stat().st_size > 1000, figure
    saved = RunSummary.from_json((Path(config.run_dir()) / "summary.json").read_text())
    assert saved == summary
    generative = name in ("vae", "gan")
    assert set(saved.stages) == {"etl", "train", "infer"} | ({"quality"} if generative else set())
    report = (report_dir / "report.md").read_text()
    assert ("## Sample quality" in report) == generative
    assert ("## Evaluation" in report) == (name != "gan")  # a generator has no evaluation: no empty section
    assert [(d["rank"], d["device"]) for d in saved.train.devices] == [(0, "cpu"), (1, "cpu")]
    assert (Path(config.run_dir()) / "config.yaml").is_file()


def _dlpipe_run(workdir, run_id, *extra):
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipelines", "run", "--config", "pipelines/configs/digits_cnn.yaml",
         "--run-id", run_id, f"workdir={workdir}", "master=local[2]", "train.epochs=4", *extra],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)


@pytest.mark.slow
@pytest.mark.timeout(1800)  # the three waits below add up to 1,100 s: more than the suite's 900 s default
def test_scheduled_rerun_resumes_and_never_duplicates(tmp_path):
    """A run killed mid-training, re-run with the same id (a cron retry), resumes from its
    checkpoint; a third run of the finished id leaves one complete, consistent run, tracked as one
    MLflow run (tracking is on by default on the command line). The captured console reads as lines.

    Waits: up to 300 s for the first run's "epoch 2/4 done" line (about 30 s on a quiet machine), then
    up to 400 s for each re-run (about 40 s quiet): 8-10x for a loaded 2-core machine."""
    first = _dlpipe_run(tmp_path, "2026-11-26")
    deadline = time.monotonic() + 300
    try:
        for line in first.stdout:
            if line.startswith("epoch 2/4 done") or time.monotonic() > deadline:
                break
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the whole process group we started: driver, JVM, ranks
        first.wait()
    run_dir = tmp_path / "runs" / "2026-11-26"
    assert not (run_dir / "summary.json").exists() or json.loads((run_dir / "summary.json").read_text())["status"] != "ok"

    for attempt in ("resume", "repeat"):
        proc = _dlpipe_run(tmp_path, "2026-11-26")
        out, _ = proc.communicate(timeout=400)
        assert proc.returncode == 0, out[-3000:]
        if attempt == "resume":
            assert "resuming from checkpoint after epoch" in out
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] == "ok" and summary["train"]["epochs_completed"] == 4
        epochs = [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3, 4]
        predictions = sorted(p.name for p in (run_dir / "predictions").iterdir() if p.name != "_readers")
        assert len(predictions) == 2 and predictions[0] == "_commit.json" and predictions[1].startswith("a-")
        assert not list((run_dir / "predictions" / "_readers").iterdir())  # the writer's record is gone
        lease = json.loads((run_dir / "_lease.json").read_text())
        assert lease["released"] is True  # released at the end (kept: the next holder's fence is higher)
        assert summary["infer"]["rows"] == summary["eval"]["rows"]
        leftovers = [p.name for p in tmp_path.rglob(".*tmp-*")]
        assert leftovers == []
        assert "\r" not in out and "[Stage" not in out  # no bar redrawn into the log, Spark's or ours
        assert [line for line in out.splitlines() if line.startswith("epoch ")] == [
            line for line in out.splitlines() if re.fullmatch(r"epoch \d/4 done: .*", line)]
    _check_one_mlflow_run(tmp_path, "2026-11-26", epochs=4)


def _check_one_mlflow_run(workdir, run_id: str, epochs: int) -> None:
    """Read the run back through MLflow's own client: one run, its params, metrics and artifacts."""
    from pipelines.tracking.mlflow_sink import mlflow_client

    client = mlflow_client((workdir / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("dlpipe").experiment_id])
    assert [r.info.run_name for r in runs] == [run_id]  # three invocations, one MLflow run
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["train.epochs"] == str(epochs) and run.data.params["model.name"] == "cnn"
    assert run.data.metrics["etl.records_in"] == 1797 and run.data.metrics["eval.accuracy"] > 0.9
    losses = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert {m.step for m in losses} == set(range(1, epochs + 1))
    artifacts = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml", "metrics.jsonl", "report", "model"} <= artifacts
    report = {f.path for f in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.md", "report/loss_curves.png", "report/confusion_matrix.png"} <= report
    assert [f.path for f in client.list_artifacts(run.info.run_id, "model")] == ["model/model.pt"]
    (trained_on,) = client.get_run(run.info.run_id).inputs.dataset_inputs  # lineage: the version and its digest
    view = open_dataset(str(workdir / "datasets" / "digits"))
    assert (trained_on.dataset.name, trained_on.dataset.digest) == ("digits v1", view.versions[0].identity)


# Split layouts other than train/val/test: names come from the manifest (short budgets: 3 epochs).
LAYOUTS = {
    "no-val": (["etl.splits={train: 0.8, test: 0.2}"], "test"),
    "holdout": (["etl.splits={train: 0.7, holdout: 0.3}", "infer.split=holdout"], "holdout"),
}


@pytest.mark.slow
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_any_split_layout_the_etl_accepts_runs_end_to_end(spark, tmp_path, layout, capsys):
    overrides, scored = LAYOUTS[layout]
    config = make_config(tmp_path, f"run_id={layout}", "train.epochs=3", *overrides)
    summary = run.main(spark, config)
    assert summary.status == "ok"
    view = open_dataset(config.dataset_dir)
    assert set(view.splits) == set(config.etl.splits) and view.splits[scored].files
    assert summary.infer.rows == view.counts[scored] == summary.eval.rows
    assert summary.eval.accuracy > 0.5
    assert summary.train.final_val_loss is None and summary.train.final_val_metrics == {}
    lines = [json.loads(x) for x in (Path(config.run_dir()) / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and not any(k.startswith("val_") for x in lines for k in x)
    assert "training without per-epoch validation" in capsys.readouterr().out
    report = (Path(config.run_dir()) / "report" / "report.md").read_text()
    assert f"## Evaluation on the {scored} split" in report and "(no validation split)" in report


def test_an_infer_split_the_etl_does_not_make_is_a_config_error_before_any_work(tmp_path):
    from pipelines.config import ConfigError
    from pipelines.preflight import validate

    config = make_config(tmp_path, "etl.splits={train: 0.7, holdout: 0.3}")  # infer.split stays "test"
    with pytest.raises(ConfigError, match="infer.split='test' is not one of the splits etl.splits makes"):
        validate(config, "run")
    assert not (tmp_path / "datasets").exists() and not (tmp_path / "runs").exists()


def test_an_unwritable_workdir_is_named_before_any_work(spark, tmp_path):
    from pipelines.storage import StorageError

    (tmp_path / "file").write_text("not a folder")
    config = make_config(tmp_path / "file" / "work")
    with pytest.raises(StorageError, match=r"workdir=.*file/work/runs/test: .*"):
        run.main(spark, config)
    assert (tmp_path / "file").read_text() == "not a folder"
