"""Generate job: synthetic deformed digits at any scale, computed on the executors.

    dlpipe generate --config FILE [generate.num_samples=1000000 ...]
    spark-submit pipelines/__main__.py generate --config FILE [key=value ...]

Each sample is one of the 1,797 real 8x8 digits (``data/digits``, shipped as a broadcast array)
under a seeded random affine map (rotation, shift, slight scale), a smooth elastic displacement and
Gaussian noise, clipped to [0, 1] and resampled (bilinear) to ``generate.image_size``. Shifts and the
elastic strength (``elastic_alpha``: about the largest displacement, 2 sigma) are in pixels of the
8x8 source digit, so a sample looks the same at any size.

Determinism: samples are made in fixed blocks of :data:`BLOCK` consecutive ids. All random numbers
come from a counter-based hash of (``train.seed``, sample id), and a block is always computed whole
with one torch thread, so a sample's values do not depend on the partitioning, the number of
samples, or which task made it. Nothing on the driver grows with ``num_samples``.

Output (published atomically): ``part-NNNNN.parquet`` files with ``id`` ("gen-000000123"),
``label`` (int64 digit) and ``features`` (list<float32>, size*size), plus :data:`INFO_FILE`
(``_generate.json``: the leading underscore keeps Spark and pyarrow from reading it as data).
ETL it with ``etl.source.kind=parquet etl.source.feature_columns=[features] etl.source.id_column=id
etl.source.image_shape=[size,size]``.
"""
from __future__ import annotations

import csv
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import numpy as np
import pyarrow as pa
from numpy.typing import NDArray
from pyspark.broadcast import Broadcast
from pyspark.sql import SparkSession

from pipelines import storage
from pipelines.config import PipelineConfig
from pipelines.etl.parts import PartSpec, collect_stats, stats_batch, write_parts
from pipelines.formats import Record
from pipelines.publish import publishing
from pipelines.session import REPO_ROOT, describe

BLOCK = 1024  # samples per unit of work: also the Arrow batch size handed to the writer
ROWS_PER_ROW_GROUP = 4096  # generated files are read by the ETL only: a few MB per row group
SAMPLES_PER_PARTITION = 50_000  # generate.partitions=0 -> one Spark partition per this many samples
MAX_SCALE_CHANGE = 0.1  # "slight scale": 0.9x .. 1.1x
ELASTIC_GRID = 3  # elastic displacement: random 3x3 control grid, bicubically interpolated
ELASTIC_SIGMAS = 2.0  # elastic_alpha is a 2-sigma displacement: ~95% of control points move less
INFO_FILE = "_generate.json"  # n, image_size, seed, ... of the run
DIGITS_DIR = REPO_ROOT / "data" / "digits"
BASE_SIZE = 8  # the source digits are 8x8

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


class GenerateError(RuntimeError):
    """The generate job could not produce its output; the message says why and what to do."""


@dataclass(frozen=True)
class Deformation:
    """Plain, picklable parameters of one generation run (shipped to the executors)."""

    seed: int
    num_samples: int
    image_size: int
    max_rotation_deg: float
    max_shift_px: float
    elastic_alpha: float
    noise_std: float


# --- counter-based random numbers -------------------------------------------------------------

_Words = TypeVar("_Words", NDArray[np.uint64], np.uint64)  # uint64 values: an array, or one (a seed's key)


def _mix(z: _Words) -> _Words:
    """splitmix64 finaliser: a bijective scramble of uint64 (wrap-around arithmetic is intended)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def uniforms(seed: int, ids: NDArray[np.int64], stream: int, count: int) -> NDArray[np.float64]:
    """(len(ids), count) uniforms in (0, 1): a pure function of (seed, id, stream, column)."""
    with np.errstate(over="ignore"):
        key = _mix(np.uint64(seed & 0xFFFFFFFFFFFFFFFF) * _GOLDEN + np.uint64(stream))
        per_id = _mix(ids.astype(np.uint64) ^ key)
        counters = (np.arange(1, count + 1, dtype=np.uint64) * _GOLDEN)[None, :]
        bits = _mix(per_id[:, None] + counters)
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / (1 << 53))


def normals(seed: int, ids: NDArray[np.int64], stream: int, count: int) -> NDArray[np.float64]:
    """(len(ids), count) standard normals (Box-Muller on :func:`uniforms`)."""
    half = (count + 1) // 2
    u = uniforms(seed, ids, stream, 2 * half)
    radius = np.sqrt(-2.0 * np.log(u[:, :half]))
    angle = 2.0 * np.pi * u[:, half:]
    both: NDArray[np.float64] = np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=1)
    return both[:, :count]


# --- one block of samples ---------------------------------------------------------------------

def generate_block(block: int, params: Deformation, digits: NDArray[np.float32],
                   labels: NDArray[np.int64]) -> pa.RecordBatch:
    """Samples ``block*BLOCK .. block*BLOCK+BLOCK-1`` (those < num_samples) as an Arrow batch."""
    import torch
    import torch.nn.functional as F

    ids = np.arange(block * BLOCK, (block + 1) * BLOCK, dtype=np.int64)  # always a whole block
    size = params.image_size
    u = uniforms(params.seed, ids, stream=0, count=5)
    base = np.minimum((u[:, 0] * len(digits)).astype(np.int64), len(digits) - 1)
    angle = np.deg2rad((2 * u[:, 1] - 1) * params.max_rotation_deg)
    scale = 1.0 + (2 * u[:, 2] - 1) * MAX_SCALE_CHANGE
    to_unit = 2.0 / BASE_SIZE  # one source pixel in affine_grid's [-1, 1] coordinates
    shift = (2 * u[:, 3:5] - 1) * params.max_shift_px * to_unit
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    theta = np.stack([np.stack([cos, -sin, shift[:, 0]], 1), np.stack([sin, cos, shift[:, 1]], 1)], 1)
    coarse = normals(params.seed, ids, stream=1,
                     count=2 * ELASTIC_GRID**2).reshape(BLOCK, 2, ELASTIC_GRID, ELASTIC_GRID)
    noise = normals(params.seed, ids, stream=2, count=size * size).reshape(BLOCK, 1, size, size)

    src = torch.from_numpy(digits[base][:, None])  # B,1,8,8
    grid = F.affine_grid(torch.from_numpy(theta).float(), [BLOCK, 1, size, size], align_corners=False)  # B,S,S,2
    displacement = F.interpolate(torch.from_numpy(coarse).float(), size=(size, size), mode="bicubic",
                                 align_corners=False)
    grid = grid + displacement.permute(0, 2, 3, 1) * (params.elastic_alpha / ELASTIC_SIGMAS * to_unit)  # B,S,S,2
    images = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # B,1,S,S
    images = (images + params.noise_std * torch.from_numpy(noise).float()).clamp_(0.0, 1.0)

    keep = int(np.clip(params.num_samples - block * BLOCK, 0, BLOCK))
    flat = images.reshape(BLOCK, size * size)[:keep].numpy().reshape(-1)
    width = max(9, len(str(params.num_samples - 1)))
    offsets = pa.array(np.arange(0, (keep + 1) * size * size, size * size, dtype=np.int32))
    return pa.RecordBatch.from_arrays(
        [
            pa.array([f"gen-{i:0{width}d}" for i in ids[:keep]], type=pa.string()),
            pa.array(labels[base[:keep]], type=pa.int64()),
            pa.ListArray.from_arrays(offsets, pa.array(flat, type=pa.float32())),
        ],
        names=["id", "label", "features"],
    )


def load_digits(folder: Path = DIGITS_DIR) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """The bundled digits as (N, 8, 8) float32 in [0, 1] and (N,) int64 labels, in labels.csv order."""
    from PIL import Image

    labels_csv = folder / "labels.csv"
    if not labels_csv.is_file():
        raise GenerateError(f"{labels_csv} not found: the generator starts from the bundled digits in {folder}")
    with labels_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    images = np.stack([np.asarray(Image.open(folder / r["file"]).convert("L"), dtype=np.float32) / 255.0 for r in rows])
    return images, np.array([int(r["label"]) for r in rows], dtype=np.int64)


@dataclass(frozen=True)
class GenerateResult(Record):
    """What :data:`INFO_FILE` holds, and what ``dlpipe generate`` returns."""

    n: int
    image_size: int
    seed: int
    feature_shape: list[int]
    label_names: list[str]
    deformation: Deformation
    files: list[str]  # relative to the committed folder
    rows_per_row_group: int
    config_hash: str
    created_at: str
    output: str = ""  # the committed folder (what etl.source.path may name; its target works too)


def output_dir(config: PipelineConfig) -> str:
    """``generate.output``, else ``<workdir>/generated/digits_<size>px_<n>``."""
    g = config.generate
    if g.output:
        return storage.normalize(g.output)
    return storage.join(config.workdir_location, "generated", f"digits_{g.image_size}px_{g.num_samples}")


def main(spark: SparkSession, config: PipelineConfig) -> GenerateResult:
    """Generate ``generate.num_samples`` deformed digits as Parquet (committed under the output
    folder, ``pipelines.publish``); return what :data:`INFO_FILE` holds."""
    g = config.generate
    params = Deformation(
        seed=config.train.seed, num_samples=g.num_samples, image_size=g.image_size,
        max_rotation_deg=g.max_rotation_deg, max_shift_px=g.max_shift_px,
        elastic_alpha=g.elastic_alpha, noise_std=g.noise_std,
    )
    blocks = math.ceil(g.num_samples / BLOCK)
    partitions = min(blocks, g.partitions or math.ceil(g.num_samples / SAMPLES_PER_PARTITION))
    out = output_dir(config)
    storage.check_location(out, "generate.output" if g.output else "workdir")
    digits = spark.sparkContext.broadcast(load_digits())
    describe(spark, "generate")
    try:
        with publishing(out, f"dlpipe generate (run {config.run_id})") as attempt:
            folder = attempt.folder
            spec = PartSpec(folder, ROWS_PER_ROW_GROUP, storage_options=storage.current_options())
            write = _block_writer(params, digits, spec)
            stats = collect_stats(spark.range(blocks, numPartitions=partitions), write)
            rows = sum(s.rows for s in stats)
            if rows != g.num_samples:
                raise GenerateError(f"internal: wrote {rows} samples instead of generate.num_samples={g.num_samples}")
            info = GenerateResult(
                n=g.num_samples, image_size=g.image_size, seed=params.seed,
                feature_shape=[1, g.image_size, g.image_size], label_names=[str(d) for d in range(10)],
                deformation=params, files=sorted(s.file for s in stats), rows_per_row_group=ROWS_PER_ROW_GROUP,
                config_hash=config.digest(), created_at=datetime.now(UTC).isoformat(timespec="seconds"),
                output=folder)
            storage.write_text(storage.join(folder, INFO_FILE), info.to_json())
            attempt.report([*(storage.join(folder, s.file) for s in stats), storage.join(folder, INFO_FILE)])
    finally:
        digits.destroy()
    print(f"generate: {g.num_samples} samples, {g.image_size}x{g.image_size}, {len(stats)} files -> "
          f"{storage.redact(out)}")
    return info


def _block_writer(params: Deformation, digits: Broadcast[tuple[NDArray[np.float32], NDArray[np.int64]]],
                  spec: PartSpec) -> Callable[[Iterable[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The ``mapInArrow`` function: block ids in, generated samples written, per-file stats out."""

    def generate_and_write(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import torch
        from pyspark import TaskContext

        torch.set_num_threads(1)  # one core per task; also keeps float results independent of threads
        images, labels = digits.value

        def samples() -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for block in batch.column("id").to_numpy():
                    yield generate_block(int(block), params, images, labels)

        context = TaskContext.get()
        assert context is not None  # a mapInArrow function runs in a Spark task
        with storage.using_options(spec.storage_options):  # the task's store calls: the job's endpoint and region
            stats = write_parts(samples(), spec, context.partitionId())
        yield stats_batch(stats)

    return generate_and_write
