"""The model contract shared by the trainer and the inference job.

A `DlpipeModel` is a plain `nn.Module` that also knows its own loss, its named inference
outputs and their declared schema, so callers never branch on which model they run:

    loss, metrics = model.loss(batch)         # training / validation
    outputs = model.predict(features)         # inference, one row per input
    model.output_schema()                     # -> Spark return type of the inference UDF
    model.figures                             # what the run report shows for this model
    model.pipeline_stages(n)                  # model parallelism: n consecutive stages (split points)
    model.training_phases()                   # the optimizers it trains with (one, unless it says more)

Each model class declares what it is: its ``task`` (one of :data:`TASKS`) and its
``capabilities`` (the Protocols below it implements). Verbs, evaluation, the report and config
validation select by these declarations (``models.spec(name)``), never by probing a model.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import nn

OutputSchema = dict[str, tuple[str, tuple[int, ...]]]
Batch = dict[str, torch.Tensor]


# What a model is for. The trainer trains classifiers, reconstructors and generators (``dlpipe
# train``/``run``); policies learn from an environment (``dlpipe rl``).
CLASSIFIER, RECONSTRUCTOR, GENERATOR, POLICY = "classifier", "reconstructor", "generator", "policy"
TASKS = (CLASSIFIER, RECONSTRUCTOR, GENERATOR, POLICY)


class Samples(Protocol):
    """Generates new examples from its prior."""

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` new examples (n, *feature_shape) in the model's normalized space."""


class Embeds(Protocol):
    """Maps features to a hidden representation (sample quality's feature space)."""

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, *feature_shape) -> (B, hidden)."""


class Reconstructs(Protocol):
    """Reconstructs its input."""

    def reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        """Deterministic reconstruction, same shape as ``features``."""


class Acts(Protocol):
    """A policy: chooses actions for observations and values states."""

    def act(self, features: torch.Tensor, generator: torch.Generator | None = None, greedy: bool = False) -> Batch:
        """``actions``, ``logprobs``, ``values`` for a batch of observations."""

    def value(self, features: torch.Tensor) -> torch.Tensor:
        """State values (B,)."""


CAPABILITIES: tuple[type, ...] = (Samples, Embeds, Reconstructs, Acts)


@dataclass(frozen=True)
class TrainingPhase:
    """One optimizer of a training step: it updates ``module``'s parameters from ``loss(batch)``.

    Most models have one phase over all their parameters. A model trained with several optimizers
    (a GAN: the discriminator, then the generator) lists them in the order a step runs them; the
    strategy gives each its own optimizer and averages each phase's gradients over the ranks once.
    """

    name: str
    module: nn.Module
    loss: Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]

    def parameters(self) -> list[nn.Parameter]:
        return list(self.module.parameters())


class DlpipeModel(nn.Module, abc.ABC):
    """Abstract base of every dlpipe model.

    Subclasses set the class attributes and implement `loss`, `_predict` and `output_schema`;
    `Classifier` below does all three from `forward` -> logits, and `Reconstructor` holds what
    the unsupervised models share.
    """

    name: ClassVar[str]  # registry name, e.g. "cnn"
    config_class: ClassVar[type]  # the @dataclass holding this model's hyperparameters
    config: Any  # an instance of config_class (a subclass declares its type: `config: VAEConfig`)
    task: ClassVar[str]  # one of TASKS
    capabilities: ClassVar[frozenset[type]] = frozenset()  # the Protocols above it implements
    multi_phase: ClassVar[bool] = False  # trains with several optimizers (training_phases lists them)
    pipeline_parallel: ClassVar[bool] = True  # can be cut into pipeline stages (pipeline_parts)
    # Figures the run report draws for this model, by name (see pipelines.report.FIGURES):
    # "confusion_matrix" (needs a `prediction` output), "reconstructions" (needs `reconstruct`),
    # "samples" (needs `sample`).
    figures: ClassVar[tuple[str, ...]] = ()
    # Model parallelism: the batch entry the last pipeline stage compares the output with.
    pipeline_target: ClassVar[str] = "label"

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

    def loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Scalar training loss and named, detached 0-d metrics for a batch.

        `batch["features"]` is float32 (B, *feature_shape), already normalized; classifiers
        also read `batch["label"]`, int64 (B,).
        """
        self.check_features(batch["features"])
        return self.output_loss(self(batch["features"]), batch)

    def training_phases(self) -> list[TrainingPhase]:
        """The optimizers a training step runs, in order: by default one over every parameter, with
        :meth:`loss`. The validation loss is always :meth:`loss`."""
        return [TrainingPhase("model", self, self.loss)]

    @abc.abstractmethod
    def output_loss(self, output: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`loss` from what `forward` returned: what the last pipeline stage computes."""

    @abc.abstractmethod
    def pipeline_parts(self) -> list[nn.Module]:
        """The model's layers in order, whose chain (`Chain`) computes `forward`: the possible split points.

        A part may return a tuple; the next part then receives its elements as arguments.
        """

    def pipeline_stages(self, n: int) -> list[nn.Module]:
        """The model cut into `n` consecutive stages (a `Chain` each) with parameter counts as equal
        as the split points allow; their chain computes `forward`."""
        parts = self.pipeline_parts()
        if not 1 <= n <= len(parts):
            raise ValueError(f"model {self.name!r} has {len(parts)} split points and cannot be cut into {n} "
                             f"pipeline stages; use 1 to {len(parts)} ranks")
        sizes = [sum(p.numel() for p in part.parameters()) for part in parts]
        cuts = _balanced_cuts(sizes, n)
        return [Chain(parts[a:b]) for a, b in zip([0, *cuts], [*cuts, len(parts)])]

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
    task: ClassVar[str] = CLASSIFIER

    def __init__(self, config: Any, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(config, feature_shape, num_classes)
        if self.num_classes < 2:
            raise ValueError(f"classifier {self.name!r} needs num_classes >= 2, got {num_classes}")

    def output_loss(self, output: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits, labels = output, batch["label"]  # (B, num_classes), (B,)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        return loss, {"accuracy": accuracy.detach()}

    def _predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        probabilities = torch.softmax(self(features).float(), dim=1)  # (B, num_classes)
        return {"prediction": probabilities.argmax(dim=1), "probabilities": probabilities}

    def output_schema(self) -> OutputSchema:
        return {"prediction": ("int64", ()), "probabilities": ("float32", (self.num_classes,))}


class Reconstructor(DlpipeModel):
    """Base of the unsupervised models; subclasses implement `_reconstruct` and `output_loss`."""

    pipeline_target: ClassVar[str] = "features"
    task: ClassVar[str] = RECONSTRUCTOR
    capabilities: ClassVar[frozenset[type]] = frozenset({Reconstructs})
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


class Chain(nn.Module):
    """Modules applied in order; a tuple output is spread over the next module's arguments."""

    def __init__(self, parts: list[nn.Module]) -> None:
        super().__init__()
        self.parts = nn.ModuleList(parts)

    def forward(self, *args: Any) -> Any:
        x: Any = args if len(args) > 1 else args[0]
        for part in self.parts:
            x = part(*x) if isinstance(x, tuple) else part(x)
        return x


def _balanced_cuts(sizes: list[int], n: int) -> list[int]:
    """``n - 1`` cut indices into ``sizes`` (none empty) so the largest group is as small as possible."""
    if n == 1:
        return []
    best: tuple[int, list[int]] | None = None
    # Few parts (tens) and few stages: trying every first cut recursively is cheap and exact.
    for first in range(1, len(sizes) - n + 2):
        rest = [first + c for c in _balanced_cuts(sizes[first:], n - 1)]
        groups = [sum(sizes[a:b]) for a, b in zip([0, first, *rest], [first, *rest, len(sizes)])]
        if best is None or max(groups) < best[0]:
            best = (max(groups), [first, *rest])
    assert best is not None
    return best[1]
