"""Shared fixtures: one hermetic local[2] SparkSession per test session, bound to loopback."""
from __future__ import annotations

import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.s3server import ACCESS_KEY, SECRET_KEY
from testkit import DIGITS_DIR, REPO_ROOT, make_config

# Before any JVM starts: loopback only, the project's Spark settings, the venv's Python.
os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"
os.environ.setdefault("SPARK_CONF_DIR", str(REPO_ROOT / "spark-conf"))
os.environ["PYSPARK_PYTHON"] = sys.executable
os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
# The key that signs RL actor states (pipelines.rl.statekey): the suite's own, not a file in ~/.config.
os.environ.setdefault("DLPIPE_STATE_KEY", "dlpipe-test-suite")
# Credentials for the S3 server the storage tests start (moto accepts any), set before any JVM starts so
# executors and ranks inherit them as they would a cluster's. No test reaches AWS: endpoints are loopback.
for _key, _value in (("AWS_ACCESS_KEY_ID", ACCESS_KEY), ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
                     ("AWS_DEFAULT_REGION", "us-east-1"), ("AWS_EC2_METADATA_DISABLED", "true")):
    os.environ.setdefault(_key, _value)
# Executors (and the rank processes they start) import test-only rank entries (rank_faults) and
# the benchmarks package: put tests/ and the repository root on their path.
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO_ROOT / "tests"), str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """A local[2] SparkSession: UI and console progress off, temp local dir and warehouse."""
    from pipelines.session import get_spark

    tmp = tmp_path_factory.mktemp("spark")
    session = get_spark(
        "dlpipe-tests",
        master="local[2]",
        conf={
            "spark.driver.host": "127.0.0.1",
            "spark.ui.enabled": "false",
            "spark.ui.showConsoleProgress": "false",
            "spark.sql.shuffle.partitions": "4",
            "spark.default.parallelism": "2",
            "spark.local.dir": str(tmp / "local"),
            "spark.sql.warehouse.dir": str(tmp / "warehouse"),
            "spark.driver.memory": "2g",
        },
    )
    yield session
    session.stop()


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server (moto's, a separate process on 127.0.0.1) for the session, with
    AWS_ENDPOINT_URL set and dlpipe's storage options pointing at it (both restored afterwards)."""
    from benchmarks.s3server import dlpipe_on_s3

    with dlpipe_on_s3() as server:
        yield server


@pytest.fixture
def seed() -> int:
    """Seed Python, NumPy and torch so unit tests are repeatable."""
    import torch

    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    return 0


@pytest.fixture
def digits_dir() -> Path:
    return DIGITS_DIR


@pytest.fixture(scope="session")
def digits_workdir(spark, tmp_path_factory) -> Path:
    """A workdir holding the real ETL output of the bundled digits (made once per test session)."""
    from pipelines.etl import job as etl

    workdir = tmp_path_factory.mktemp("digits-workdir")
    etl.main(spark, make_config(workdir))
    return workdir
