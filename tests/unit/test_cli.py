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
    ("train", "model.name=mlp_policy", "'model.name' = 'mlp_policy' is a policy: policies learn from an environment "
                                       "with `dlpipe rl"),
    ("rl", "model.name=cnn", "'model.name' = 'cnn' is a classifier, but dlpipe rl trains a policy"),
])
def test_a_bad_value_exits_2_naming_the_key_before_any_spark_session(verb, override, message):
    done = _dlpipe(verb, "--config", CONFIG, override)
    assert done.returncode == 2, done.stderr[-2000:]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert "SparkContext" not in done.stderr and "log level" not in done.stderr  # no JVM was started


@pytest.mark.parametrize("config, overrides, message", [
    ("digits_gan.yaml", ["train.precision=fp16"], "config key 'train.precision' = 'fp16': model 'gan' trains with "
                                                  "several optimizers"),
    ("digits_gan.yaml", ["train.strategy=fsdp"], "config key 'train.strategy' = 'fsdp' cannot train model 'gan'"),
    ("digits_cnn.yaml", ["train.precision=fp16", "master=local[2]"], "needs a GPU, and the ranks of master=local[2] "
                                                                     "run on this machine"),
    ("digits_gan.yaml", ["etl.source.image_shape=[6,6]"], "model 'gan' needs image sides divisible by 4"),
    ("digits_cnn.yaml", ["train.num_workers=3", "master=local[2]"], "'train.num_workers' = 3: the ranks run as one "
                                                                    "barrier stage"),
    ("digits_cnn.yaml", ["train.grad_compression=bf16"], "'train.grad_compression' = 'bf16' is not supported with "
                                                         "train.strategy=horovod"),
    ("digits_cnn.yaml", ["train.gpus_per_rank=1", "master=local[2]"], "'train.gpus_per_rank' = 1 asks Spark for GPUs"),
])
def test_an_impossible_combination_is_one_line_before_any_stage(tmp_path, config, overrides, message):
    done = _dlpipe("run", "--config", f"pipelines/configs/{config}", f"workdir={tmp_path}", *overrides)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "datasets").exists()  # no ETL ran


def test_check_probes_the_locations_prints_the_resolved_config_and_starts_nothing(tmp_path):
    done = _dlpipe("train", "--config", CONFIG, "--check", "train.epochs=3", "--run-id", "r1", f"workdir={tmp_path}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"# workdir: {tmp_path}: listed, written and cleaned up" in done.stdout
    assert "# workdir: local commits are fenced: create by hard link, replace under an exclusive folder lock" in done.stdout
    assert "# dlpipe train: config is valid" in done.stdout and list(tmp_path.iterdir()) == []
    resolved = yaml.safe_load(done.stdout)
    assert resolved["train"]["epochs"] == 3 and resolved["run_id"] == "r1" and resolved["model"]["name"] == "cnn"
    assert "SparkContext" not in done.stderr


class Py4JJavaError(Exception):
    """Stands in for py4j's: the same module name, the text Spark wraps a failed task's error in."""


Py4JJavaError.__module__ = "py4j.protocol"
SPARK_TASK_TEXT = """An error occurred while calling o52.collectToPython.
: org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 3.0 failed 1 times
org.apache.spark.api.python.PythonException: Traceback (most recent call last):
  File "/x/pyspark/worker.py", line 1247, in main
    process()
  File "/x/pyarrow/parquet/core.py", line 341, in __init__
    self.reader.open(
pyarrow.lib.ArrowInvalid: Parquet magic bytes not found in footer. Either the file is corrupted
\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(PythonRunner.scala:572)
"""


def test_a_spark_task_failure_is_one_line_naming_the_python_error():
    from pipelines.session import task_failure

    assert task_failure(Py4JJavaError(SPARK_TASK_TEXT)) == (
        "a Spark task failed: ArrowInvalid: Parquet magic bytes not found in footer. Either the file is corrupted")
    ours = SPARK_TASK_TEXT.replace("pyarrow.lib.ArrowInvalid", "pipelines.storage.uri.StorageError")
    assert task_failure(Py4JJavaError(ours)) == "StorageError: Parquet magic bytes not found in footer. Either " \
        "the file is corrupted"
    assert task_failure(Py4JJavaError("org.apache.spark.sql.AnalysisException: no such column")) is None  # JVM only
    assert task_failure(KeyError("x")) is None  # not a Spark task's: the CLI keeps its traceback


@pytest.mark.parametrize("argument", ["env", "--version"])
def test_env_prints_the_stack_it_runs_on_without_a_config_or_spark(argument):
    import importlib.metadata

    from pipelines.choices import resolve_loader

    done = _dlpipe(argument)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines()}
    for name in ("dlpipe", "pyspark", "pyarrow", "torch", "horovod", "petastorm"):
        assert rows[name] == importlib.metadata.version(name), (name, done.stdout)
    assert rows["python"] == sys.version.split()[0] and rows["loader"] == resolve_loader("auto")
    assert "built with gloo" in done.stdout and "SparkContext" not in done.stderr
