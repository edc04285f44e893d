"""spark-submit against a real standalone cluster (Master + 2 one-core Workers on 127.0.0.1) run with
the secure profile (``spark.authenticate``, RPC and I/O encryption): ``pipelines/__main__.py run`` (ETL
-> 2-rank Horovod training -> inference, MLflow and TensorBoard on) with the executors on the packed
environment, as on YARN (``--archives dist/env.tar.gz#env --conf spark.pyspark.python=./env/bin/python``)
and the code in ``--py-files dist/dlpipe.zip``; no secret of the run reaches any byte it wrote, and a
client without the cluster's secret is refused.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest


REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CONFIG = "pipelines/configs/digits_cnn.yaml"
DIGITS_RECORDS = 1797
# Secrets in their proper places, the credential chains' environment variables: none may be written anywhere.
PLANTED_ENV = {"MLFLOW_TRACKING_PASSWORD": "PLANTEDmlflow7Kq2", "MLFLOW_TRACKING_TOKEN": "PLANTEDtoken3Vx8",
               "AZURE_STORAGE_KEY": "PLANTEDazure5Rt1", "GOOGLE_OAUTH_ACCESS_TOKEN": "PLANTEDgcsToken9Wm4"}
REFUSAL_TIMEOUT_S = 60


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
    started = time.time()
    result = spark_submit("run", ["--archives", f"{packed_env}#env", "--py-files", str(dlpipe_zip),
                                  "--conf", "spark.pyspark.python=./env/bin/python",
                                  "--conf", f"spark.pyspark.driver.python={sys.executable}"],
                          "pipelines/__main__.py",
                          ["run", "--config", CONFIG, "--run-id", "cluster-test", f"workdir={workdir}", "train.epochs=2"],
                          timeout_s=400, env=PLANTED_ENV)
    assert result.returncode == 0, f"spark-submit pipelines/__main__.py run exited {result.returncode}:\n{result.tail()}"
    from pipelines.dataset import open_dataset
    from pipelines.summary import RunSummary

    summary = RunSummary.from_json((workdir / "runs" / "cluster-test" / "summary.json").read_text())
    view = open_dataset(str(workdir / "datasets" / "digits"))
    return {"summary": summary, "dataset": view, "workdir": workdir, "log": result.log, "seconds": result.seconds,
            "started": started}


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


def _files_written(pipeline_run: dict, cluster) -> list[Path]:
    """Every file the run wrote: its console log, its work folder (config, checkpoints, model, MLflow
    store, TensorBoard events, predictions, report), the Spark and rank log files, the daemons' logs
    and the executors' folders (their stdout/stderr and what they fetched)."""
    temp = Path(tempfile.gettempdir())
    recent = [p for folder in ("dlpipe-logs", "dlpipe-ranks") for p in (temp / folder).glob("*.log")
              if p.stat().st_mtime >= pipeline_run["started"]]
    trees = [pipeline_run["workdir"], cluster.log_dir, *cluster.work_dirs]
    in_trees = [p for tree in trees for p in tree.rglob("*") if p.is_file() and not p.is_symlink()
                and "env" not in p.relative_to(tree).parts]  # the unpacked environment is the archive's
    return [pipeline_run["log"], *recent, *in_trees]


def test_no_secret_reaches_any_byte_the_secure_run_wrote(pipeline_run, standalone_cluster):
    secrets = {"spark.authenticate.secret": standalone_cluster.secret, **PLANTED_ENV,
               "AWS_SECRET_ACCESS_KEY": os.environ["AWS_SECRET_ACCESS_KEY"]}
    assert all(len(s) >= 16 for s in secrets.values())
    files = _files_written(pipeline_run, standalone_cluster)
    names = {p.name for p in files}
    assert {"config.yaml", "summary.json", "meta.yaml"} <= names, sorted(names)[:50]  # MLflow's store is there
    assert any(n.startswith("events.out.tfevents") for n in names) and "stderr" in names
    found = {(str(p), what) for p in files for what, secret in secrets.items() if secret.encode() in p.read_bytes()}
    assert found == set()


def test_a_client_without_the_clusters_secret_is_refused(standalone_cluster, tmp_path):
    """A SparkSession with Spark's default settings (no spark.authenticate) is refused at its first
    message: the Master answers "Unknown challenge message" and registers no application."""
    before = len(standalone_cluster.status()["completedapps"]) + len(standalone_cluster.status()["activeapps"])
    plain = tmp_path / "conf"
    plain.mkdir()  # no spark-defaults.conf: Spark's defaults, and its default log4j2 (whole stack traces)
    log = tmp_path / "client.log"
    code = ("from pyspark.sql import SparkSession\n"
            f"SparkSession.builder.master({standalone_cluster.master_url!r})"
            ".config('spark.driver.host', '127.0.0.1').config('spark.ui.enabled', 'false').getOrCreate()\n")
    with open(log, "wb") as out:
        client = subprocess.Popen([sys.executable, "-c", code], env=standalone_cluster.env(plain), stdout=out,
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + REFUSAL_TIMEOUT_S
    try:
        while "Unknown challenge message" not in log.read_text(errors="replace") and time.monotonic() < deadline:
            assert client.poll() is None or "Unknown challenge" in log.read_text(errors="replace"), log.read_text()
            time.sleep(0.5)
    finally:
        os.killpg(client.pid, signal.SIGKILL)  # the client and its JVM (its own process group)
        client.wait(timeout=10)
    text = log.read_text(errors="replace")
    assert "Failed to connect to master" in text and "Unknown challenge message" in text, text[-3000:]
    status = standalone_cluster.status()
    assert len(status["completedapps"]) + len(status["activeapps"]) == before  # nothing registered
    assert standalone_cluster.secret not in text
