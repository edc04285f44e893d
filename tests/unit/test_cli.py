"""The command line rejects a bad config before Spark starts, and ``--check`` prints the resolved one."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from testkit import REPO_ROOT

CONFIG = "pipelines/configs/digits_cnn.yaml"


def _dlpipe(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("verb, override, message", [
    ("train", "train.epochs=-3", "config key 'train.epochs' = -3 must be >= 1"),
    ("train", "train.optimizer=adamw", "config key 'train.optimizer' = 'adamw' must be one of adam, sgd"),
    ("run", "model.name=resnet", "config key 'model.name' = 'resnet' is not a dlpipe model"),
    ("etl", "master=yarn", "neither HADOOP_CONF_DIR nor YARN_CONF_DIR is set"),
])
def test_a_bad_value_exits_2_naming_the_key_before_any_spark_session(verb, override, message):
    done = _dlpipe(verb, "--config", CONFIG, override)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "SparkContext" not in done.stderr and "log level" not in done.stderr  # no JVM was started


def test_check_prints_the_resolved_config_and_starts_nothing():
    done = _dlpipe("train", "--config", CONFIG, "--check", "train.epochs=3", "--run-id", "r1")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("# dlpipe train: config is valid")
    resolved = yaml.safe_load(done.stdout)
    assert resolved["train"]["epochs"] == 3 and resolved["run_id"] == "r1" and resolved["model"]["name"] == "cnn"
    assert "SparkContext" not in done.stderr
