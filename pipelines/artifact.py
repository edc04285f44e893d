"""The model artifact: everything inference needs and nothing it must guess.

One file (``torch.load(..., weights_only=True)`` loads it): the model's name, config and weights,
and :class:`ArtifactMeta`: the feature shape, the preprocessing (how a raw record became features:
:class:`Preprocessing`), the ETL's normalization statistics, the label names, and where the model
came from (dataset identity and version, the run it was warm-started from). This module owns its
format (where a run keeps it: :class:`pipelines.runfolder.RunFolder`) and the transforms both training and inference
apply (:class:`Preprocessing`, applied by ``pipelines.preprocess``; then :class:`Normalizer`). It is
read and written through ``pipelines.storage``, so it may live in any store.
"""
from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

import models
from pipelines import storage
from pipelines.dataset import DatasetView, Normalization, VersionRef
from pipelines.drift import Summary
from pipelines.formats import FormatError, Record

READ_ONLY_INPUT = "The given NumPy array is not writable"  # torch's warning, see Normalizer.__call__
warnings.filterwarnings("ignore", message=READ_ONLY_INPUT, category=UserWarning)
FORMAT = "dlpipe-model/1"
TABULAR_KINDS = ("csv", "json", "parquet")
FEATURES_ONLY = "features"  # an artifact saved before preprocessing was recorded: scores features only



@dataclass
class Normalizer:
    """``(x - mean) / std`` with the ETL's train-split statistics (scalars or per feature)."""

    feature_shape: tuple[int, ...]
    mean: torch.Tensor = field(repr=False)
    std: torch.Tensor = field(repr=False)

    @classmethod
    def from_stats(cls, stats: Normalization, feature_shape: list[int] | tuple[int, ...]) -> Normalizer:
        shape = tuple(feature_shape)
        mean = torch.tensor(stats.mean, dtype=torch.float32)
        std = torch.tensor(stats.std, dtype=torch.float32)
        if mean.numel() > 1:
            mean, std = mean.reshape(shape), std.reshape(shape)
        return cls(shape, mean, std)

    def __call__(self, flat: NDArray[np.float32]) -> torch.Tensor:
        # flat may be Arrow's read-only buffer (pandas 3 hands those out): x is only read here, the
        # result is a new tensor, so torch's "not writable" warning is filtered (READ_ONLY_INPUT)
        x = torch.from_numpy(np.ascontiguousarray(flat, dtype=np.float32))
        x = x.reshape(len(flat), *self.feature_shape)  # (B, *feature_shape)
        return (x - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Back to the ETL's value range (pixels in [0, 1] for images)."""
        return x * self.std + self.mean


@dataclass(frozen=True)
class Preprocessing(Record):
    """How a raw record became the model's features, as the ETL did it for the training data.

    ``pipelines.preprocess`` applies it (the ETL and inference share that code); the artifact's
    normalization (:class:`Normalizer`) then maps the features to the model's input.
    """

    kind: str  # images | csv | json | parquet; "features" = unknown (scores only a features column)
    image_shape: tuple[int, int] = (0, 0)  # images: H, W every image is resized to
    channels: int = 1  # images: 1 = greyscale, 3 = RGB (features are C,H,W in [0, 1])
    resize: str = "bilinear"  # images: Pillow's resampling filter for the resize
    max_pixels: int = 25_000_000  # images: larger files are refused per record, unread (etl.source.max_pixels)
    feature_columns: tuple[str, ...] = ()  # tabular: numeric columns in order, or one array column
    label_column: str = ""  # tabular: the label column (used for evaluation when an input has it)
    id_column: str = ""  # tabular: the record id column ("" = none)

    @property
    def is_tabular(self) -> bool:
        return self.kind in TABULAR_KINDS

    @classmethod
    def from_source(cls, source: Any, manifest: Any = None) -> Preprocessing:
        """From an ``etl.source`` config; the manifest's record of the ETL run (a
        ``pipelines.dataset.Manifest``) wins where it has one (the image shape it wrote, the
        feature columns it resolved)."""
        recorded = manifest.source if manifest is not None else None
        kind = recorded.kind if recorded is not None else source.kind
        if kind == "images":
            shape = list(manifest.feature_shape if manifest is not None else [source.channels, *source.image_shape])
            return cls("images", (int(shape[1]), int(shape[2])), int(shape[0]), max_pixels=source.max_pixels)
        columns = recorded.feature_columns if recorded is not None and recorded.feature_columns is not None \
            else source.feature_columns
        return cls(kind, feature_columns=tuple(columns),
                   label_column=recorded.label_column if recorded is not None else source.label_column,
                   id_column=recorded.id_column if recorded is not None else source.id_column)


@dataclass(frozen=True)
class ArtifactMeta(Record):
    """Everything of an artifact but the weights: what inference needs to score with it."""

    model_name: str
    model_config: dict[str, Any]
    feature_shape: list[int]
    num_classes: int
    normalization: Normalization
    label_names: list[str]
    preprocessing: Preprocessing = field(default_factory=lambda: Preprocessing(FEATURES_ONLY))
    manifest_hash: str = ""  # the identity of the dataset (view) it was trained on
    config_hash: str = ""
    dataset_version: int = 0  # the dataset version it was trained on (0 = not recorded)
    init_from: str = ""  # the artifact it was warm-started from ("" = random initialization)
    format: str = FORMAT
    run_id: str = ""  # the run that trained it ("" = saved before lineage was recorded)
    dataset: str = ""  # the dataset's name (lineage: <workdir>/datasets/<dataset>)
    dataset_versions: list[VersionRef] = field(default_factory=list)  # what it trained on, with content digests
    training_summary: Summary | None = None  # its training data's drift summary (scoring compares with it)

    @property
    def task(self) -> str:
        return models.spec(self.model_name).task

    def normalizer(self) -> Normalizer:
        """The artifact's feature normalization."""
        return Normalizer.from_stats(self.normalization, self.feature_shape)


def save_artifact(location: str, model: models.DlpipeModel, meta: ArtifactMeta) -> None:
    """Write the artifact (one atomic write: a reader sees the whole file or the one before)."""
    payload = {**meta.to_dict(), **models.to_artifact_dict(model)}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    storage.write_bytes(location, buffer.getvalue())


def artifact_meta(model: models.DlpipeModel, view: DatasetView, config: Any, *, init_from: str = "") -> ArtifactMeta:
    """The metadata of ``model`` trained on the dataset ``view`` with ``config``: its preprocessing
    comes from ``config.etl.source`` and what the manifest recorded of the ETL run that made the
    training data; its lineage from the view (versions, digests, data summary) and the run."""
    plain = models.to_artifact_dict(model)
    manifest = view.manifest
    return ArtifactMeta(plain["model_name"], plain["model_config"], plain["feature_shape"], plain["num_classes"],
                        manifest.normalization, list(manifest.label_names),
                        Preprocessing.from_source(config.etl.source, manifest), view.identity, config.digest(),
                        view.version, init_from, run_id=config.run_id, dataset=view.name,
                        dataset_versions=list(view.versions), training_summary=view.summary)


def load_artifact(location: str) -> tuple[models.DlpipeModel, ArtifactMeta]:
    """Rebuild the model (eval mode) and return it with the artifact's metadata."""
    payload = _load(location)
    return models.from_artifact_dict(payload), _meta(payload, location)


def load_metadata(location: str) -> ArtifactMeta:
    """The artifact's metadata without building the model."""
    return _meta(_load(location), location)


def load_state(location: str) -> tuple[dict[str, torch.Tensor], ArtifactMeta]:
    """The artifact's weights and metadata (a warm start loads them into a fresh model)."""
    payload = _load(location)
    return payload["state_dict"], _meta(payload, location)


def _load(location: str) -> dict[str, Any]:
    payload = torch.load(io.BytesIO(storage.read_bytes(location)), map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise FormatError(f"{storage.redact(location)} is not a dlpipe model artifact (format {found!r}, "
                          f"expected {FORMAT!r})")
    return payload


def _meta(payload: Mapping[str, Any], location: str) -> ArtifactMeta:
    fields = {k: v for k, v in payload.items() if k != "state_dict"}
    if fields.get("preprocessing") is None:  # saved before preprocessing was recorded
        fields.pop("preprocessing", None)
    return ArtifactMeta.from_dict(fields, storage.redact(location))

