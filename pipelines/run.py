"""End-to-end job: ETL -> train -> infer -> report, under one run id.

``dlpipe run --config FILE [--run-id ID]``. Re-running with the same run id is safe (a cron
retry): the ETL republishes the same dataset, training resumes from its latest checkpoint (or
finds it complete), predictions and report are replaced, never duplicated. Everything lands in the
run folder through ``pipelines.storage``, so the workdir may be in any store.
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

from pyspark.sql import SparkSession

import models
from pipelines import storage
from pipelines.challenger import PromotionOutcome, challenge
from pipelines.config import PipelineConfig
from pipelines.etl import job as etl
from pipelines.infer import job as infer
from pipelines.infer import quality
from pipelines.lease import check_leases
from pipelines.progress import spark_progress
from pipelines.report import write_report
from pipelines.runfolder import RunFolder
from pipelines.summary import EtlCounts, InferCounts, RunSummary, StageStatus, TrainFigures
from pipelines.tracking import Tracker, open_tracker
from pipelines.train import driver as train

Result = TypeVar("Result")  # what a stage returns (a manifest, TrainResult, InferResult, ...)


def main(spark: SparkSession, config: PipelineConfig, on_event: Any = None) -> RunSummary:
    """Run every stage; write ``summary.json`` and ``report.md`` into the run folder; track the run
    (``tracking``: MLflow, TensorBoard). The config was validated for ``run`` before Spark started."""
    run_dir = config.run_dir()
    storage.check_location(run_dir, "workdir")
    if config.infer.output:
        storage.check_location(storage.normalize(config.infer.output), "infer.output")
    folder = RunFolder(run_dir)
    folder.write_config(config)
    with open_tracker(config, "run") as tracker:
        summary = _stages(spark, config, on_event, tracker)
        for location in folder.tracked_files:
            tracker.log_artifact(location)
        for entry in storage.list_files(storage.parent(summary.report), recursive=False):
            tracker.log_artifact(entry.location, "report")
    return summary


def _challenge(spark: SparkSession, config: PipelineConfig, trained: Any, scored: Any,
               tracker: Tracker) -> PromotionOutcome:
    """The run's model as a challenger of ``promotion.alias``: decided, said, tracked."""
    outcome = challenge(spark, config, trained.artifact, scored.eval, trained.dataset_version, scored.split)
    print(f"dlpipe run {config.run_id}: {'promoted to' if outcome.promoted else 'not promoted to'} alias "
          f"{outcome.alias}: {outcome.reason}", flush=True)
    tracker.log_metrics({"promotion": outcome.figures()}, step=trained.epochs_completed)
    tracker.log_params({"promotion_decision": "promoted" if outcome.promoted else "kept champion",
                        "promotion_champion": outcome.champion_run})
    return outcome


def _stages(spark: SparkSession, config: PipelineConfig, on_event: Any, tracker: Tracker) -> RunSummary:
    run_dir = config.run_dir()
    summary = RunSummary(run_id=config.run_id, model=config.model.name, dataset=config.dataset,
                         config_hash=config.digest())

    def save(**changes: Any) -> None:
        nonlocal summary
        summary = dataclasses.replace(summary, **changes)
        storage.write_text(RunFolder(run_dir).summary, summary.to_json())

    def stage(name: str, fn: Callable[[], Result]) -> Result:
        check_leases()
        print(f"dlpipe run {config.run_id}: stage {name} ...", flush=True)
        started = time.monotonic()
        try:
            with spark_progress(spark, name, shown=name != "train"):  # training draws its own bar
                out = fn()
        except BaseException as e:
            error = "".join(traceback.format_exception_only(e)).strip()
            save(stages={**summary.stages, name: StageStatus("failed", round(time.monotonic() - started, 2),
                                                              storage.redact(error))}, status="failed")
            raise
        seconds = round(time.monotonic() - started, 2)
        summary_stages = {**summary.stages, name: StageStatus("ok", seconds)}
        save(stages=summary_stages)
        print(f"dlpipe run {config.run_id}: stage {name} done in {seconds:.1f} s", flush=True)
        return out

    manifest = stage("etl", lambda: etl.main(spark, config))
    counts = EtlCounts(manifest.records_in, manifest.accepted, manifest.quarantined, manifest.quarantine_by_reason,
                       manifest.version)
    save(etl=counts, dataset_version=manifest.version, drift=manifest.drift, drift_problems=manifest.drift_problems)
    tracker.log_metrics({"etl": counts.to_dict()})
    trained = stage("train", lambda: train.main(spark, config, on_event=on_event, tracker=tracker))
    last = trained.last
    save(train=TrainFigures(
        epochs_completed=trained.epochs_completed, final_train_loss=last.loss, final_val_loss=last.val_loss,
        final_val_metrics={f"val_{k}": v for k, v in last.val.items()}, samples_per_s=last.samples_per_s,
        devices=[d.to_dict() for d in trained.devices], precision=trained.precision, init_from=trained.init_from),
        artifact=trained.artifact, dataset_version=trained.dataset_version)
    trained_on = dataclasses.replace(config, dataset_version=trained.dataset_version)  # score the same version
    scored = stage("infer", lambda: infer.main(spark, trained_on))
    scoring = InferCounts(scored.rows, scored.bad_rows, scored.model_loads)
    save(eval=scored.eval, infer=scoring, predictions=scored.predictions)
    if config.promotion.alias:
        save(promotion=stage("promote", lambda: _challenge(spark, trained_on, trained, scored, tracker)))
    if models.spec(config.model.name).can(models.Samples):
        save(sample_quality=stage("quality", lambda: quality.sample_quality(trained_on, trained.artifact)))
    tracker.log_metrics({"eval": scored.eval.figures() if scored.eval else {}, "infer": scoring.to_dict(),
                         "quality": summary.sample_quality.to_dict() if summary.sample_quality else {}},
                        step=trained.epochs_completed)
    what = f"the {scored.split} split" if scored.split else scored.input
    report = write_report(run_dir, summary, {"this run": trained.history}, trained.artifact, scored.eval, what,
                          list(scored.features_files or []))
    save(report=report, status="ok")
    return summary
