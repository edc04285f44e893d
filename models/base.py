"""The model contract shared by the trainer and the inference job.

A `DlpipeModel` is a plain `nn.Module` that also knows its own loss, its named inference
outputs and their declared schema, so callers never branch on which model they run:

    loss, metrics = model.loss(batch)         # training / validation
    outputs = model.predict(features)         # inference, one row per input
    model.output_schema()                     # -> Spark return type of the inference UDF
    model.figures                             # what the run report shows for this model
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

OutputSchema = dict[str, tuple[str, tuple[int, ...]]]


class DlpipeModel(nn.Module, abc.ABC):
    """Abstract base of every dlpipe model.

    Subclasses set the class attributes and implement `loss`, `_predict` and `output_schema`;
    `Classifier` below does all three from `forward` -> logits, and `Reconstructor` holds what
    the unsupervised models share.
    """

    name: ClassVar[str]  # registry name, e.g. "cnn"
    config_class: ClassVar[type]  # the @dataclass holding this model's hyperparameters
    # Figures the run report draws for this model, by name (see pipelines.report.FIGURES):
    # "confusion_matrix" (needs a `prediction` output), "reconstructions" (needs `reconstruct`),
    # "samples" (needs `sample`).
    figures: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: Any, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(
                f"{type(self).__name__} needs a {self.config_class.__name__} config, "
                f"got {type(config).__name__}"
            )
        shape = tuple(int(d) for d in feature_shape)
        if not shape or any(d <= 0 for d in shape):
            raise ValueError(f"feature_shape must be non-empty positive sizes, got {tuple(feature_shape)}")
        self.config = config
        self.feature_shape: tuple[int, ...] = shape
        self.num_classes = int(num_classes)

    @property
    def num_features(self) -> int:
        """Number of scalars in one example, prod(feature_shape)."""
        return math.prod(self.feature_shape)

    def config_dict(self) -> dict[str, Any]:
        """The hyperparameters as a plain dict (`dataclasses.asdict` of the config)."""
        return dataclasses.asdict(self.config)

    @abc.abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss and named, detached 0-d metrics for a batch.

        `batch["features"]` is float32 (B, *feature_shape), already normalized; classifiers
        also read `batch["label"]`, int64 (B,).
        """

    @abc.abstractmethod
    def output_schema(self) -> OutputSchema:
        """Declared `predict` outputs: name -> (dtype name, per-row shape)."""

    @abc.abstractmethod
    def _predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """`predict` body; called in eval mode under `torch.no_grad`, features already checked."""

    def predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named inference outputs, one row per input, matching `output_schema()` exactly.

        Runs in eval mode without gradients (dropout off, deterministic) and restores the
        previous train/eval mode afterwards, so calling it mid-training is safe.
        """
        self.check_features(features)
        with eval_mode(self), torch.no_grad():
            return self._predict(features)

    def check_features(self, features: torch.Tensor) -> None:
        """Raise ValueError unless `features` is (B, *feature_shape)."""
        if tuple(features.shape[1:]) != self.feature_shape:
            raise ValueError(
                f"model {self.name!r} expects features of shape (B, *{self.feature_shape}), "
                f"got {tuple(features.shape)}"
            )


class Classifier(DlpipeModel):
    """Cross-entropy classifier; subclasses implement `forward(x) -> logits (B, num_classes)`."""

    figures: ClassVar[tuple[str, ...]] = ("confusion_matrix",)

    def __init__(self, config: Any, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(config, feature_shape, num_classes)
        if self.num_classes < 2:
            raise ValueError(f"classifier {self.name!r} needs num_classes >= 2, got {num_classes}")

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features, labels = batch["features"], batch["label"]
        self.check_features(features)
        logits = self(features)  # (B, num_classes)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy.detach()}

    def _predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = torch.softmax(self(features).float(), dim=1)  # (B, num_classes)
        return {"prediction": probabilities.argmax(dim=1), "probabilities": probabilities}

    def output_schema(self) -> OutputSchema:
        return {"prediction": ("int64", ()), "probabilities": ("float32", (self.num_classes,))}


class Reconstructor(DlpipeModel):
    """Base of the unsupervised models; subclasses implement `_reconstruct` and `loss`."""

    figures: ClassVar[tuple[str, ...]] = ("reconstructions",)

    @abc.abstractmethod
    def _reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction, (B, *feature_shape) -> (B, *feature_shape)."""

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction of `features` (same shape), eval mode, no gradients."""
        self.check_features(features)
        with eval_mode(self), torch.no_grad():
            return self._reconstruct(features)


def per_sample_mse(reconstruction: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements of each example: (B, ...) x2 -> (B,)."""
    return (reconstruction - features).pow(2).flatten(1).mean(dim=1)


class eval_mode:
    """Context manager: eval mode inside, the module's previous train/eval mode restored on exit."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.was_training = module.training

    def __enter__(self) -> None:
        self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)
