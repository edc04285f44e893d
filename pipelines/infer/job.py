"""Batch inference job (``dlpipe infer`` / ``spark-submit pipelines/__main__.py infer``).

Reads only the model artifact and its input: raw records (``infer.source``: images, CSV, JSON
lines, Parquet, preprocessed as the artifact records), any Parquet with a ``features`` column
(``infer.input``), or a dataset split (``infer.split``, any split the dataset has). Writes one
prediction row per input record (id, the model's outputs, error, and the ``infer.keep_columns``
of the input) from the Spark tasks through ``pipelines.storage``, commits them
(``pipelines.publish``: ``<output>/_commit.json`` names the files), and evaluates them when the
input has labels and the model's task has an evaluation.

Lineage and drift: every prediction names the model that made it (``model_run``, ``model_digest``);
the model is ``infer.artifact``, the run ``infer.model_run``'s, or the one alias ``infer.model_alias``
names now (``pipelines.promotion``: scoring follows promotions). Before publishing, the input's drift
against the model's training data is measured and gated (``drift.*``, ``pipelines.guards``).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from pipelines import guards, storage
from pipelines.artifact import ArtifactMeta, load_artifact
from pipelines.config import PipelineConfig
from pipelines.drift import DriftReport, Summary, compare
from pipelines.errors import ConfigError
from pipelines.formats import Record
from pipelines.infer.evaluate import Evaluation, evaluate
from pipelines.infer.inputs import ScoringInput, label_index, read_input, scored_features
from pipelines.infer.scoring import check_kept, plan_scoring, predict
from pipelines.lineage import ScoredInput, record_scored
from pipelines.promotion import resolve_alias
from pipelines.publish import COMMIT_FILE, committed_files, publishing
from pipelines.readers import ReadLease
from pipelines.runfolder import RunFolder
from pipelines.session import describe
from pipelines.tables import read_parquet, write_parquet

__all__ = ["InferResult", "ModelNotFoundError", "keep_columns", "main", "model_artifact", "predict"]


class ModelNotFoundError(FileNotFoundError):
    """The model artifact to score with does not exist; the message names the setting and the fix."""


@dataclass(frozen=True)
class InferResult(Record):
    """What ``dlpipe infer`` returns."""

    rows: int
    bad_rows: int  # rows with an error (null outputs)
    predictions: str  # the committed predictions' location (``_commit.json`` names the files)
    model_loads: int  # model loads in the workers (one per worker process and device)
    artifact: str
    input: str  # what was scored, for messages and the report
    split: str = ""  # the dataset split scored ("" = another input)
    features_files: list[str] | None = None  # Parquet files with the scored features (the report draws from them)
    eval: Evaluation | None = None
    model_run: str = ""  # the run that trained the model (every prediction names it too)
    model_digest: str = ""  # the artifact's sha256
    drift: DriftReport | None = None  # the input against the model's training data
    drift_problems: list[str] | None = None  # the drift gates above their thresholds


def main(spark: SparkSession, config: PipelineConfig, report_dir: str = "") -> InferResult:
    """Score the configured input, publish predictions, and evaluate when labels exist (its figures
    into ``report_dir``, default the run's report folder)."""
    ic = config.infer
    run_dir = config.run_dir()
    artifact = model_artifact(config)
    output = storage.normalize(ic.output) if ic.output else RunFolder(run_dir).predictions
    storage.check_location(output, "infer.output" if ic.output else "workdir")
    model, meta = load_artifact(artifact)
    # Registered before the input is resolved: a commit meanwhile keeps what this job reads.
    source = _read_root(config)
    with ReadLease(source, f"dlpipe infer (run {config.run_id})", config.lease.ttl_s) if source else nullcontext() \
            as reader:
        scoring = read_input(spark, config, meta)
        if reader is not None:
            reader.name(sorted({storage.relative(f, source).split("/", 1)[0] for f in scoring.features_files}))
        return _score(spark, config, scoring, model, meta, artifact, output, report_dir or RunFolder(run_dir).report)


def _read_root(config: PipelineConfig) -> str:
    """The folder whose superseded data a writer could remove under this job: the dataset for a
    split, the publication for ``infer.input``; "" for raw records (their files are the user's)."""
    ic = config.infer
    if ic.source.kind:
        return ""
    if ic.input:
        location = storage.normalize(ic.input)
        return location if storage.exists(storage.join(location, COMMIT_FILE)) else ""
    return config.dataset_dir


def _score(spark: SparkSession, config: PipelineConfig, scoring: ScoringInput, model: Any, meta: ArtifactMeta,
           artifact: str, output: str, report_dir: str) -> InferResult:
    """:func:`main` once its input is resolved (and protected): score, gate drift, publish, evaluate."""
    ic = config.infer
    keep = keep_columns(ic.keep_columns, scoring)
    try:
        check_kept(tuple(keep), list(scoring.frame.columns),
                   ["id", *model.output_schema(), "error", "model_run", "model_digest"])
    except ValueError as e:
        raise ConfigError(f"infer.keep_columns={ic.keep_columns}: {e}", key="infer.keep_columns") from None
    describe(spark, f"infer {storage.name(scoring.described)} with {storage.name(artifact)}")
    model_run = meta.run_id or trained_by(artifact)
    plan = plan_scoring(spark, scoring.frame, artifact, ic.batch_size, keep, device=ic.device,
                        gpu_batch_size=ic.gpu_batch_size, model_run=model_run)
    loads = plan.loads
    with publishing(output, f"dlpipe infer (run {config.run_id})") as attempt:  # scored and written in one pass
        written = write_parquet(plan.inputs, attempt.folder, count_nulls_of="error", transform=plan.scorer,
                                schema=plan.schema)
        drift, problems = input_drift(config, plan.input_summary(), meta)  # a stop: the attempt is not committed
        attempt.report(w.file for w in written)  # the commit names exactly what the tasks wrote
    rows = sum(w.rows for w in written)
    bad_rows = rows - sum(w.nulls for w in written)
    record_scored(report_dir, scored_input(config, scoring, output, model_run, plan.model_digest))
    files = committed_files(output, ".parquet")
    print(f"dlpipe infer: {rows} rows scored, {bad_rows} with an error, model loaded {len(loads.value)} time(s) "
          f"in {len(set(loads.value))} worker process(es); predictions in {storage.redact(output)}", flush=True)
    scored = read_parquet(spark, files, config.storage.reader) if files else None
    if bad_rows and scored is not None:
        bad = scored.filter("error IS NOT NULL")
        shown = "; ".join(f"{r['id'] or '<no id>'}: {r['error']}" for r in bad.orderBy("id").limit(3).collect())
        print(f"dlpipe infer: rows with an error have null outputs, e.g. {shown}", flush=True)
    if scoring.empty_files:
        print(f"dlpipe infer: {len(scoring.empty_files)} input file(s) are empty (0 bytes): "
              + ", ".join(scoring.empty_files[:5]) + (", ..." if len(scoring.empty_files) > 5 else ""), flush=True)
    evaluation = None
    label = label_index(scored, scoring, list(meta.label_names)) if scored is not None else None
    if label is not None and scored is not None:  # a label implies scored rows (checked for the type checker)
        outputs = scored.select(*model.output_schema(), "error", label.alias("label"))
        evaluation = evaluate(outputs, scored_features(scoring, meta.preprocessing), meta, report_dir)
    elif scoring.label_column:
        print(f"dlpipe infer: no evaluation: the label column {scoring.label_column!r} is not among "
              f"infer.keep_columns", flush=True)
    return InferResult(rows=rows, bad_rows=bad_rows, predictions=output, model_loads=len(loads.value),
                       artifact=artifact, input=scoring.described,
                       split="" if ic.input or ic.source.kind else ic.split,
                       features_files=scoring.features_files, eval=evaluation, model_run=model_run,
                       model_digest=plan.model_digest, drift=drift, drift_problems=problems)


def scored_input(config: PipelineConfig, scoring: ScoringInput, output: str, model_run: str,
                 digest: str) -> ScoredInput:
    """What this job scored, for ``dlpipe lineage``."""
    ic = config.infer
    if ic.source.kind:
        return ScoredInput("raw", scoring.described, output, model_run, digest,
                           root=storage.normalize(ic.source.path), raw_kind=ic.source.kind)
    if ic.input:
        return ScoredInput("parquet", scoring.described, output, model_run, digest)
    return ScoredInput("split", scoring.described, output, model_run, digest, dataset=config.dataset,
                       version=scoring.version, split=ic.split)


def input_drift(config: PipelineConfig, seen: Summary | None,
                meta: ArtifactMeta) -> tuple[DriftReport | None, list[str]]:
    """The scored input's drift (``seen``, summarized by the scoring tasks) against the model's
    training data, said on the console and gated (``drift.*``: a stop raises before the predictions
    are committed); (None, []) for a model saved without a summary of its training data."""
    if meta.training_summary is None or seen is None:
        return None, []
    report = compare(meta.training_summary, seen)
    print(f"dlpipe infer: drift of the input against the model's training data: {report.describe()}", flush=True)
    return report, guards.apply_gates(report, config.drift, "dlpipe infer", "Nothing was published")


def trained_by(artifact: str) -> str:
    """The run whose folder holds ``artifact`` (``<workdir>/runs/<run>/model/model.pt``), else ""."""
    run_dir = storage.parent(storage.parent(artifact))
    return storage.name(run_dir) if storage.name(storage.parent(run_dir)) == "runs" else ""


def model_artifact(config: PipelineConfig) -> str:
    """The artifact: ``infer.artifact``, else the model of run ``infer.model_run``, else the model
    alias ``infer.model_alias`` names now, else this run's."""
    ic = config.infer
    if ic.model_alias:
        entry = resolve_alias(config.workdir_location, ic.model_alias)
        print(f"dlpipe infer: infer.model_alias={ic.model_alias} names run {entry.run_id}'s model "
              f"(entry {entry.number}, digest {entry.digest[:12]})", flush=True)
        return entry.artifact
    if ic.artifact:
        artifact, key = storage.normalize(ic.artifact), "infer.artifact"
    elif ic.model_run:
        artifact, key = RunFolder(config.run_dir(ic.model_run)).artifact, "infer.model_run"
    else:
        artifact, key = RunFolder.of(config).artifact, "run_id"
    if not storage.is_file(artifact):
        run = ic.model_run or config.run_id
        raise ModelNotFoundError(f"model artifact {storage.redact(artifact)} ({key}) does not exist: train first "
                                 f"(`dlpipe train` with run_id={run}) or set infer.artifact / infer.model_run")
    return artifact


def keep_columns(requested: list[str], scoring: ScoringInput) -> list[str]:
    """The input columns ``infer.keep_columns`` copies to the predictions (``id`` is always there)."""
    available = [c for c in scoring.columns if c not in ("id", "features")]
    if requested == ["*"]:
        return available
    unknown = [c for c in requested if c not in available and c != "id"]
    if unknown:
        raise ConfigError(f"infer.keep_columns names {unknown}, not column(s) of {scoring.described} (its columns "
                          f"besides the features: {available})", key="infer.keep_columns")
    return [c for c in requested if c != "id"]
