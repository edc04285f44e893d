"""A real Spark standalone cluster on 127.0.0.1: one Master and two Workers (1 core, 2g each), run
with dlpipe's secure profile (``scripts/secure-conf.sh``: ``spark.authenticate`` with a generated
secret, RPC and I/O encryption, UI ACLs), as a shared production cluster should be.

The pip pyspark has no ``sbin/start-*.sh``, so the daemons are started with ``bin/spark-class`` (which
``exec``s the JVM, so the PID we hold is the JVM's). Each runs in its own session (process group),
which also holds the executors a Worker forks and their Python workers; teardown stops each daemon
by PID (SIGTERM, wait, SIGKILL), then SIGKILLs whatever is left in that process group.

:func:`start_cluster` starts and stops one such cluster: the session's ``standalone_cluster``, and any
test module that needs a cluster of its own (tests/cluster/test_elastic.py loses a Worker and adds one,
which the shared cluster's other tests must not see).
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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
    root: Path  # the cluster's folder: its conf, logs and each Worker's work and local dirs
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    lost: set[str] = field(default_factory=set)  # Workers killed on purpose (lose_worker): not a startup failure

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

    def submit_command(self, options: list[str], script: str, args: list[str]) -> list[str]:
        """``spark-submit --master spark://... --deploy-mode client`` of ``script`` with a loopback driver and
        two 1-core executors; ``options`` (a later ``--conf`` wins) and ``args`` after the defaults."""
        return [str(spark_home() / "bin" / "spark-submit"), "--master", self.master_url,
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

    def alive_workers(self) -> list[str]:
        """Our Workers whose process still runs (whether the Master counts them yet or not), oldest first."""
        return [n for n, p in self.processes.items() if n != "master" and n not in self.lost and p.poll() is None]

    def start_worker(self, cores: int = 1) -> str:
        """Start one more Worker (``cores`` cores, 2g) with its own work and local dirs; its name. It is
        not waited for: :meth:`wait_for_workers` does that, when a test needs it registered."""
        number = len(self.work_dirs) + 1
        name, work_dir, local_dir = f"worker{number}", self.root / f"worker{number}", self.root / f"local{number}"
        local_dir.mkdir()
        self.work_dirs.append(work_dir)
        env = {**cluster_env(self.conf_dir), "SPARK_LOCAL_DIRS": str(local_dir)}
        self.processes[name] = _start_daemon(
            name, ["org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1", "--cores", str(cores),
                   "--memory", "2g", "--webui-port", str(free_port()), "--work-dir", str(work_dir), self.master_url],
            self.log_dir, env)
        return name

    def lose_worker(self, name: str) -> list[int]:
        """Lose Worker ``name`` as a node goes away: SIGKILL, without warning, its process group (the
        Worker JVM and the executors it forked) and every group one of its descendants leads (PySpark's
        daemon makes its own, which holds its Python workers and the ranks they start); then any
        descendant still left by PID. Only processes we started (the Worker and what it forked); the
        process groups killed."""
        proc = self.processes[name]
        if proc.poll() is not None:
            raise AssertionError(f"{name} is not running (exit code {proc.returncode}): it cannot be lost")
        descendants = _descendants(proc.pid)  # before any dies: an orphan's parent is no longer the Worker
        ours = {proc.pid, *descendants}
        groups = [proc.pid] + sorted({g for g in descendants.values() if g in ours} - {proc.pid})
        strays = [pid for pid, group in descendants.items() if group not in groups]  # in a group not ours
        self.lost.add(name)
        for pid in strays:
            _kill(pid, os.kill)
        for group in groups:
            _kill(group, os.killpg)
        proc.wait(timeout=STOP_TIMEOUT_S)
        return groups

    def wait_for_workers(self, alive: int, timeout_s: float = REGISTER_TIMEOUT_S) -> None:
        """Wait until the Master counts at least ``alive`` Workers ALIVE; fail at once when one of ours
        (not lost on purpose) exits, and after ``timeout_s`` with the Master's view and the daemons' logs."""
        deadline = time.monotonic() + timeout_s
        last = "the master's web UI did not answer"
        while time.monotonic() < deadline:
            dead = [n for n, p in self.processes.items() if n not in self.lost and p.poll() is not None]
            if dead:
                raise RuntimeError(f"{', '.join(dead)} exited unexpectedly "
                                   f"(codes {[self.processes[n].returncode for n in dead]})\n{self.logs()}")
            try:
                workers = [w for w in self.status().get("workers", []) if w.get("state") == "ALIVE"]
                last = f"{len(workers)} of {alive} workers ALIVE"
                if len(workers) >= alive:
                    return
            except OSError as e:
                last = f"the master's web UI did not answer: {e}"
            time.sleep(0.5)
        raise RuntimeError(f"standalone cluster: not {alive} workers after {timeout_s:.0f} s: {last}\n{self.logs()}")


def _kill(target: int, how: Callable[[int, int], None]) -> None:
    """SIGKILL a process (``os.kill``) or a process group (``os.killpg``) unless it is gone already."""
    try:
        how(target, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # already gone
        pass


def _descendants(pid: int) -> dict[int, int]:
    """Every process under ``pid`` (children, their children, ...), each with its process group, from /proc."""
    parents: dict[int, tuple[int, int]] = {}  # pid -> (parent, group)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:  # it ended meanwhile
            continue
        parents[int(stat.parent.name)] = (int(fields[1]), int(fields[2]))
    found: dict[int, int] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, group) in parents.items():
            if ppid == parent and child not in found:
                found[child] = group
                frontier.append(child)
    return found


def _start_daemon(name: str, args: list[str], log_dir: Path, env: dict[str, str]) -> subprocess.Popen:
    log = open(log_dir / f"{name}.log", "wb")
    try:
        return subprocess.Popen([str(spark_home() / "bin" / "spark-class"), *args], env=env, cwd=log_dir,
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    finally:
        log.close()  # the child holds its own copy


@contextmanager
def start_cluster(root: Path, workers: int = 2) -> Iterator[StandaloneCluster]:
    """A Master and ``workers`` 1-core, 2g Workers on 127.0.0.1 under the secure profile, in ``root``,
    up and registered; stopped (Workers first, they end their executors, then the Master) on exit."""
    if not os.access(spark_home() / "bin" / "spark-class", os.X_OK):
        pytest.fail(f"{spark_home()}/bin/spark-class is missing: the pyspark install is incomplete")
    log_dir = root / "logs"
    log_dir.mkdir()
    port, webui = free_port(), free_port()
    cluster = StandaloneCluster(master_url=f"spark://127.0.0.1:{port}", webui_url=f"http://127.0.0.1:{webui}",
                                log_dir=log_dir, work_dirs=[], conf_dir=secure_conf(root / "conf"), root=root)
    try:
        cluster.processes["master"] = _start_daemon(
            "master", ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                       "--webui-port", str(webui)], log_dir, cluster_env(cluster.conf_dir))
        for _ in range(workers):
            cluster.start_worker()
        cluster.wait_for_workers(alive=workers, timeout_s=REGISTER_TIMEOUT_S)
        yield cluster
    finally:
        # Workers first (they end their executors), then the master.
        for name in sorted(cluster.processes, key=lambda n: n == "master"):
            stop_process(cluster.processes[name])
        _remove_executor_files(cluster.work_dirs)


@pytest.fixture(scope="session")
def standalone_cluster(tmp_path_factory) -> Iterator[StandaloneCluster]:
    """A Master and two 1-core, 2g Workers on 127.0.0.1 under the secure profile, shared by the session's
    tests; yields the cluster (``.master_url``: spark://..., ``.conf_dir``: the SPARK_CONF_DIR a job needs
    to be let in). A test that loses or adds Workers uses ``own_cluster`` instead."""
    with start_cluster(tmp_path_factory.mktemp("standalone")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def own_cluster(tmp_path_factory) -> Iterator[StandaloneCluster]:
    """A cluster of the requesting test module's own (one per module, stopped after it), like
    ``standalone_cluster``: for tests that lose and add Workers, which the shared cluster's tests must
    not see. A fixture rather than an import: under --import-mode=importlib no test imports a conftest."""
    with start_cluster(tmp_path_factory.mktemp("own-cluster")) as cluster:
        yield cluster


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
        cmd = standalone_cluster.submit_command(options, script, args)
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
