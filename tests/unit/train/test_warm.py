"""train.init_from: an artifact of another model or data is refused, naming both sides."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

import models
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.train.warm import check_fits


def _meta(name: str, feature_shape: list[int], num_classes: int, **params) -> SimpleNamespace:
    """What load_metadata gives for an artifact of model ``name`` (its own config as the model reports it)."""
    config = models.build(name, feature_shape=tuple(feature_shape), num_classes=num_classes, **params).config_dict()
    return SimpleNamespace(model_name=name, model_config=config, feature_shape=feature_shape,
                           num_classes=num_classes)


def test_an_artifact_of_the_same_model_and_data_fits(tmp_path):
    config = load_config(None, [f"workdir={tmp_path}", "model.name=cnn", "train.init_from=day1"])
    assert check_fits(_meta("cnn", [1, 8, 8], 10), config, [1, 8, 8], 10, "dataset digits version 2") is None


def test_another_model_or_data_is_refused_naming_both(tmp_path):
    config = load_config(None, [f"workdir={tmp_path}", "model.name=cnn", "train.init_from=day1"])
    with pytest.raises(ConfigError, match=r"model 'mlp' vs model.name='cnn'") as err:
        check_fits(_meta("mlp", [1, 8, 8], 10), config, [1, 8, 8], 10, "dataset digits version 2")
    assert err.value.key == "train.init_from" and "'day1'" in str(err.value)
    with pytest.raises(ConfigError) as err:
        check_fits(_meta("cnn", [1, 28, 28], 10), config, [1, 8, 8], 3, "dataset digits version 2")
    message = str(err.value)
    assert "feature shape [1, 28, 28] vs [1, 8, 8] (dataset digits version 2)" in message
    assert "10 classes vs 3 (dataset digits version 2)" in message
