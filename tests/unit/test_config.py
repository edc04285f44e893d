"""Config loading and validation (pure logic)."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import pytest

from pipelines.config import ConfigError, from_dict, load_config, to_yaml
from pipelines.formats import FormatError, Record

REPO_CONFIGS = ["digits_cnn.yaml", "digits_autoencoder.yaml", "digits_vae.yaml"]


def test_overrides_are_typed_by_yaml_and_the_schema():
    config = load_config(None, ["train.epochs=3", "train.lr=1", "etl.source.image_shape=[28, 28]",
                                "spark.spark.executor.memory=1g", "run_id=2026-11-26", "model.name=vae",
                                "model.params.beta=0.5"])
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


# Every value a user could mistype, rejected at load time (before any Spark session) with the key,
# the value and what is allowed in one message.
BAD_VALUES = [
    ("train.epochs=-3", "config key 'train.epochs' = -3 must be >= 1"),
    ("train.num_workers=0", "config key 'train.num_workers' = 0 must be >= 1"),
    ("train.batch_size=0", "config key 'train.batch_size' = 0 must be >= 1"),
    ("train.lr=0", "config key 'train.lr' = 0.0 must be > 0"),
    ("train.optimizer=adamw", "config key 'train.optimizer' = 'adamw' must be one of adam, sgd"),
    ("train.max_attempts=0", "config key 'train.max_attempts' = 0 must be >= 1"),
    ("train.failure_timeout_s=-1", "config key 'train.failure_timeout_s' = -1.0 must be > 0"),
    ("etl.max_quarantine_fraction=1.5", "config key 'etl.max_quarantine_fraction' = 1.5 must be in [0, 1]"),
    ("etl.normalization=minmax", "config key 'etl.normalization' = 'minmax' must be one of global, per_feature"),
    ("etl.rows_per_row_group=-1", "config key 'etl.rows_per_row_group' = -1 must be >= 0"),
    ("etl.splits={train: 0.7, val: 0.2}", "config key 'etl.splits' = {'train': 0.7, 'val': 0.2} sums to 0.9"),
    ("etl.splits={val: 0.5, test: 0.5}", "must include 'train'"),
    ("etl.splits={train: 1.0, quarantine: 0.0}", "'quarantine' that cannot be a folder name"),
    ("etl.source.kind=xml", "config key 'etl.source.kind' = 'xml' must be one of images, csv, json, parquet"),
    ("etl.source.image_shape=[8]", "config key 'etl.source.image_shape' = [8] must be 2 values, each >= 1"),
    ("etl.source.image_shape=[8, 0]", "must be 2 values, each >= 1 (got 0)"),
    ("etl.source.channels=2", "config key 'etl.source.channels' = 2 must be one of 1, 3"),
    ("etl.source.label_names=[a, b, a]", "config key 'etl.source.label_names' = ['a', 'b', 'a'] lists a value twice"),
    ("generate.num_samples=0", "config key 'generate.num_samples' = 0 must be >= 1"),
    ("infer.batch_size=0", "config key 'infer.batch_size' = 0 must be >= 1"),
    ("infer.split=../x", "config key 'infer.split' = '../x' must be a folder name"),
    ("run_id=a/b", "config key 'run_id' = 'a/b' must be a folder name"),
    ("dataset=", "config key 'dataset' = '' must be a folder name"),
    ("master=locale[2]", "config key 'master' = 'locale[2]' is not a Spark master URL"),
    ("model.name=resnet", "config key 'model.name' = 'resnet' is not a dlpipe model"),
    ("model.name=cnnn", "did you mean cnn?"),
    ("model.params={hidden: [64]}", "config key 'model.params.hidden' expects int, got [64] (model 'cnn')"),
    ("model.params={hiden: 64}", "unknown config key 'model.params.hiden'; did you mean model.params.hidden?"),
    ("model.params={dropout: 1.5}", "model.params for model 'cnn': dropout must be in [0, 1), got 1.5"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[b[0] for b in BAD_VALUES])
def test_bad_values_are_rejected_with_key_value_and_what_is_allowed(override, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert message in str(err.value)


def test_good_values_at_the_edges_of_their_rules_pass():
    config = load_config(None, ["etl.max_quarantine_fraction=0", "etl.max_quarantine_fraction=1", "master=local[*]",
                                "etl.splits={train: 1.0}", "model.name=mlp", "model.params={hidden_sizes: [32]}",
                                "train.horovod_fusion_threshold_mb=0", "master=spark://127.0.0.1:7077"])
    assert config.model.params == {"hidden_sizes": [32]} and config.etl.splits == {"train": 1.0}


def test_the_whole_config_is_checked_in_well_under_a_second():
    import time

    import models  # noqa: F401 - the one-time torch import is not the check's cost

    started = time.perf_counter()
    for _ in range(10):
        load_config(None, ["train.epochs=3", "model.name=vae", "model.params.beta=0.5"])
    assert (time.perf_counter() - started) / 10 < 0.1


def test_yarn_without_hadoop_configuration_is_named_before_spark(monkeypatch):
    from pipelines.preflight import validate

    monkeypatch.delenv("HADOOP_CONF_DIR", raising=False)
    monkeypatch.delenv("YARN_CONF_DIR", raising=False)
    with pytest.raises(ConfigError, match="'master' = 'yarn' but neither HADOOP_CONF_DIR nor YARN_CONF_DIR"):
        validate(load_config(None, ["master=yarn"]), "etl")
    monkeypatch.setenv("HADOOP_CONF_DIR", "/etc/hadoop/conf")
    validate(load_config(None, ["master=yarn"]), "etl")


def test_train_loader_auto_resolves_by_the_stack_and_petastorm_is_refused_where_it_cannot_run(monkeypatch):
    from importlib import metadata

    from pipelines import choices, preflight

    versions = {"petastorm": "0.12.1", "pyarrow": "14.0.2"}
    monkeypatch.setattr(metadata, "version", lambda name: versions[name])
    assert choices.resolve_loader("auto") == "petastorm" and choices.resolve_loader("arrow") == "arrow"
    config = load_config("pipelines/configs/digits_cnn.yaml", ["train.loader=petastorm"])
    preflight.validate(config, "train")  # the classic line: fine
    versions["pyarrow"] = "26.0.1"  # the current line
    assert choices.resolve_loader("auto") == "arrow" and choices.resolve_loader("petastorm") == "petastorm"
    with pytest.raises(ConfigError, match=r"'train.loader' = 'petastorm': Petastorm cannot run .* pyarrow < 15"):
        preflight.validate(config, "train")
    preflight.validate(load_config("pipelines/configs/digits_cnn.yaml", ["train.loader=auto"]), "train")
    del versions["petastorm"]  # not installed at all
    monkeypatch.setattr(metadata, "version", lambda name: versions[name] if name in versions else
                        (_ for _ in ()).throw(metadata.PackageNotFoundError(name)))
    assert choices.resolve_loader("auto") == "arrow"


@pytest.mark.parametrize("override", ["workdir=s3://key:secret@bucket/work", "etl.source.path=s3://b/x",
                                      "infer.output=ftp://host/x"])
def test_a_location_with_credentials_or_an_unknown_scheme_is_refused_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"config key '{key}' = .* is refused") as err:
        load_config(None, [override])
    assert "secret" not in str(err.value)  # a refused secret is not repeated in the message


@pytest.mark.parametrize("key", ["spark.hadoop.fs.s3a.secret.key", "spark.hadoop.fs.s3a.session.token",
                                 "spark.hadoop.fs.azure.account.key.acct.dfs.core.windows.net", "spark.ssl.keyPassword",
                                 "spark.executorEnv.AWS_SESSION_TOKEN", "spark.executorEnv.AZURE_STORAGE_CONNECTION_STRING",
                                 "spark.yarn.appMasterEnv.MLFLOW_TRACKING_TOKEN", "spark.executorEnv.AWS_SECRET_ACCESS_KEY",
                                 "spark.kubernetes.authenticate.driver.oauthToken"])
def test_a_credential_in_the_spark_section_is_refused_and_not_repeated(key):
    with pytest.raises(ConfigError, match=rf"config key 'spark.{re.escape(key)}' looks like a credential") as err:
        load_config(None, [f"spark.{key}=hunter2"])
    assert "hunter2" not in str(err.value) and err.value.key == f"spark.{key}"
    # ordinary settings, including ones that only mention credentials, pass
    assert load_config(None, ["spark.spark.security.credentials.hive.enabled=false",
                              "spark.spark.executorEnv.PYTHONHASHSEED=0",
                              "spark.spark.kubernetes.authenticate.driver.oauthTokenFile=/var/run/token"]).spark


def test_docs_config_lists_the_validation_rules_generated_from_the_config_classes():
    from testkit import REPO_ROOT
    from pipelines.config import rules_table

    assert rules_table() in (REPO_ROOT / "docs" / "config.md").read_text()


@pytest.mark.parametrize("uri", ["https://alice:TOPSECRET@mlflow.example.com", "http://u:TOPSECRET@h:5000/x",
                                 "https://mlflow.example.com/?token=TOPSECRET"])
def test_a_tracking_uri_with_a_credential_is_refused_without_echoing_it(uri):
    from pipelines.config import ConfigError, load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, [f"tracking.uri={uri}"])
    assert "tracking.uri" in str(err.value) and "MLFLOW_TRACKING_PASSWORD" in str(err.value)
    assert "TOPSECRET" not in str(err.value)


def test_a_storage_secret_holding_a_slash_is_refused_and_never_echoed():
    from pipelines.config import ConfigError, load_config
    from pipelines.storage.uri import redact, split

    location = "s3://AKIA:ab/TOPSECRET@bucket/k"
    assert split(location).authority == "AKIA:ab/TOPSECRET@bucket" and split(location).path == "/k"
    assert redact(f"see {location} and hdfs://nn:8020/p@x") == "see s3://***@bucket/k and hdfs://nn:8020/p@x"
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"workdir={location}"])
    assert "credentials must not be written" in str(err.value) and "TOPSECRET" not in str(err.value)


def test_the_allowed_strategies_precisions_and_compressions_are_listed_once_and_are_the_registries():
    from pipelines.choices import COMPRESSION_NAMES, PRECISION_NAMES, STRATEGY_NAMES
    from pipelines.config import ConfigError, load_config
    from pipelines.train.precision import PRECISIONS
    from pipelines.train.strategies import STRATEGIES
    from pipelines.train.strategies.base import COMPRESSIONS

    assert tuple(STRATEGIES) == STRATEGY_NAMES and tuple(PRECISIONS) == PRECISION_NAMES
    assert tuple(COMPRESSIONS) == COMPRESSION_NAMES
    for key, names in (("train.strategy", STRATEGY_NAMES), ("train.precision", PRECISION_NAMES),
                       ("train.grad_compression", COMPRESSION_NAMES)):
        with pytest.raises(ConfigError, match=f"must be one of {', '.join(names)}$"):
            load_config(None, [f"{key}=nonesuch"])



@dataclass
class Knobs:
    """A model config with a Literal (a type the one decoder learnt for both users) and an optional
    (one only the formats' decoder knew before the config used it)."""

    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None


@dataclass(frozen=True)
class KnobsRecord(Record):
    mode: Literal["fast", "slow"] = "fast"
    limit: int | None = None


def test_the_config_and_the_formats_decode_through_one_type_hint_decoder(monkeypatch):
    import models

    monkeypatch.setattr(models, "config_class", lambda name: Knobs)
    assert load_config(None, ["model.params={mode: slow, limit: null}"]).model.params == {"mode": "slow", "limit": None}
    assert load_config(None, ["model.params.limit=3"]).model.params == {"limit": 3}
    with pytest.raises(ConfigError, match=r"^config key 'model.params.mode' expects one of 'fast', 'slow', "
                                          r"got 'medium' \(model 'cnn'\)$"):
        load_config(None, ["model.params.mode=medium"])
    with pytest.raises(ConfigError, match=r"^config key 'model.params.limit' expects int, got 'x' \(model 'cnn'\)$"):
        load_config(None, ["model.params.limit=x"])

    assert KnobsRecord.from_dict({"mode": "slow", "limit": 3}) == KnobsRecord("slow", 3)
    with pytest.raises(FormatError, match=r"^knobs.json: key 'mode' expects one of 'fast', 'slow', got 'medium'$"):
        KnobsRecord.from_dict({"mode": "medium"}, "knobs.json")
    with pytest.raises(FormatError, match=r"^knobs.json: key 'limit' expects int, got True$"):
        KnobsRecord.from_dict({"limit": True}, "knobs.json")


def test_the_config_module_walks_no_type_hints_of_its_own():
    import inspect

    import pipelines.config as config
    import pipelines.formats as formats

    assert config.decode is formats.decode
    assert not hasattr(config, "_build") and not hasattr(config, "_coerce")
    assert "get_type_hints" not in inspect.getsource(config)


@pytest.mark.parametrize("overrides, message", [
    (["promotion.alias=current", "promotion.metric=f1"],
     "promotion.metric='f1' is not an evaluation figure of model cnn (classifier): use one of accuracy"),
    (["promotion.alias=current", "model.name=gan"], "promotion.alias=current: model gan (generator) has no evaluation"),
    (["promotion.alias=../x"], "promotion.alias"),
    (["drift.action=halt"], "drift.action"),
    (["drift.max_label_shift=1.5"], "drift.max_label_shift"),
    (["infer.model_alias=current", "infer.model_run=day1"],
     "config keys 'infer.model_run' = 'day1' and 'infer.model_alias' = 'current' both name a model"),
])
def test_guard_settings_are_checked_before_spark(overrides, message):
    from pipelines import preflight

    with pytest.raises(ConfigError, match=re.escape(message)):
        preflight.validate(load_config("pipelines/configs/digits_cnn.yaml", overrides), "run")


def test_guards_are_off_by_default_and_a_reconstructor_is_promoted_by_its_error():
    from pipelines import preflight

    config = load_config(None, [])
    assert (config.drift.max_psi, config.drift.max_label_shift, config.promotion.alias) == (0.0, 0.0, "")
    preflight.validate(load_config("pipelines/configs/digits_autoencoder.yaml", [
        "promotion.alias=current", "promotion.metric=reconstruction_error"]), "run")
