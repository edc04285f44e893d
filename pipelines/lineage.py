"""``dlpipe lineage``: from a prediction or a record down to its raw file, from the work folder alone.

The chain is made of what each stage already writes, in any store:

    prediction row      model_run, model_digest (every prediction names its model: pipelines.infer)
    <run>/report/scored.json   what a scoring run scored (a dataset split, or raw files under a root)
    the model artifact  the run that trained it, the dataset versions with their content digests, and
                        the artifact it was warm-started from (pipelines.artifact.ArtifactMeta)
    a version's _sources/      each accepted record's raw file and row (pipelines.dataset.SOURCES_SCHEMA)

No Spark: the files are read with pyarrow through ``pipelines.storage``, so this runs on a laptop
against an S3 work folder too.
"""
from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines import dataset, storage
from pipelines.artifact import ArtifactMeta, load_metadata
from pipelines.formats import Record
from pipelines.promotion import artifact_digest
from pipelines.publish import committed_files
from pipelines.runfolder import SCORED_FILE, RunFolder

MAX_WARM_STARTS = 50  # a chain of warm starts longer than this is cut (a loop would never end)


class LineageError(RuntimeError):
    """A link of the chain is missing; the message names the file and the run or record."""


@dataclass(frozen=True)
class ScoredInput(Record):
    """What a scoring run scored, and with which model (``dlpipe infer`` writes it)."""

    kind: str  # split | raw | parquet
    described: str  # the input, as messages name it (credentials redacted)
    predictions: str  # where the predictions were published
    model_run: str
    model_digest: str
    dataset: str = ""  # kind split: the dataset, version and split scored
    version: int = 0
    split: str = ""
    root: str = ""  # kind raw: the folder or file the raw records were read from
    raw_kind: str = ""  # kind raw: images | csv | json | parquet


def record_scored(report_dir: str, scored: ScoredInput) -> None:
    """Keep ``scored`` beside the run's evaluation (the lineage of its predictions starts there)."""
    storage.write_text(storage.join(report_dir, SCORED_FILE), scored.to_json())


def lineage(workdir: str, run_id: str, record: str = "", prediction: str = "") -> list[str]:
    """The chain of run ``run_id`` as lines: its model, what it trained on and warm-started from; with
    ``prediction``, that prediction of the run's scoring first; with ``record``, that dataset record's
    version, split and raw file."""
    run_dir = storage.join(workdir, "runs", run_id)
    if not storage.is_dir(run_dir):
        raise LineageError(f"no run {run_id!r} in {storage.redact(workdir)} (no folder {storage.redact(run_dir)})")
    lines: list[str] = []
    model_run = run_id
    versions: list[dataset.VersionRef] = []
    dataset_name = ""
    if prediction:
        found = _prediction_chain(workdir, run_id, prediction)
        lines += found.lines
        model_run, record = found.model_run, record or found.record
        dataset_name = found.dataset
    if storage.is_file(RunFolder(storage.join(workdir, "runs", model_run)).artifact):
        meta = _model_chain(workdir, model_run, lines)
        versions, dataset_name = meta.dataset_versions, dataset_name or meta.dataset
    elif not prediction:
        raise LineageError(f"run {run_id!r} has no model ({storage.redact(RunFolder(run_dir).artifact)}); give "
                           "--prediction ID to follow one of its predictions to the model that made it")
    if record:
        lines += _record_chain(workdir, dataset_name, record, versions)
    return lines


@dataclass(frozen=True)
class _Found:
    lines: list[str]
    model_run: str
    record: str  # the dataset record the prediction scored ("" for raw input)
    dataset: str


def _prediction_chain(workdir: str, run_id: str, prediction: str) -> _Found:
    report = RunFolder(storage.join(workdir, "runs", run_id)).report
    location = storage.join(report, SCORED_FILE)
    if not storage.is_file(location):
        raise LineageError(f"run {run_id!r} scored nothing ({storage.redact(location)} is missing): give the id "
                           "of the run that wrote the predictions")
    scored = ScoredInput.from_json(storage.read_text(location), storage.redact(location))
    row = _find(committed_files(scored.predictions, ".parquet"), "id", prediction)
    if row is None:
        raise LineageError(f"no prediction with id {prediction!r} in run {run_id!r}'s predictions "
                           f"({storage.redact(scored.predictions)})")
    model_run = str(row.get("model_run") or scored.model_run)
    digest = str(row.get("model_digest") or scored.model_digest)
    lines = [f"prediction {prediction!r} of run {run_id} ({storage.redact(scored.predictions)}): made by the model "
             f"of run {model_run}, sha256 {digest}"]
    outputs = {k: v for k, v in row.items() if k in ("prediction", "error") and v is not None}
    if outputs:
        lines.append("  " + ", ".join(f"{k} {v}" for k, v in outputs.items()))
    if scored.kind == "split":
        lines.append(f"  input: record {prediction!r} of dataset {scored.dataset} v{scored.version} split "
                     f"{scored.split}")
        return _Found(lines, model_run, prediction, scored.dataset)
    if scored.kind == "raw" and scored.raw_kind == "images":
        lines.append(f"  input: raw file {storage.join(scored.root, prediction)}")
    elif row.get("_file"):
        lines.append(f"  input: raw file {row['_file']} row {row.get('_row')}")
    else:
        lines.append(f"  input: the row with id {prediction!r} of {scored.described}")
    return _Found(lines, model_run, "", "")


def _model_chain(workdir: str, run_id: str, lines: list[str]) -> ArtifactMeta:
    """Add the model of ``run_id`` and its warm starts to ``lines``; the first model's metadata."""
    first: ArtifactMeta | None = None
    artifact = RunFolder(storage.join(workdir, "runs", run_id)).artifact
    for depth in range(MAX_WARM_STARTS):
        meta = load_metadata(artifact)
        first = first or meta
        indent = "  " * depth
        lines.append(f"{indent}model of run {meta.run_id or run_id}: {storage.redact(artifact)}, sha256 "
                     f"{artifact_digest(artifact)} ({meta.model_name})")
        if meta.dataset_versions:
            lines.append(f"{indent}  trained on dataset {meta.dataset} versions "
                         + ", ".join(f"v{v.version} ({v.folder or 'root'}, digest {v.identity})"
                                     for v in meta.dataset_versions))
        else:
            lines.append(f"{indent}  trained on dataset version {meta.dataset_version} (identity "
                         f"{meta.manifest_hash}; saved before versions were recorded)")
        if not meta.init_from:
            lines.append(f"{indent}  initialized at random")
            break
        lines.append(f"{indent}  warm-started from {storage.redact(meta.init_from)}")
        if not storage.is_file(meta.init_from):
            lines.append(f"{indent}  (that file is gone: the chain ends here)")
            break
        artifact, run_id = meta.init_from, ""
    assert first is not None  # the loop ran at least once
    return first


def _record_chain(workdir: str, dataset_name: str, record: str, versions: list[dataset.VersionRef]) -> list[str]:
    if not dataset_name:
        raise LineageError(f"record {record!r}: the model does not name its dataset (saved before lineage was "
                           "recorded)")
    dataset_dir = storage.join(workdir, "datasets", dataset_name)
    head = dataset.read_head(dataset_dir)
    entries = head.versions if head else []
    if versions:  # the versions the model trained on (newer ones may hold the record too: look there after)
        known = {v.version for v in versions}
        entries = sorted(entries, key=lambda e: (e.version not in known, e.version))
    for entry in entries:
        folder = storage.join(dataset_dir, entry.folder) if entry.folder else dataset_dir
        sources = storage.join(folder, dataset.SOURCES)
        files = [f.location for f in storage.list_files(sources, suffix=".parquet")] if storage.is_dir(sources) else []
        row = _find(files, "id", record)
        if row is not None:
            where = f"raw file {row['source']}" + (f" row {row['row']}" if row.get("row") is not None else "")
            return [f"record {record!r}: dataset {dataset_name} v{entry.version} ({entry.folder}), split "
                    f"{row['split']}; {where}"]
    raise LineageError(f"record {record!r} is in no version of dataset {dataset_name} that keeps sources "
                       f"({storage.redact(dataset_dir)}; versions written before lineage have no {dataset.SOURCES})")


def _find(files: list[str], column: str, value: str) -> dict[str, object] | None:
    """The first row of ``files`` whose ``column`` equals ``value`` (read file by file: no index)."""
    for location in files:
        with storage.open_input(location) as f:
            table = pq.read_table(f)
        if column not in table.column_names:
            continue
        hits = table.filter(pc.equal(table[column], pa.scalar(value, table.schema.field(column).type)))
        if hits.num_rows:
            return {k: v for k, v in hits.slice(0, 1).to_pylist()[0].items() if k != "features"}
    return None
