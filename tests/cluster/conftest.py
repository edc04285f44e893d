"""A real Spark standalone cluster on 127.0.0.1: one Master and two Workers (1 core, 2g each), run
with dlpipe's secure profile (``scripts/secure-conf.sh``: ``spark.authenticate`` with a generated
secret, RPC and I/O encryption, UI ACLs), as a shared production cluster should be.

The pip pyspark has no ``sbin/start-*.sh``, so the daemons are started with ``bin/spark-class`` (which
``exec``s the JVM, so the PID we hold is the JVM's). Each runs in its own session (process group),
which also holds the executors a Worker forks and their Python workers; teardown stops each daemon
by PID (SIGTERM, wait, SIGKILL), then SIGKILLs whatever is left in that process group.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTER_TIMEOUT_S = 90
STOP_TIMEOUT_S = 15
LOG_TAIL_LINES = 40


def spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def secure_conf(folder: Path) -> Path:
    """``folder`` written by ``scripts/secure-conf.sh`` (the secure profile and a fresh secret)."""
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "secure-conf.sh"), str(folder)], cwd=REPO_ROOT, check=True,
                   capture_output=True, timeout=30)
    return folder


def cluster_env(conf_dir: Path) -> dict[str, str]:
    """The environment of the daemons and of spark-submit: loopback, the Spark conf folder, the venv's Python."""
    env = dict(os.environ)
    env.update({
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",
        "SPARK_CONF_DIR": str(conf_dir),
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_DAEMON_MEMORY": "512m",
    })
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no log: {e})"


def stop_process(proc: subprocess.Popen, timeout_s: float = STOP_TIMEOUT_S) -> None:
    """Stop a process we started (SIGTERM, wait, SIGKILL), then anything left in its process group."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)
    try:  # its own group (start_new_session): executors and Python workers it forked
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class StandaloneCluster:
    master_url: str
    webui_url: str
    log_dir: Path
    work_dirs: list[Path]
    conf_dir: Path  # SPARK_CONF_DIR of the daemons and of every job submitted to them
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def env(self, conf_dir: Path | None = None) -> dict[str, str]:
        """The environment of a client of this cluster (``conf_dir``: another Spark conf than the cluster's)."""
        return cluster_env(conf_dir or self.conf_dir)

    @property
    def secret(self) -> str:
        """The cluster's ``spark.authenticate.secret`` (tests look for it in every output)."""
        for line in (self.conf_dir / "spark-defaults.conf").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "spark.authenticate.secret":
                return value.strip()
        raise AssertionError(f"{self.conf_dir}/spark-defaults.conf holds no spark.authenticate.secret")

    def status(self) -> dict:
        with urllib.request.urlopen(f"{self.webui_url}/json/", timeout=5) as r:
            return json.load(r)

    def logs(self) -> str:
        return "\n".join(f"--- {name} ({self.log_dir / (name + '.log')}), last lines:\n"
                         f"{log_tail(self.log_dir / (name + '.log'))}" for name in self.processes)


def _start_daemon(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "wb")
    try:
        return subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], env=env, cwd=log_dir,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        log.close()  # the child holds its own copy


def _wait_for_workers(cluster: StandaloneCluster, expected: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last = "the master's web UI did not answer"
    while time.monotonic() < deadline:
        dead = [n for n, p in cluster.processes.items() if p.poll() is not None]
        if dead:
            raise RuntimeError(f"{', '.join(dead)} exited before the cluster was up "
                               f"(codes {[cluster.processes[n].returncode for n in dead]})\n{cluster.logs()}")
        try:
            status = cluster.status()
            alive = [w for w in status.get("workers", []) if w.get("state") == "ALIVE"]
            last = f"{len(alive)} of {expected} workers ALIVE"
            if len(alive) >= expected:
                return
        except OSError as e:
            last = f"the master's web UI did not answer: {e}"
        time.sleep(1)
    raise RuntimeError(f"standalone cluster not up after {timeout_s:.0f} s: {last}\n{cluster.logs()}")


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory) -> StandaloneCluster:
    """A Master and two 1-core, 2g Workers on 127.0.0.1 under the secure profile; yields the cluster
    (``.master_url``: spark://..., ``.conf_dir``: the SPARK_CONF_DIR a job needs to be let in)."""
    if not os.access(spark_home() / "bin" / "spark-class", os.X_OK):
        pytest.fail(f"{spark_home()}/bin/spark-class is missing: the pyspark install is incomplete")
    root = tmp_path_factory.mktemp("standalone")
    log_dir = root / "logs"
    log_dir.mkdir()
    port, webui = free_port(), free_port()
    cluster = StandaloneCluster(master_url=f"spark://127.0.0.1:{port}", webui_url=f"http://127.0.0.1:{webui}",
                                log_dir=log_dir, work_dirs=[root / f"worker{i}" for i in (1, 2)],
                                conf_dir=secure_conf(root / "conf"))
    env = cluster_env(cluster.conf_dir)
    try:
        cluster.processes["master"] = _start_daemon(
            "master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                       "--webui-port", str(webui)], log_dir, env)
        for i, work_dir in enumerate(cluster.work_dirs, start=1):
            (root / f"local{i}").mkdir()
            worker_env = {**env, "SPARK_LOCAL_DIRS": str(root / f"local{i}")}
            cluster.processes[f"worker{i}"] = _start_daemon(
                f"worker{i}", ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", "1",
                               "--memory", "2g", "--webui-port", str(free_port()), "--work-dir", str(work_dir),
                               cluster.master_url], log_dir, worker_env)
        _wait_for_workers(cluster, expected=2, timeout_s=REGISTER_TIMEOUT_S)
        yield cluster
    finally:
        # Workers first (they end their executors), then the master.
        for name in sorted(cluster.processes, key=lambda n: n == "master"):
            stop_process(cluster.processes[name])
        _remove_executor_files(cluster.work_dirs)


def _remove_executor_files(work_dirs: list[Path]) -> None:
    """Keep the executors' stdout/stderr, drop what they fetched (an unpacked env.tar.gz is ~1.5 GB each)."""
    for work_dir in work_dirs:
        for entry in work_dir.glob("app-*/*/*"):
            if entry.name in ("stdout", "stderr"):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)


@dataclass
class Submitted:
    returncode: int
    log: Path
    seconds: float

    def tail(self, lines: int = 60) -> str:
        return log_tail(self.log, lines)


@pytest.fixture(scope="session")
def spark_submit(standalone_cluster, tmp_path_factory):
    """``spark_submit(name, [options...], script, [args...], timeout_s=...)`` against the cluster.

    Runs ``$SPARK_HOME/bin/spark-submit --master spark://...`` (client mode, loopback driver) from the
    repository root; output goes to a log file. On timeout the whole spark-submit tree is killed.
    """
    log_dir = tmp_path_factory.mktemp("submit-logs")

    def submit(name: str, options: list[str], script: str, args: list[str], timeout_s: float = 240,
               env: dict[str, str] | None = None) -> Submitted:
        cmd = [str(spark_home() / "bin" / "spark-submit"), "--master", standalone_cluster.master_url,
               "--deploy-mode", "client",
               "--conf", "spark.driver.host=127.0.0.1",
               "--conf", "spark.executor.cores=1",
               "--conf", "spark.task.cpus=1",
               "--conf", "spark.executor.memory=1g",
               "--conf", "spark.driver.memory=1g",
               "--conf", "spark.cores.max=2",
               "--conf", "spark.ui.enabled=false",
               # Start scheduling only once both executors registered: a job whose first stage is the
               # barrier stage (train.py) otherwise races executors still unpacking --archives.
               "--conf", "spark.scheduler.minRegisteredResourcesRatio=1.0",
               "--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=120s",
               *options, script, *args]
        log = log_dir / f"{name}.log"
        started = time.monotonic()
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env={**cluster_env(standalone_cluster.conf_dir), **(env or {})},
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            stop_process(proc, timeout_s=5)
            pytest.fail(f"spark-submit {name} did not finish in {timeout_s:.0f} s; log {log}:\n{log_tail(log, 60)}\n"
                        f"{standalone_cluster.logs()}")
        finally:
            stop_process(proc, timeout_s=5)
        return Submitted(code, log, time.monotonic() - started)

    return submit


@pytest.fixture(scope="session")
def dlpipe_zip() -> Path:
    """``dist/dlpipe.zip`` built fresh from the working tree (``scripts/package.sh zip``, about a second)."""
    subprocess.run(["bash", str(REPO_ROOT / "scripts" / "package.sh"), "zip"], cwd=REPO_ROOT, check=True,
                   env={**os.environ, "VENV": str(Path(sys.prefix))})
    return REPO_ROOT / "dist" / "dlpipe.zip"
