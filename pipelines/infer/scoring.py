"""Scoring with a model artifact, vectorized in Spark: the ``mapInArrow`` function and its helpers.

The artifact reaches the executors through Spark (``SparkContext.addFile``), so they need not see
the driver's filesystem. Scoring uses ``mapInArrow``: the ``features`` list column arrives as one
flat Arrow buffer that becomes a (rows, features) NumPy array without a copy per row, where a
pandas UDF would first build one Python object per row. Each Python worker loads the model once,
cached by the artifact's content hash.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pyarrow as pa
from pyspark import SparkFiles
from pyspark.accumulators import AccumulatorParam
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from pipelines.artifact import file_digest, load_artifact, normalizer

_SPARK_TYPES = {"int64": T.LongType(), "float32": T.FloatType()}
_ARROW_TYPES = {"int64": pa.int64(), "float32": pa.float32()}
_MODEL_CACHE: dict[str, Any] = {}  # per Python worker process: artifact digest -> (model, normalizer)
_STAGING: list[Path] = []  # the driver's one staging folder, removed when the driver exits


def _ship(spark: SparkSession, artifact: Path, digest: str) -> str:
    """``addFile`` a copy of ``artifact`` named by its digest; return that name.

    ``addFile`` keys files by name, so the digest keeps versions apart; the copy is made once per
    artifact version and driver process (the same path added twice is a no-op for Spark).
    """
    if not _STAGING:
        _STAGING.append(Path(tempfile.mkdtemp(prefix="dlpipe-infer-")))
        atexit.register(shutil.rmtree, _STAGING[0], True)
    name = f"dlpipe-model-{digest}.pt"
    staged = _STAGING[0] / name
    if not staged.is_file():
        shutil.copyfile(artifact, staged)
    spark.sparkContext.addFile(str(staged))
    return name


class _ListParam(AccumulatorParam):
    """Accumulates a list: the process id of every model load, so repeated loads would show."""

    def zero(self, value: list) -> list:
        return []

    def addInPlace(self, a: list, b: list) -> list:
        return a + b


def output_schema(model_schema: dict[str, tuple[str, tuple[int, ...]]]) -> T.StructType:
    """Spark schema of the predictions: id, the model's declared outputs, error."""
    fields = [T.StructField("id", T.StringType())]
    for name, (dtype, shape) in model_schema.items():
        base = _SPARK_TYPES[dtype]
        fields.append(T.StructField(name, T.ArrayType(base) if shape else base))
    fields.append(T.StructField("error", T.StringType()))
    return T.StructType(fields)


def features_matrix(column: pa.Array, num_features: int) -> tuple[np.ndarray, list[str | None]]:
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


def _load_model(artifact_name: str, digest: str, loads: Any) -> Any:
    """The worker's cached (model, normalizer); loads it on first use in this process."""
    if digest not in _MODEL_CACHE:
        model, meta = load_artifact(SparkFiles.get(artifact_name))
        _MODEL_CACHE[digest] = (model, normalizer(meta))
        loads.add([os.getpid()])
    return _MODEL_CACHE[digest]


def make_scorer(artifact_name: str, digest: str, schema: dict[str, tuple[str, tuple[int, ...]]],
                num_features: int, batch_size: int, loads: Any):
    """The ``mapInArrow`` function: Arrow batches in, prediction batches out."""

    def score(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch
        from pyspark import TaskContext

        torch.set_num_threads(max(1, TaskContext.get().cpus()))
        model, normalize = _load_model(artifact_name, digest, loads)
        for batch in batches:
            matrix, errors = features_matrix(batch.column("features"), num_features)
            ok = np.array([e is None for e in errors])
            outputs: dict[str, np.ndarray] = {}
            with torch.inference_mode():
                for start in range(0, len(matrix), batch_size):
                    part = model.predict(normalize(matrix[start:start + batch_size]))
                    for k, v in part.items():
                        outputs.setdefault(k, []).append(v.numpy())
            columns = [batch.column("id")]
            for name, (dtype, shape) in schema.items():
                values = np.concatenate(outputs[name]) if outputs else np.zeros((0, *shape))
                columns.append(_arrow_column(values, dtype, shape, ok))
            columns.append(pa.array(errors, type=pa.string()))
            yield pa.RecordBatch.from_arrays(columns, names=["id", *schema, "error"])

    return score


def _arrow_column(values: np.ndarray, dtype: str, shape: tuple[int, ...], ok: np.ndarray) -> pa.Array:
    mask = ~ok
    if not shape:
        return pa.array(values.astype(dtype), type=_ARROW_TYPES[dtype], mask=mask)
    flat = pa.array(values.astype(dtype).reshape(-1), type=_ARROW_TYPES[dtype])
    offsets = pa.array(np.arange(0, len(values) * shape[0] + 1, shape[0], dtype=np.int32))
    lists = pa.ListArray.from_arrays(offsets, flat)
    return pa.array([v if good else None for v, good in zip(lists.to_pylist(), ok)],
                    type=pa.list_(_ARROW_TYPES[dtype])) if mask.any() else lists


def predict(spark: SparkSession, frame: DataFrame, artifact: str | Path, batch_size: int = 512) -> tuple[DataFrame, Any]:
    """Score ``frame`` (``id``, ``features``) with the artifact; returns (predictions, loads accumulator).

    The artifact is shipped with ``addFile``; executors read their local copy.
    """
    artifact = Path(artifact).resolve()
    digest = file_digest(artifact)
    name = _ship(spark, artifact, digest)
    model, meta = load_artifact(artifact)
    schema = model.output_schema()
    num_features = int(np.prod(meta["feature_shape"]))
    loads = spark.sparkContext.accumulator([], _ListParam())
    scorer = make_scorer(name, digest, schema, num_features, batch_size, loads)
    return frame.select("id", "features").mapInArrow(scorer, output_schema(schema)), loads
