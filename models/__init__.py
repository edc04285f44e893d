"""Model registry: build any dlpipe model by name and (de)serialize it as a plain artifact dict.

    model = models.build("cnn", feature_shape=(1, 8, 8), num_classes=10, channels=[8, 16])
    torch.save(models.to_artifact_dict(model), path)
    model = models.from_artifact_dict(torch.load(path, weights_only=True))
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.autoencoder import Autoencoder
from models.base import (
    CAPABILITIES,
    CLASSIFIER,
    GENERATOR,
    POLICY,
    RECONSTRUCTOR,
    TASKS,
    Acts,
    DlpipeModel,
    Embeds,
    Reconstructs,
    Samples,
)
from models.cnn import CNN
from models.gan import GAN
from models.mlp import MLP
from models.policy import MLPPolicy
from models.vae import VAE

__all__ = ["DlpipeModel", "ModelSpec", "build", "config_class", "names", "spec", "to_artifact_dict",
           "from_artifact_dict", "TASKS", "CLASSIFIER", "RECONSTRUCTOR", "GENERATOR", "POLICY", "CAPABILITIES",
           "Acts", "Embeds", "Reconstructs", "Samples"]

_REGISTRY: dict[str, type[DlpipeModel]] = {cls.name: cls for cls in (Autoencoder, CNN, GAN, MLP, MLPPolicy, VAE)}

_ARTIFACT_KEYS = ("model_name", "model_config", "feature_shape", "num_classes", "state_dict")


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model declares it is: its task and the capabilities it implements."""

    name: str
    task: str  # one of TASKS
    capabilities: frozenset[type]
    figures: tuple[str, ...]
    multi_phase: bool  # trains with several optimizers (a GAN)
    pipeline_parallel: bool  # can be cut into pipeline stages

    def can(self, capability: type) -> bool:
        """Whether the model implements ``capability`` (one of CAPABILITIES, e.g. ``Samples``)."""
        return capability in self.capabilities


def names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def spec(name: str) -> ModelSpec:
    """The declaration of model ``name`` (ValueError for an unknown name)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    cls = _REGISTRY[name]
    return ModelSpec(name, cls.task, cls.capabilities, cls.figures, cls.multi_phase, cls.pipeline_parallel)


def config_class(name: str) -> type:
    """The @dataclass holding model ``name``'s hyperparameters (ValueError for an unknown name)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    return _REGISTRY[name].config_class


def build(name: str, *, feature_shape: tuple[int, ...], num_classes: int, **config: Any) -> DlpipeModel:
    """A freshly initialized model `name`; `config` overrides fields of its config dataclass.

    Lists are accepted where a field is a tuple (YAML has no tuples). Raises ValueError for an
    unknown model name or config key, naming it and the valid choices.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(names())}")
    cls = _REGISTRY[name]
    return cls(_make_config(name, cls.config_class, config), tuple(feature_shape), num_classes)


def to_artifact_dict(model: DlpipeModel) -> dict[str, Any]:
    """Everything needed to rebuild `model`, as plain data loadable by `torch.load(weights_only=True)`."""
    return {
        "model_name": model.name,
        "model_config": {k: _plain(v) for k, v in model.config_dict().items()},
        "feature_shape": list(model.feature_shape),
        "num_classes": model.num_classes,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }


def from_artifact_dict(d: Mapping[str, Any]) -> DlpipeModel:
    """Rebuild a model from `to_artifact_dict` output, with its weights loaded, in eval mode."""
    missing = [k for k in _ARTIFACT_KEYS if k not in d]
    if missing:
        raise ValueError(f"model artifact lacks keys {missing}; expected {list(_ARTIFACT_KEYS)}")
    model = build(
        d["model_name"], feature_shape=tuple(d["feature_shape"]), num_classes=d["num_classes"], **d["model_config"]
    )
    try:
        model.load_state_dict(d["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"model artifact's state_dict does not fit model {d['model_name']!r}: {e}") from e
    return model.eval()


def _make_config(model_name: str, config_class: type, overrides: Mapping[str, Any]) -> Any:
    """config_class(**overrides) with unknown keys rejected and lists coerced to tuples."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {', '.join(map(repr, unknown))} for model {model_name!r}; "
            f"valid keys: {', '.join(sorted(fields))}"
        )
    hints = typing.get_type_hints(config_class)
    values = {}
    for key, value in overrides.items():
        origin = typing.get_origin(hints[key])
        if origin is tuple and isinstance(value, list):
            value = tuple(value)
        elif hints[key] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # YAML `beta: 1` is an int
        values[key] = value
    return config_class(**values)


def _plain(value: Any) -> Any:
    """Tuples -> lists, recursively, so artifacts hold only weights_only-safe, YAML-friendly types."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value
