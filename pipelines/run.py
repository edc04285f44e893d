"""End-to-end job: ETL -> train -> infer -> report, under one run id.

``dlpipe run --config FILE [--run-id ID]``. Re-running with the same run id is safe (a cron
retry): the ETL republishes the same dataset atomically, training resumes from its latest
checkpoint (or finds it complete), predictions and report are replaced, never duplicated.
"""
from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

from pyspark.sql import SparkSession

from pipelines.etl import job as etl
from pipelines.infer import job as infer
from pipelines.infer import quality
from pipelines.train import driver as train
from pipelines.config import ConfigError, PipelineConfig, to_yaml
from pipelines.artifact import load_artifact
from pipelines.progress import spark_progress
from pipelines.publish import check_writable, write_json_atomic, write_text_atomic
from pipelines.report import write_report
from pipelines.tracking import Tracker, open_tracker


def main(spark: SparkSession, config: PipelineConfig, on_event: Any = None) -> dict[str, Any]:
    """Run every stage; write ``summary.json`` and ``report.md`` into the run folder; track the run
    (``tracking``: MLflow, TensorBoard)."""
    check_splits(config)
    check_writable(config.run_dir(), "workdir")
    if config.infer.output:
        check_writable(config.infer.output, "infer.output")
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    with open_tracker(config, "run") as tracker:
        summary = _stages(spark, config, on_event, tracker)
        for name in ("summary.json", "config.yaml", "metrics.jsonl"):
            tracker.log_artifact(run_dir / name)
        for path in sorted(Path(summary["report"]).parent.glob("*")):
            tracker.log_artifact(path, "report")
    return summary


def _stages(spark: SparkSession, config: PipelineConfig, on_event: Any, tracker: Tracker) -> dict[str, Any]:
    run_dir = config.run_dir()
    summary: dict[str, Any] = {"run_id": config.run_id, "model": config.model.name, "dataset": config.dataset,
                               "config_hash": config.digest(), "stages": {}}

    def stage(name: str, fn: Callable[[], Any]) -> Any:
        print(f"dlpipe run {config.run_id}: stage {name} ...", flush=True)
        started = time.monotonic()
        try:
            with spark_progress(spark, name, shown=name != "train"):  # training draws its own bar
                out = fn()
        except BaseException as e:
            summary["stages"][name] = {"status": "failed", "seconds": time.monotonic() - started,
                                       "error": "".join(traceback.format_exception_only(e)).strip()}
            summary["status"] = "failed"
            write_json_atomic(run_dir / "summary.json", summary)
            raise
        summary["stages"][name] = {"status": "ok", "seconds": round(time.monotonic() - started, 2)}
        print(f"dlpipe run {config.run_id}: stage {name} done in {summary['stages'][name]['seconds']:.1f} s",
              flush=True)
        return out

    manifest = stage("etl", lambda: etl.main(spark, config))
    summary["etl"] = {k: manifest[k] for k in ("records_in", "accepted", "quarantined", "quarantine_by_reason")}
    tracker.log_metrics({"etl": summary["etl"]})
    trained = stage("train", lambda: train.main(spark, config, on_event=on_event, tracker=tracker))
    history = trained["history"]
    summary["train"] = {"epochs_completed": trained["epochs_completed"], "final_train_loss": history[-1]["loss"],
                        "final_val_loss": history[-1].get("val_loss"),
                        "final_val_metrics": {k: v for k, v in history[-1].items() if k.startswith("val_")},
                        "samples_per_s": history[-1]["samples_per_s"],
                        "devices": trained.get("devices", []), "precision": trained.get("precision", "fp32")}
    scored = stage("infer", lambda: infer.main(spark, config))
    evaluation = scored.get("eval", {})
    summary["eval"] = {k: v for k, v in evaluation.items() if k not in ("confusion_matrix",)}
    summary["infer"] = {k: scored[k] for k in ("rows", "bad_rows", "model_loads")}
    if generates_samples(trained["artifact"]):
        summary["sample_quality"] = stage("quality", lambda: quality.sample_quality(config, trained["artifact"]))
    tracker.log_metrics({"eval": summary["eval"], "infer": summary["infer"], "quality": summary.get("sample_quality", {})},
                        step=summary["train"]["epochs_completed"])
    summary["artifact"] = trained["artifact"]
    summary["predictions"] = scored["predictions"]
    summary["status"] = "ok"
    what = f"the {scored['split']} split" if scored["split"] else scored["input"]
    report = write_report(run_dir, summary, history, trained["artifact"], evaluation, what, scored["features_path"])
    summary["report"] = str(report)
    write_json_atomic(run_dir / "summary.json", summary)
    return summary


def generates_samples(artifact: str) -> bool:
    """Whether the artifact's model can generate new examples (its sample quality is then scored)."""
    model, _ = load_artifact(artifact)
    return callable(getattr(model, "sample", None))


def check_splits(config: PipelineConfig) -> None:
    """The split inference will score must be one the ETL makes: say so before any work."""
    ic = config.infer
    if not ic.input and not ic.source.kind and ic.split not in config.etl.splits:
        raise ConfigError(f"infer.split={ic.split!r} is not one of the splits etl.splits makes "
                          f"({', '.join(config.etl.splits)}): set infer.split to one of them")
