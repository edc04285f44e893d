"""Elastic training's config (issue 32): ``train.num_workers`` as a range MIN..MAX, kept as
``train.min_workers`` = MIN and ``train.num_workers`` = MAX, and the rules around it."""
from __future__ import annotations

import pytest
import yaml

from pipelines.config import ConfigError, from_dict, load_config, to_yaml


def test_a_number_stays_a_fixed_world_size():
    train = load_config(None, ["train.num_workers=3"]).train
    assert (train.num_workers, train.min_workers, train.elastic, train.world_range) == (3, 0, False, (3, 3))
    assert load_config("pipelines/configs/digits_cnn.yaml").train.world_range == (2, 2)


@pytest.mark.parametrize("given, low, high", [("1..2", 1, 2), ("1:2", 1, 2), (" 2 .. 4 ", 2, 4), ("2 : 8", 2, 8),
                                              ("3..3", 3, 3)])
def test_a_range_from_a_config_dict_sets_the_minimum_and_the_maximum(given, low, high):
    train = from_dict({"train": {"num_workers": given}}).train
    assert (train.min_workers, train.num_workers, train.elastic, train.world_range) == (low, high, True, (low, high))
    assert type(train.num_workers) is int and type(train.min_workers) is int


@pytest.mark.parametrize("override, low, high", [("train.num_workers=1..2", 1, 2), ("train.num_workers=2:8", 2, 8),
                                                 ("train.num_workers= 2 .. 4 ", 2, 4),
                                                 ("train.num_workers=2 : 4", 2, 4)])  # YAML alone: {2: 4}
def test_a_range_on_the_command_line(override, low, high):
    assert load_config(None, [override]).train.world_range == (low, high)


def test_a_range_in_a_yaml_file_including_the_colon_form_yaml_1_1_reads_as_base_60(tmp_path):
    path = tmp_path / "c.yaml"
    for text, expected in (("2..8", (2, 8)), ("2:8", (2, 8)), ("'1 : 3'", (1, 3)), ("4", (4, 4))):
        path.write_text(f"train:\n  num_workers: {text}\n  epochs: 2\n")
        config = load_config(path)
        assert config.train.world_range == expected and config.train.epochs == 2  # not 128 (2*60 + 8)
    path.write_text("train:\n  num_workers: 1\n  min_workers: 1\n")
    assert load_config(path).train.world_range == (1, 1) and load_config(path).train.elastic


def test_min_workers_may_be_set_on_its_own():
    train = load_config(None, ["train.num_workers=4", "train.min_workers=2"]).train
    assert (train.min_workers, train.num_workers, train.elastic) == (2, 4, True)


def test_the_range_round_trips_through_to_dict_and_yaml():
    config = load_config(None, ["train.num_workers=2..6"])
    saved = config.to_dict()
    assert (saved["train"]["min_workers"], saved["train"]["num_workers"]) == (2, 6)
    assert from_dict(saved) == config
    assert from_dict(yaml.safe_load(to_yaml(config))) == config
    fixed = load_config(None, ["train.num_workers=5"])
    assert from_dict(fixed.to_dict()) == fixed and fixed.to_dict()["train"]["min_workers"] == 0
    # a saved config (min_workers: 0) given a range on top: the range sets the minimum
    assert load_config(None, ["train.min_workers=0", "train.num_workers=2..3"]).train.world_range == (2, 3)
    assert load_config(None, ["train.min_workers=2", "train.num_workers=2..3"]).train.world_range == (2, 3)


@pytest.mark.parametrize("given", ["2..", "a..b", "3..1", "0..2", "1..2..3", "..4", "2-4", "x", "1.5..2"])
def test_a_malformed_range_names_train_num_workers_and_the_accepted_forms(given):
    for load in (lambda: load_config(None, [f"train.num_workers={given}"]),
                 lambda: from_dict({"train": {"num_workers": given}})):
        with pytest.raises(ConfigError) as err:
            load()
        assert err.value.key == "train.num_workers"
        assert str(err.value).startswith(f"config key 'train.num_workers' = {given!r} is not a number of ranks")
        assert "a number N (a fixed N ranks) or a range MIN..MAX or MIN:MAX with 1 <= MIN <= MAX" in str(err.value)


@pytest.mark.parametrize("overrides, key, message", [
    (["train.num_workers=2", "train.min_workers=3"], "train.min_workers",
     "config key 'train.min_workers' = 3 exceeds train.num_workers=2, the most ranks a launch runs: lower "
     "train.min_workers, or give both as a range (train.num_workers=3..MAX)"),
    (["train.min_workers=-1"], "train.min_workers", "config key 'train.min_workers' = -1 must be >= 0"),
    (["train.num_workers=1..4", "train.min_workers=2"], "train.min_workers",
     "config key 'train.min_workers' = 2 contradicts the range train.num_workers='1..4', which sets the minimum to "
     "1: drop train.min_workers"),
    (["train.num_workers=0"], "train.num_workers", "config key 'train.num_workers' = 0 must be >= 1"),
])
def test_min_workers_outside_its_bounds_is_refused_naming_the_key(overrides, key, message):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert str(err.value) == message and err.value.key == key


def _validate(tmp_path, *overrides, master="local[2]"):
    from testkit import make_config
    from pipelines.preflight import validate

    config = make_config(tmp_path, *overrides)
    validate(config, "train", master)
    return config


def test_pipeline_parallelism_refuses_a_range_but_takes_a_fixed_count(tmp_path):
    with pytest.raises(ConfigError) as err:
        _validate(tmp_path, "train.strategy=pipeline", "train.num_workers=1..2")
    assert str(err.value) == ("config key 'train.num_workers' = '1..2' with train.strategy=pipeline: pipeline "
                              "parallelism needs a fixed stage count (one stage per rank): give train.num_workers "
                              "a single number")
    assert err.value.key == "train.num_workers"
    _validate(tmp_path, "train.strategy=pipeline", "train.num_workers=2")
    _validate(tmp_path, "train.strategy=pipeline", "train.num_workers=2..2")  # min = max: a fixed count
    _validate(tmp_path, "train.strategy=ddp", "train.num_workers=1..2")


def test_gradient_accumulation_is_refused_with_a_range(tmp_path):
    with pytest.raises(ConfigError) as err:
        _validate(tmp_path, "train.strategy=ddp", "train.num_workers=1:2", "train.grad_accumulation=2")
    assert str(err.value) == ("config key 'train.grad_accumulation' = 2 with the elastic train.num_workers=1..2: "
                              "elastic training keeps the global batch constant through each rank's batch size, not "
                              "by accumulating: set train.grad_accumulation=1 or give a fixed train.num_workers")
    assert err.value.key == "train.grad_accumulation"
    _validate(tmp_path, "train.strategy=ddp", "train.num_workers=2", "train.grad_accumulation=2")
    _validate(tmp_path, "train.strategy=ddp", "train.num_workers=1..2", "train.grad_accumulation=1")


def test_a_local_master_needs_slots_for_the_minimum_only(tmp_path):
    _validate(tmp_path, "train.num_workers=1..2", master="local[1]")  # the launch runs 1 rank
    with pytest.raises(ConfigError) as err:
        _validate(tmp_path, "train.num_workers=2..3", master="local[1]")
    assert str(err.value) == ("config key 'train.num_workers' = '2..3': an elastic launch runs at least 2 ranks at "
                              "once, in one barrier stage, and master=local[1] runs 1 tasks at a time: lower the "
                              "range's minimum, or raise the cores (local[2])")
    assert err.value.key == "train.num_workers"
    with pytest.raises(ConfigError, match=r"^config key 'train.num_workers' = 2: the ranks run as one barrier stage"):
        _validate(tmp_path, "train.num_workers=2", master="local[1]")  # a fixed count still needs them all
