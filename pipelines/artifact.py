"""The model artifact: everything inference needs and nothing it must guess.

A plain dict of tensors, strings and numbers (``torch.load(path, weights_only=True)`` loads it):
the model's name, config and weights, the feature shape, the preprocessing (how a raw record
became features: :class:`Preprocessing`), the ETL's normalization statistics and the label names.
This module owns its format, where a run keeps it (:func:`artifact_path`) and the transforms both
training and inference apply (:class:`Preprocessing`, applied by ``pipelines.preprocess``; then
:class:`Normalizer`).
"""
from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

import models

FORMAT = "dlpipe-model/1"
TABULAR_KINDS = ("csv", "json", "parquet")
FEATURES_ONLY = "features"  # an artifact saved before preprocessing was recorded: scores features only


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


@dataclass(frozen=True)
class Preprocessing:
    """How a raw record became the model's features, as the ETL did it for the training data.

    ``pipelines.preprocess`` applies it (the ETL and inference share that code); the artifact's
    normalization (:class:`Normalizer`) then maps the features to the model's input.
    """

    kind: str  # images | csv | json | parquet; "features" = unknown (scores only a features column)
    image_shape: tuple[int, int] = (0, 0)  # images: H, W every image is resized to
    channels: int = 1  # images: 1 = greyscale, 3 = RGB (features are C,H,W in [0, 1])
    resize: str = "bilinear"  # images: Pillow's resampling filter for the resize
    feature_columns: tuple[str, ...] = ()  # tabular: numeric columns in order, or one array column
    label_column: str = ""  # tabular: the label column (used for evaluation when an input has it)
    id_column: str = ""  # tabular: the record id column ("" = none)

    @property
    def is_tabular(self) -> bool:
        return self.kind in TABULAR_KINDS

    @classmethod
    def from_source(cls, source: Any, manifest: Mapping[str, Any] | None = None) -> "Preprocessing":
        """From an ``etl.source`` config; the manifest's record of the ETL run wins where it has one
        (the image shape it wrote, the feature columns it resolved)."""
        recorded = dict((manifest or {}).get("source") or {})
        kind = recorded.get("kind", source.kind)
        if kind == "images":
            shape = list((manifest or {}).get("feature_shape") or [source.channels, *source.image_shape])
            return cls("images", (int(shape[1]), int(shape[2])), int(shape[0]))
        return cls(kind, feature_columns=tuple(recorded.get("feature_columns", source.feature_columns)),
                   label_column=recorded.get("label_column", source.label_column),
                   id_column=recorded.get("id_column", source.id_column))

    def to_dict(self) -> dict[str, Any]:
        """Plain data for the artifact (lists, not tuples: ``weights_only`` loading)."""
        return {"kind": self.kind, "image_shape": list(self.image_shape), "channels": self.channels,
                "resize": self.resize, "feature_columns": list(self.feature_columns),
                "label_column": self.label_column, "id_column": self.id_column}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessing":
        return cls(d["kind"], tuple(d["image_shape"]), int(d["channels"]), d["resize"],
                   tuple(d["feature_columns"]), d["label_column"], d["id_column"])


def save_artifact(path: Path, model: models.DlpipeModel, manifest: dict[str, Any], manifest_hash: str,
                  config: Any) -> None:
    """Write the artifact atomically. The preprocessing comes from ``config.etl.source`` and what the
    manifest recorded of the ETL run that made the training data."""
    payload = {
        "format": FORMAT,
        **models.to_artifact_dict(model),
        "preprocessing": Preprocessing.from_source(config.etl.source, manifest).to_dict(),
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


def preprocessing(meta: Mapping[str, Any]) -> Preprocessing:
    """The artifact's preprocessing; kind ``features`` for an artifact saved before it was recorded."""
    recorded = meta.get("preprocessing")
    return Preprocessing.from_dict(recorded) if recorded else Preprocessing(FEATURES_ONLY)


def file_digest(path: str | Path) -> str:
    """Content hash of a file: the identity inference caches a loaded model by."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]
