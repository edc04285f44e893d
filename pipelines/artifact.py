"""The model artifact: everything inference needs and nothing it must guess.

A plain dict of tensors, strings and numbers (``torch.load(path, weights_only=True)`` loads it):
the model's name, config and weights, the feature shape, the ETL's normalization statistics and
the label names. This module owns its format, where a run keeps it (:func:`artifact_path`) and
the one transform both training and inference apply to features (:class:`Normalizer`).
"""
from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import models

FORMAT = "dlpipe-model/1"


def artifact_path(run_dir: str | Path) -> Path:
    """Where a run keeps its model artifact."""
    return Path(run_dir) / "model" / "model.pt"


@dataclass
class Normalizer:
    """``(x - mean) / std`` with the ETL's train-split statistics (scalars or per feature)."""

    feature_shape: tuple[int, ...]
    mean: torch.Tensor = field(repr=False)
    std: torch.Tensor = field(repr=False)

    @classmethod
    def from_stats(cls, stats: dict, feature_shape: list[int] | tuple[int, ...]) -> "Normalizer":
        shape = tuple(feature_shape)
        mean = torch.tensor(stats["mean"], dtype=torch.float32)
        std = torch.tensor(stats["std"], dtype=torch.float32)
        if mean.numel() > 1:
            mean, std = mean.reshape(shape), std.reshape(shape)
        return cls(shape, mean, std)

    def __call__(self, flat: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        x = x.reshape(len(flat), *self.feature_shape)  # (B, *feature_shape)
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to the ETL's value range (pixels in [0, 1] for images)."""
        return x * self.std + self.mean


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
    payload = load_metadata(path)
    return models.from_artifact_dict(payload), payload


def load_metadata(path: str | Path) -> dict[str, Any]:
    """The artifact's dict (weights included) without building the model."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dlpipe model artifact (format {payload.get('format')!r}, "
                         f"expected {FORMAT!r})")
    return payload


def normalizer(meta: dict[str, Any]) -> Normalizer:
    """The artifact's feature normalization."""
    return Normalizer.from_stats(meta["normalization"], meta["feature_shape"])


def file_digest(path: str | Path) -> str:
    """Content hash of a file: the identity inference caches a loaded model by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
