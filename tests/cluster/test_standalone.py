"""spark-submit against a real standalone cluster (Master + 2 one-core Workers on 127.0.0.1):
``pipelines/__main__.py run`` (ETL -> 2-rank Horovod training -> inference) with the executors on the
packed environment, as on YARN (``--archives dist/env.tar.gz#env --conf spark.pyspark.python=./env/bin/python``)
and the code in ``--py-files dist/dlpipe.zip``.
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
def packed_env() -> Path:
    """``dist/env.tar.gz`` (``scripts/package.sh env``: reused when up to date, else about 30-40 s to build)."""
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "package.sh"), "env"], cwd=REPO_ROOT, check=True,
                   env={**os.environ, "VENV": sys.prefix, "DLPIPE_PACK_VERIFY": "0"})
    return REPO_ROOT / "dist" / "env.tar.gz"


@pytest.fixture(scope="module")
def pipeline_run(spark_submit, dlpipe_zip, packed_env, tmp_path_factory) -> dict:
    """One ``spark-submit pipelines/__main__.py run`` on the cluster, executors on the packed environment;
    returns its summary, manifest and workdir."""
    workdir = tmp_path_factory.mktemp("cluster-workdir")
    result = spark_submit("run", ["--archives", f"{packed_env}#env", "--py-files", str(dlpipe_zip),
                                  "--conf", "spark.pyspark.python=./env/bin/python",
                                  "--conf", f"spark.pyspark.driver.python={sys.executable}"],
                          "pipelines/__main__.py",
                          ["run", "--config", CONFIG, "--run-id", "cluster-test", f"workdir={workdir}", "train.epochs=2"],
                          timeout_s=400)
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
    # ... on the packed Python (so the ETL's, the ranks' and the scoring's): each worker unpacked the archive.
    unpacked = [list(d.glob("app-*/*/env/bin/python3.11")) for d in standalone_cluster.work_dirs]
    assert all(unpacked), f"env.tar.gz was not unpacked on every worker: {unpacked}"
