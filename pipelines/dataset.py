"""The dlpipe dataset format, in one place: what the ETL writes and every later stage reads.

    <workdir>/datasets/<dataset>/
      <split>/part-NNNNN.parquet   RECORD_SCHEMA: id string, label int64 (class index), features list<float32>
      quarantine/                  rejected records (QUARANTINE_COLUMNS)
      manifest.json                MANIFEST_KEYS: counts, splits, shapes, normalization, label names
      _SUCCESS                     published atomically (``pipelines.publish``)

Split names are whatever ``etl.splits`` named (``train`` is required); readers take them from
the manifest, never from a fixed list. Shard order is Petastorm's: files sorted by path, row
groups in file order, rank ``r`` of ``n`` gets row groups ``i % n == r``.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.config import ConfigError
from pipelines.publish import is_published

TRAIN_SPLIT = "train"  # the one split every dataset has (normalization is computed on it)
VALIDATION_SPLIT = "val"  # used for per-epoch validation when the dataset has it
QUARANTINE = "quarantine"  # folder of rejected records; never a split name
MANIFEST_FILE = "manifest.json"

# What every dataset file holds; petastorm's make_batch_reader and pyarrow read it as is.
RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string()),
        pa.field("label", pa.int64()),
        pa.field("features", pa.list_(pa.float32())),
    ]
)
RECORD_COLUMNS = {"id": "string", "label": "int64", "features": "list<float32>"}  # as the manifest says
QUARANTINE_COLUMNS = ["id", "source", "row", "label", "reason", "detail"]
# Keys of manifest.json (``make_manifest`` writes exactly these).
MANIFEST_KEYS = (
    "records_in", "accepted", "quarantined", "quarantine_by_reason", "splits", "feature_shape", "dtype",
    "columns", "normalization", "label_names", "source", "input_files", "config_hash", "created_at",
    "rows_per_row_group", "row_group_rule",
)


class DatasetError(RuntimeError):
    """The dataset a job needs is missing or incomplete; the message says how to make it."""


# --- manifest ---------------------------------------------------------------------------------

def make_manifest(**values: Any) -> dict[str, Any]:
    """The manifest dict, checked to hold exactly :data:`MANIFEST_KEYS` (dtype and columns are fixed)."""
    values = {"dtype": "float32", "columns": dict(RECORD_COLUMNS), **values}
    missing, extra = set(MANIFEST_KEYS) - set(values), set(values) - set(MANIFEST_KEYS)
    if missing or extra:
        raise ValueError(f"internal: manifest keys missing {sorted(missing)}, unexpected {sorted(extra)}")
    return {k: values[k] for k in MANIFEST_KEYS}


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    """The manifest of a published ETL dataset."""
    dataset_dir = Path(dataset_dir)
    if not is_published(dataset_dir):
        raise DatasetError(f"no published dataset at {dataset_dir} (no _SUCCESS): run `dlpipe etl` with the same "
                           f"workdir and dataset first")
    return json.loads((dataset_dir / MANIFEST_FILE).read_text())


def manifest_hash(manifest: dict[str, Any]) -> str:
    """Identity of the data: the manifest without its creation time and config hash (a re-run of
    the ETL on the same input gives the same hash, so checkpoints stay valid)."""
    stable = {k: v for k, v in manifest.items() if k not in ("created_at", "config_hash")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def split_names(manifest: dict[str, Any]) -> list[str]:
    """The dataset's split names (manifest.json is written with sorted keys: sorted by name)."""
    return list(manifest["splits"])


def split_paths(dataset_dir: str | Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Absolute paths of the dataset's split folders, by split name."""
    root = Path(dataset_dir).resolve()
    return {s: str(root / s) for s in split_names(manifest)}


def split_path(dataset_dir: str | Path, manifest: dict[str, Any], split: str, key: str) -> str:
    """The folder of ``split``; a :class:`ConfigError` naming config ``key`` when there is none."""
    paths = split_paths(dataset_dir, manifest)
    if split not in paths:
        raise ConfigError(f"{key}={split!r} is not a split of dataset {Path(dataset_dir).name} "
                           f"(its splits: {', '.join(paths)}): set {key} to one of them")
    return paths[split]


# --- shard order ------------------------------------------------------------------------------

def dataset_url(path: str | Path) -> str:
    """Petastorm wants URLs; plain paths become ``file://`` URLs."""
    text = str(path)
    return text if urlparse(text).scheme else "file://" + str(Path(text).resolve())


def part_files(path: str | Path) -> list[Path]:
    """The Parquet files of a split folder, in Petastorm's order (sorted by path, hidden files skipped)."""
    return sorted(p for p in Path(path).rglob("*.parquet") if not p.name.startswith((".", "_")))


def row_group_sizes(path: str | Path) -> list[int]:
    """Rows of every row group of a local split folder, in Petastorm's order."""
    sizes: list[int] = []
    for f in part_files(path):
        meta = pq.ParquetFile(f).metadata
        sizes.extend(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
    return sizes


def shard_rows(sizes: list[int], rank: int, size: int) -> int:
    """Rows in ``rank``'s shard under Petastorm's ``index % shard_count == cur_shard`` rule."""
    return sum(n for i, n in enumerate(sizes) if i % size == rank)


def steps_per_epoch(sizes: list[int], size: int, batch_size: int) -> int:
    """Steps every rank runs per epoch: enough for the largest shard, dropping < one batch."""
    largest = max(shard_rows(sizes, r, size) for r in range(size))
    return largest // batch_size


def table_arrays(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """A table of the dataset format -> (features (rows, F) float32, labels (rows,) int64)."""
    rows = table.num_rows
    values = table.column("features").combine_chunks().flatten().to_numpy(zero_copy_only=False)
    if rows and len(values) % rows:
        raise ValueError(f"the features column holds {len(values)} values for {rows} rows: rows of unequal length "
                         f"(the ETL writes every row with the same feature count)")
    features = values.astype(np.float32, copy=False).reshape(rows, -1 if rows else 0)
    return features, table.column("label").to_numpy().astype(np.int64, copy=False)
