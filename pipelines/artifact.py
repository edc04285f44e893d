"""The model artifact: everything inference needs and nothing it must guess.

A plain dict of tensors, strings and numbers (``torch.load(path, weights_only=True)`` loads it):
the model's name, config and weights, the feature shape, the ETL's normalization statistics and
the label names.
"""
from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import Any

import torch

import models

FORMAT = "dlpipe-model/1"


def save_artifact(path: Path, model: models.DlpipeModel, manifest: dict[str, Any], manifest_hash: str,
                  config: Any) -> None:
    """Write the artifact atomically."""
    payload = {
        "format": FORMAT,
        **models.to_artifact_dict(model),
        "normalization": manifest["normalization"],
        "label_names": list(manifest["label_names"]),
        "manifest_hash": manifest_hash,
        "config_hash": config.digest(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_artifact(path: str | Path) -> tuple[models.DlpipeModel, dict[str, Any]]:
    """Rebuild the model (eval mode) and return it with the artifact's metadata."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dlpipe model artifact (format {payload.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return models.from_artifact_dict(payload), payload


def file_digest(path: str | Path) -> str:
    """Content hash of a file: the identity inference caches a loaded model by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
