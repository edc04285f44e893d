"""Scoring with a model artifact, vectorized in Spark: the ``mapInArrow`` function and its helpers.

The artifact reaches the executors through Spark (``SparkContext.addFile``), so they need not see
the driver's filesystem. Scoring uses ``mapInArrow``: the ``features`` list column arrives as one
flat Arrow buffer that becomes a (rows, features) NumPy array without a copy per row, where a
pandas UDF would first build one Python object per row. Each Python worker loads the model once
per device, cached by the artifact's content hash; a task runs it on the GPU Spark gave it, else
(``infer.device=auto``) a GPU the worker sees, else the CPU (``pipelines.device``). Image files'
bytes are decoded in the same pass, by the preprocessing the ETL used (``pipelines.preprocess``).
Input columns named in ``keep`` ride along in the same Arrow batches and come out unchanged.
``pipelines.infer.udf`` scores with the same pieces.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from pyspark import SparkFiles
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pipelines import storage
from pipelines.artifact import Preprocessing, load_artifact
from pipelines.device import DeviceChoice, resolve_device, visible_gpus
from pipelines.drift import Summary, merge, summarize
from pipelines.guards import empty_layout
from pipelines.infer import predict as predict_on
from pipelines.preprocess import decode_images

_SPARK_TYPES = {"int64": T.LongType(), "float32": T.FloatType()}
_ARROW_TYPES = {"int64": pa.int64(), "float32": pa.float32()}
FLOAT_LISTS = pa.list_(pa.float32())
_MODEL_CACHE: dict[tuple[str, str], Any] = {}  # per Python worker: (artifact digest, device) -> (model, normalizer)
# A column of a scored frame holding a preprocessing error (raw input): it wins over the features'.
PREPROCESS_ERROR = "_dlpipe_preprocess_error"
_IN_ID, _IN_FEATURES = "_dlpipe_id", "_dlpipe_features"  # internal names: never clash with kept columns
_STAGING: list[Path] = []  # the driver's one staging folder, removed when the driver exits


ArrowMap = Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]  # a mapInArrow function


def _ship(spark: SparkSession, data: bytes, digest: str) -> str:
    """``addFile`` a local copy of the artifact's bytes named by its digest; return that name.

    ``addFile`` keys files by name, so the digest keeps versions apart; the copy is made once per
    artifact version and driver process (the same path added twice is a no-op for Spark). The
    artifact may live in any store: Spark ships the driver's copy, executors need no access to it.
    """
    if not _STAGING:
        _STAGING.append(Path(tempfile.mkdtemp(prefix="dlpipe-infer-")))
        atexit.register(shutil.rmtree, _STAGING[0], True)
    name = f"dlpipe-model-{digest}.pt"
    staged = _STAGING[0] / name
    if not staged.is_file():
        staged.write_bytes(data)
    spark.sparkContext.addFile(str(staged))
    return name


class _ListParam(AccumulatorParam[list[int]]):
    """Accumulates a list: the process id of every model load, so repeated loads would show."""

    def zero(self, value: list[int]) -> list[int]:
        return []

    def addInPlace(self, a: list[int], b: list[int]) -> list[int]:
        return a + b


class _SummaryParam(AccumulatorParam[str]):
    """Merges drift summaries (JSON text, "" = none): what the scoring tasks saw of their input."""

    def zero(self, value: str) -> str:
        return ""

    def addInPlace(self, a: str, b: str) -> str:
        if not a or not b:
            return a or b
        return merge([Summary.from_json(a), Summary.from_json(b)]).to_json()


def output_fields(model_schema: dict[str, tuple[str, tuple[int, ...]]]) -> list[T.StructField]:
    """Spark fields of the model's declared outputs, then ``error``."""
    fields = []
    for name, (dtype, shape) in model_schema.items():
        base = _SPARK_TYPES[dtype]
        fields.append(T.StructField(name, T.ArrayType(base) if shape else base))
    return fields + [T.StructField("error", T.StringType())]


def output_schema(model_schema: dict[str, tuple[str, tuple[int, ...]]],
                  kept: list[T.StructField] | tuple[T.StructField, ...] = ()) -> T.StructType:
    """Spark schema of the predictions: id, the model's declared outputs, error, the kept input columns."""
    return T.StructType([T.StructField("id", T.StringType()), *output_fields(model_schema), *kept])


def features_matrix(column: pa.Array, num_features: int) -> tuple[NDArray[np.float32], list[str | None]]:
    """(rows, num_features) float32 matrix and a per-row error (None = usable).

    Bad rows (null, wrong length, NaN/inf) get zeros in the matrix and an error message.
    """
    n = len(column)
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    lengths = np.asarray(column.value_lengths().fill_null(-1), dtype=np.int64)
    errors: list[str | None] = [None] * n
    if column.null_count == 0 and (lengths == num_features).all():
        matrix = np.asarray(column.flatten(), dtype=np.float32).reshape(n, num_features)
    else:
        matrix = np.zeros((n, num_features), dtype=np.float32)
        for i in range(n):
            if lengths[i] < 0:
                errors[i] = "features is null"
            elif lengths[i] != num_features:
                errors[i] = f"features has {lengths[i]} values, the model expects {num_features}"
            else:
                matrix[i] = np.asarray(column[i].values, dtype=np.float32)
    bad = ~np.isfinite(matrix).all(axis=1)
    for i in np.flatnonzero(bad):
        errors[i] = "features contain NaN or inf"
        matrix[i] = 0.0
    return matrix, errors


def image_features(contents: Iterable[bytes | None], prep: Preprocessing) -> tuple[pa.Array, list[str | None]]:
    """Image files' bytes -> features decoded as the ETL decoded the training images, and per file
    ``decode_error: <detail>`` (None when it decoded)."""
    features, details = decode_images(contents, prep)
    return pa.array(features, type=FLOAT_LISTS), [None if d is None else f"decode_error: {d}" for d in details]


@dataclass(frozen=True)
class ShippedModel:
    """A model artifact the executors can load: plain data (and an accumulator), picklable into tasks."""

    file_name: str  # the ``addFile`` name of the artifact's copy
    digest: str  # content hash: the per-worker cache key
    sha256: str  # the artifact's whole sha256 (hex): what predictions and promotions name it by
    schema: dict[str, tuple[str, tuple[int, ...]]]  # the model's declared outputs
    num_features: int
    preprocessing: Preprocessing
    loads: Any  # accumulator of the process ids that loaded the model
    layout: Summary | None = None  # the bins of the model's training data (None: saved without a summary)
    seen: Any = None  # accumulator of the drift summary of the rows scored (with ``layout``)


def ship_model(spark: SparkSession, artifact: str) -> ShippedModel:
    """Make ``artifact`` (a location in any store) available to the executors (``addFile``) and
    describe it for scoring."""
    import hashlib

    data = storage.read_bytes(storage.normalize(artifact))
    sha256 = hashlib.sha256(data).hexdigest()
    name = _ship(spark, data, sha256[:16])
    model, meta = load_artifact(str(_STAGING[0] / name))
    trained_on = meta.training_summary
    layout = empty_layout(trained_on.names, trained_on.blocks, trained_on.edges) if trained_on else None
    return ShippedModel(name, sha256[:16], sha256, model.output_schema(), int(np.prod(meta.feature_shape)),
                        meta.preprocessing, spark.sparkContext.accumulator([], _ListParam()), layout,
                        spark.sparkContext.accumulator("", _SummaryParam()))


def worker_model(shipped: ShippedModel, device: str = "cpu") -> Any:
    """The worker's cached (model, normalizer) on ``device``; loads it on first use in this process."""
    key = (shipped.digest, device)
    if key not in _MODEL_CACHE:
        import torch

        model, meta = load_artifact(SparkFiles.get(shipped.file_name))
        _MODEL_CACHE[key] = (predict_on.place(model, torch.device(device)), meta.normalizer())
        shipped.loads.add([os.getpid()])
    return _MODEL_CACHE[key]


def task_device(requested: str) -> DeviceChoice:
    """This scoring task's device (``infer.device``): the GPU Spark gave the task, else a GPU the
    worker sees (by partition), else the CPU. Spark does not narrow a Python worker's
    ``CUDA_VISIBLE_DEVICES``, so a task's GPU address is its device index."""
    from pyspark import TaskContext

    context = TaskContext.get()
    gpu = context.resources().get("gpu") if context else None
    return resolve_device(requested, tuple(gpu.addresses) if gpu is not None else (), visible_gpus(),
                          local_rank=context.partitionId() if context else 0, key="infer.device", restricted=False)


def score_matrix(model: Any, normalize: Any, matrix: NDArray[np.float32], batch_size: int,
                 schema: dict[str, tuple[str, tuple[int, ...]]]) -> dict[str, NDArray[Any]]:
    """The model's outputs for a (rows, features) matrix, ``batch_size`` rows per forward pass on
    the model's device."""
    outputs = predict_on.score(model, normalize(matrix), batch_size) if len(matrix) else {}
    return {name: outputs[name].numpy() if outputs else np.zeros((0, *shape), dtype=dtype)
            for name, (dtype, shape) in schema.items()}


def merge_errors(preprocess: list[str | None], scoring: list[str | None]) -> list[str | None]:
    """Per row, the preprocessing error if any (it explains a missing feature vector), else scoring's."""
    return [p if p is not None else s for p, s in zip(preprocess, scoring)]


def set_torch_threads() -> None:
    """Torch threads = the cores Spark gave this task (the default oversubscribes shared executors)."""
    import torch
    from pyspark import TaskContext

    context = TaskContext.get()
    torch.set_num_threads(max(1, context.cpus() if context else 1))


@dataclass(frozen=True)
class Placement:
    """Where scoring runs: ``infer.device`` and the rows per forward pass on each kind of device."""

    device: str = "auto"  # auto | cpu | cuda
    batch_size: int = 512  # rows per forward pass on the CPU
    gpu_batch_size: int = 4096  # rows per forward pass on a GPU

    def load(self, shipped: ShippedModel) -> tuple[Any, Any, int]:
        """In a task: (model on the task's device, normalizer, rows per forward pass)."""
        set_torch_threads()
        choice = task_device(self.device)
        model, normalize = worker_model(shipped, choice.device)
        return model, normalize, predict_on.forward_rows(choice.torch_device, self.batch_size, self.gpu_batch_size)


def make_scorer(shipped: ShippedModel, placement: Placement, keep: tuple[str, ...] = (),
                stamp: tuple[tuple[str, str], ...] = ()) -> ArrowMap:
    """The ``mapInArrow`` function: Arrow batches in, prediction batches (plus ``stamp``'s constant
    columns, then the ``keep`` columns) out."""
    schema = shipped.schema

    def score(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        model, normalize, batch_size = placement.load(shipped)
        seen = [shipped.layout] if shipped.layout else []
        for batch in batches:
            column = batch.column(_IN_FEATURES)
            known = (batch.column(PREPROCESS_ERROR).to_pylist() if PREPROCESS_ERROR in batch.schema.names
                     else [None] * batch.num_rows)
            if pa.types.is_binary(column.type):  # image files: decoded here, in the scoring pass
                column, decoded = image_features(column.to_pylist(), shipped.preprocessing)
                known = merge_errors(known, decoded)
            matrix, errors = features_matrix(column, shipped.num_features)
            errors = merge_errors(known, errors)
            ok = np.array([e is None for e in errors], dtype=bool)
            if seen:  # the input's drift, summarized in this pass (no second read of the input)
                seen.append(summarize(matrix[ok], None, seen[0].names, seen[0].blocks, seen[0].edges))
            outputs = score_matrix(model, normalize, matrix, batch_size, schema)
            columns = [batch.column(_IN_ID)]
            for name, (dtype, shape) in schema.items():
                columns.append(_arrow_column(outputs[name], dtype, shape, ok))
            columns.append(pa.array(errors, type=pa.string()))
            columns.extend(pa.array([value] * batch.num_rows, pa.string()) for _, value in stamp)
            columns.extend(batch.column(name) for name in keep)
            yield pa.RecordBatch.from_arrays(columns, names=["id", *schema, "error", *(n for n, _ in stamp), *keep])
        if len(seen) > 1:
            shipped.seen.add(merge(seen).to_json())

    return score


def _arrow_column(values: NDArray[Any], dtype: str, shape: tuple[int, ...], ok: NDArray[np.bool_]) -> pa.Array:
    mask = ~ok
    if not shape:
        return pa.array(values.astype(dtype), type=_ARROW_TYPES[dtype], mask=mask)
    flat = pa.array(values.astype(dtype).reshape(-1), type=_ARROW_TYPES[dtype])
    offsets = pa.array(np.arange(0, len(values) * shape[0] + 1, shape[0], dtype=np.int32))
    lists = pa.ListArray.from_arrays(offsets, flat)
    return pa.array([v if good else None for v, good in zip(lists.to_pylist(), ok)],
                    type=pa.list_(_ARROW_TYPES[dtype])) if mask.any() else lists


@dataclass(frozen=True)
class Scoring:
    """A planned scoring: its input frame, the ``mapInArrow`` function, the predictions' schema."""

    inputs: DataFrame
    scorer: Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]  # the mapInArrow function
    schema: T.StructType
    loads: Any  # accumulator of the worker process ids that loaded the model
    model_digest: str = ""  # the artifact's sha256
    seen: Any = None  # accumulator of the drift summary of the rows scored ("" = none)

    def predictions(self) -> DataFrame:
        return self.inputs.mapInArrow(self.scorer, self.schema)

    def input_summary(self) -> Summary | None:
        """Once the predictions are computed: the drift summary of the rows scored (None: the
        model has no training summary to compare with)."""
        text = self.seen.value if self.seen is not None else ""
        return Summary.from_json(text) if text else None


def predict(spark: SparkSession, frame: DataFrame, artifact: str, batch_size: int = 512,
            keep: list[str] | tuple[str, ...] = (), *, device: str = "auto",
            gpu_batch_size: int = 4096) -> tuple[DataFrame, Any]:
    """Score ``frame`` with the artifact; returns (predictions, loads accumulator) (see :func:`plan_scoring`)."""
    scoring = plan_scoring(spark, frame, artifact, batch_size, keep, device=device, gpu_batch_size=gpu_batch_size)
    return scoring.predictions(), scoring.loads


def plan_scoring(spark: SparkSession, frame: DataFrame, artifact: str, batch_size: int = 512,
                 keep: list[str] | tuple[str, ...] = (), *, device: str = "auto",
                 gpu_batch_size: int = 4096, model_run: str | None = None) -> Scoring:
    """Plan scoring ``frame`` with the artifact.

    ``frame`` has ``features`` (array of numbers) or, for a model trained on images, ``content``
    (the image files' bytes, as Spark's ``binaryFile`` source reads them; decoded by the training's
    preprocessing), optionally ``id`` (null ids when absent) and :data:`PREPROCESS_ERROR`. The
    predictions are ``id``, the model's outputs, ``error`` (null when the row scored) and the ``keep``
    columns of ``frame``, unchanged; one row per input row. The artifact
    is shipped with ``addFile``; executors read their local copy. ``device`` (``infer.device``):
    auto | cpu | cuda; ``batch_size`` rows per forward pass on the CPU, ``gpu_batch_size`` on a GPU.
    With ``model_run`` (lineage), every prediction also names the model: ``model_run`` and
    ``model_digest`` (the artifact's sha256), after ``error``.
    """
    shipped = ship_model(spark, artifact)
    schema = shipped.schema
    keep = tuple(keep)
    stamp = (("model_run", model_run), ("model_digest", shipped.sha256)) if model_run is not None else ()
    check_kept(keep, frame.columns, ["id", *schema, "error", *(n for n, _ in stamp)])
    scorer = make_scorer(shipped, Placement(device, batch_size, gpu_batch_size), keep, stamp)
    ident = F.col("id").cast("string") if "id" in frame.columns else F.lit(None).cast("string")
    inputs = [ident.alias(_IN_ID), model_input(frame, shipped.preprocessing).alias(_IN_FEATURES)]
    if PREPROCESS_ERROR in frame.columns:
        inputs.append(F.col(PREPROCESS_ERROR))
    kept = [*(T.StructField(name, T.StringType()) for name, _ in stamp), *(frame.schema[name] for name in keep)]
    return Scoring(frame.select(*inputs, *keep), scorer, output_schema(schema, kept), shipped.loads,
                   shipped.sha256, shipped.seen if shipped.layout else None)


def model_input(frame: DataFrame, prep: Preprocessing) -> Column:
    """What the scorer reads: ``features`` as float32, or the image bytes in ``content``."""
    if "features" in frame.columns:
        return F.col("features").cast("array<float>")
    if "content" in frame.columns and isinstance(frame.schema["content"].dataType, T.BinaryType):
        if prep.kind != "images":
            raise ValueError(f"the frame holds image bytes (content) but the model was trained on {prep.kind} "
                             "records: give it a features column")
        return F.col("content")
    raise ValueError(f"nothing to score: the frame has neither a features column nor image bytes in content "
                     f"(its columns: {frame.columns})")


def check_kept(keep: tuple[str, ...], columns: list[str], outputs: list[str]) -> None:
    """Every kept column exists and none takes the name of an output column."""
    missing = [c for c in keep if c not in columns]
    if missing:
        raise ValueError(f"columns {missing} to keep are not in the input (its columns: {columns})")
    clash = [c for c in keep if c in outputs]
    if clash:
        raise ValueError(f"input column(s) {clash} have the name of an output column ({', '.join(outputs)}): "
                         "rename them, or leave them out of the kept columns (infer.keep_columns)")
