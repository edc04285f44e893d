"""spark-submit against a real standalone cluster (Master + 2 one-core Workers on 127.0.0.1).

1. ``pipelines/__main__.py run`` (ETL -> 2-rank Horovod training -> inference) with ``--py-files dist/dlpipe.zip``,
   executors on this venv's Python.
2. ``pipelines/__main__.py train`` with the executors on the packed environment, as on YARN:
   ``--archives dist/env.tar.gz#env --conf spark.pyspark.python=./env/bin/python``.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CONFIG = "pipelines/configs/digits_cnn.yaml"
DIGITS_RECORDS = 1797


@pytest.fixture(scope="module")
def pipeline_run(spark_submit, dlpipe_zip, tmp_path_factory) -> dict:
    """One ``spark-submit pipelines/__main__.py run`` on the cluster; returns its summary, manifest and workdir."""
    workdir = tmp_path_factory.mktemp("cluster-workdir")
    result = spark_submit("run", ["--py-files", str(dlpipe_zip)], "pipelines/__main__.py",
                          ["run", "--config", CONFIG, "--run-id", "cluster-test", f"workdir={workdir}", "train.epochs=2"])
    assert result.returncode == 0, f"spark-submit pipelines/__main__.py run exited {result.returncode}:\n{result.tail()}"
    from pipelines.dataset import open_dataset
    from pipelines.summary import RunSummary

    summary = RunSummary.from_json((workdir / "runs" / "cluster-test" / "summary.json").read_text())
    view = open_dataset(str(workdir / "datasets" / "digits"))
    return {"summary": summary, "dataset": view, "workdir": workdir, "log": result.log, "seconds": result.seconds}


def test_run_pipeline_on_standalone_cluster(pipeline_run, standalone_cluster):
    summary, view = pipeline_run["summary"], pipeline_run["dataset"]
    assert summary.status == "ok", summary
    assert all(s.status == "ok" for s in summary.stages.values()), summary.stages
    assert summary.etl.records_in == DIGITS_RECORDS
    assert summary.etl.accepted == DIGITS_RECORDS and summary.etl.quarantined == 0
    assert summary.train.epochs_completed == 2
    test_rows = view.counts["test"]
    assert test_rows > 0
    assert summary.infer.rows == test_rows and summary.infer.bad_rows == 0
    assert summary.eval.accuracy > 0.5, summary.eval

    # Predictions are committed (the executors got the artifact through SparkContext.addFile and
    # wrote their files through the storage layer).
    import pyarrow.parquet as pq

    from pipelines.publish import committed_files

    files = committed_files(summary.predictions, ".parquet")
    assert files and sum(pq.read_metadata(f).num_rows for f in files) == test_rows

    # It really ran on the cluster: both workers started an executor for the application.
    apps = [sorted(d.glob("app-*")) for d in standalone_cluster.work_dirs]
    assert all(apps), f"an executor did not run on every worker: {apps}"


@pytest.fixture(scope="module")
def packed_env() -> Path:
    """``dist/env.tar.gz`` (``scripts/package.sh env``: reused when up to date, else about 30-40 s to build)."""
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "package.sh"), "env"], cwd=REPO_ROOT, check=True,
                   env={**os.environ, "VENV": sys.prefix, "DLPIPE_PACK_VERIFY": "0"})
    return REPO_ROOT / "dist" / "env.tar.gz"


def test_train_with_packed_env_on_standalone_cluster(pipeline_run, packed_env, dlpipe_zip, spark_submit,
                                                     standalone_cluster):
    """Executors (and so the Horovod ranks) run the Python unpacked from env.tar.gz, not this venv."""
    workdir = pipeline_run["workdir"]  # reuses the dataset the pipeline run published
    result = spark_submit(
        "train-packed-env",
        ["--archives", f"{packed_env}#env", "--py-files", str(dlpipe_zip),
         "--conf", "spark.pyspark.python=./env/bin/python",
         "--conf", f"spark.pyspark.driver.python={sys.executable}"],
        "pipelines/__main__.py",
        ["train", "--config", CONFIG, "--run-id", "cluster-packed", f"workdir={workdir}", "train.epochs=1"],
        timeout_s=240,
    )
    assert result.returncode == 0, f"spark-submit pipelines/__main__.py train exited {result.returncode}:\n{result.tail()}"
    assert (workdir / "runs" / "cluster-packed" / "model" / "model.pt").is_file()
    # Each worker unpacked the archive for this application's executor.
    unpacked = [list(d.glob("app-*/*/env/bin/python3.11")) for d in standalone_cluster.work_dirs]
    assert all(unpacked), f"env.tar.gz was not unpacked on every worker: {unpacked}"
