"""Config loading and validation (pure logic)."""
from __future__ import annotations

import pytest

from pipelines.config import ConfigError, from_dict, load_config, to_yaml

REPO_CONFIGS = ["digits_cnn.yaml", "digits_autoencoder.yaml", "digits_vae.yaml"]


def test_overrides_are_typed_by_yaml_and_the_schema():
    config = load_config(None, ["train.epochs=3", "train.lr=1", "etl.source.image_shape=[28, 28]",
                                "spark.spark.executor.memory=1g", "run_id=2026-11-26", "model.params.beta=0.5"])
    assert config.train.epochs == 3
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.etl.source.image_shape == [28, 28]
    assert config.spark == {"spark.executor.memory": "1g"}
    assert config.run_id == "2026-11-26"
    assert config.model.params == {"beta": 0.5}


@pytest.mark.parametrize("override, message", [
    ("train.epoch=3", "unknown config key 'train.epoch'; did you mean train.epochs?"),
    ("modle.name=cnn", "unknown config key 'modle'; did you mean model?"),
    ("train.epochs=many", "config key 'train.epochs' expects int, got 'many'"),
    ("train.lr=fast", "config key 'train.lr' expects a number, got 'fast'"),
    ("train.scale_lr_by_workers=3", "config key 'train.scale_lr_by_workers' expects bool, got 3"),
    ("etl.source.image_shape=8", "config key 'etl.source.image_shape' expects a list of int, got 8"),
    ("train=3", "train must be a mapping"),
    ("noequals", "is not of the form key.sub=value"),
])
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


@pytest.mark.parametrize("name", REPO_CONFIGS)
def test_bundled_configs_validate_and_round_trip(name):
    from testkit import REPO_ROOT
    import yaml

    config = load_config(REPO_ROOT / "pipelines" / "configs" / name)
    again = from_dict(yaml.safe_load(to_yaml(config)))
    assert again == config
    assert again.digest() == config.digest()


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
