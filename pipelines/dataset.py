"""Reading the ETL's published dataset: manifest, split paths, identity."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipelines.publish import is_published

SPLITS = ("train", "val", "test")


class DatasetError(RuntimeError):
    """The dataset a job needs is missing or incomplete; the message says how to make it."""


def load_manifest(dataset_dir: str | Path) -> dict[str, Any]:
    """The manifest of a published ETL dataset."""
    dataset_dir = Path(dataset_dir)
    if not is_published(dataset_dir):
        raise DatasetError(f"no published dataset at {dataset_dir} (no _SUCCESS): run `dlpipe etl` with the same "
                           f"workdir and dataset first")
    return json.loads((dataset_dir / "manifest.json").read_text())


def manifest_hash(manifest: dict[str, Any]) -> str:
    """Identity of the data: the manifest without its creation time and config hash (a re-run of
    the ETL on the same input gives the same hash, so checkpoints stay valid)."""
    stable = {k: v for k, v in manifest.items() if k not in ("created_at", "config_hash")}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def split_paths(dataset_dir: str | Path) -> dict[str, str]:
    """Absolute paths of the split folders."""
    root = Path(dataset_dir).resolve()
    return {s: str(root / s) for s in SPLITS}
