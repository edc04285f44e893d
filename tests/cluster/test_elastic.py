"""Elastic training (issue 32, ``train.num_workers=MIN..MAX``) on a real standalone cluster of its own
(the ``own_cluster`` fixture of tests/cluster/conftest.py: the session's shared cluster must not see
Workers come and go), run with spark-submit as an operator would, under the secure profile:

- a node lost mid-run: one Worker's whole process tree SIGKILLed without warning; the run goes on with
  1 rank from its last checkpoint without spending ``train.max_attempts=1``, grows back to 2 ranks at
  a checkpoint when a new Worker brings the task slot back, and finishes as a whole run would, each
  change one console line and no stack trace;
- a cluster below the elastic minimum: the run fails within a bounded time with one line that says so.

The local-mode tests (tests/spark/train/test_elastic.py) check every record is used once per epoch
across world sizes; these check what only a real cluster has: executors that die with their node and
task slots that return with a new one.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from testkit import REPO_ROOT, make_config

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CONFIG = "pipelines/configs/digits_cnn.yaml"
# Enough for the new Worker to rejoin before the end: a digits epoch takes ~0.3-0.5 s, and a Worker started
# after the loss took ~21 s to put its executor into the run (its JVM, then the executor's, both with the
# secure profile's authentication and encryption, next to a training rank on 2 cores), i.e. ~50 epochs.
EPOCHS = 100
ELASTIC = ["train.num_workers=1..2", f"train.epochs={EPOCHS}", "train.batch_size=16", "train.checkpoint_every_steps=5",
           "train.max_attempts=1", "train.failure_timeout_s=30", "train.start_timeout_s=90"]
CHECKPOINT_TIMEOUT_S = 150  # spark-submit to the epoch-2 checkpoint: executors start, ranks import torch, 2 epochs
LOSS_TIMEOUT_S = 60  # a lost executor to the relaunch on the rank left (Spark sees the executor go at once)
GROW_TIMEOUT_S = 90  # a new Worker to the launch that grows: Worker and executor JVMs start, next checkpoint
FINISH_TIMEOUT_S = 120  # the growth to the last epoch
BELOW_MINIMUM_TIMEOUT_S = 120
# A Java stack frame ("\tat org.apache.spark...(File.scala:12)") or a Python traceback: never on the console.
STACK_TRACE = re.compile(r"^\s+at [\w$.<>]+\(.*\)\s*$|Traceback \(most recent call last\)", re.MULTILINE)


@pytest.fixture(scope="module")
def digits_etl(spark, tmp_path_factory) -> Path:
    """A fresh workdir holding the real ETL output of the bundled digits, made in the session's local
    Spark (a few seconds; the cluster runs only the trainings)."""
    from pipelines.etl import job as etl

    workdir = tmp_path_factory.mktemp("elastic-workdir")
    etl.main(spark, make_config(workdir))
    return workdir


def _workers(cluster, alive: int) -> None:
    """Exactly ``alive`` of our Workers running and the Master counting them (the newest lost first,
    new ones started): each test starts from the cluster it needs, whatever ran before."""
    running = cluster.alive_workers()
    for name in running[alive:]:
        cluster.lose_worker(name)
    for _ in range(alive - len(running)):
        cluster.start_worker()
    cluster.wait_for_workers(alive=alive)
    deadline = time.monotonic() + 30  # a lost Worker's Master entry goes DEAD as soon as its connection drops
    while sum(w.get("state") == "ALIVE" for w in cluster.status()["workers"]) > alive:
        assert time.monotonic() < deadline, f"the Master still counts a lost Worker: {cluster.status()['workers']}"
        time.sleep(0.5)


def _train(cluster, dlpipe_zip: Path, log: Path, run_id: str, workdir: Path,
           overrides: list[str], options: tuple[str, ...] = ()) -> subprocess.Popen:
    """``spark-submit pipelines/__main__.py train`` against ``cluster`` in the background (client mode,
    loopback driver, 1-core executors on this venv's Python, the code from ``dlpipe.zip``), tracking
    off; its console (stdout and stderr) to ``log``, its driver's full Spark log (the stack traces the
    console leaves out) to ``spark.log`` beside it."""
    from pipelines.session import SPARK_LOG_ENV
    from pipelines.tracking import TRACKING_OFF

    cmd = cluster.submit_command(["--py-files", str(dlpipe_zip),
                                  "--conf", f"spark.pyspark.python={sys.executable}",
                                  "--conf", f"spark.pyspark.driver.python={sys.executable}", *options],
                                 "pipelines/__main__.py",
                                 ["train", "--config", CONFIG, "--run-id", run_id, f"workdir={workdir}",
                                  *TRACKING_OFF, *overrides])
    env = {**cluster.env(), SPARK_LOG_ENV: str(log.with_name("spark.log"))}
    with open(log, "wb") as out:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)


def _wait(what: str, done, proc: subprocess.Popen, log: Path, timeout_s: float, cluster) -> float:
    """Wait until ``done()`` (seconds waited); fail with the job's console and the daemons' logs when
    spark-submit exits first or ``timeout_s`` passes."""
    started = time.monotonic()
    while not done():
        if proc.poll() is not None:
            pytest.fail(f"spark-submit exited {proc.returncode} before {what}; its console {log}:\n"
                        f"{_tail(log)}\n{cluster.logs()}")
        if time.monotonic() - started > timeout_s:
            pytest.fail(f"not {what} within {timeout_s:.0f} s; console {log}:\n{_tail(log)}\n{cluster.logs()}")
        time.sleep(0.5)
    return time.monotonic() - started


def _checkpointed_epochs(run_dir: Path) -> int:
    """Whole epochs behind the newest checkpoint (``epoch-0002.pt`` and ``epoch-0002.step-000005.pt``: 2;
    older ones are pruned as newer ones land, so a look for one name can miss it); -1 before the first."""
    found = [int(m.group(1)) for p in (run_dir / "checkpoints").glob("epoch-*.pt")
             if (m := re.match(r"epoch-(\d+)", p.name))]
    return max(found, default=-1)


def _console(log: Path) -> str:
    return log.read_text(errors="replace")


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(_console(log).splitlines()[-lines:])


def _stop(proc: subprocess.Popen) -> None:
    """End a spark-submit we started, if it still runs: its process group (its own session), so the
    driver's Python and JVM go with it."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def test_a_lost_node_continues_on_one_rank_and_grows_back_when_a_worker_returns(
        own_cluster, dlpipe_zip, digits_etl, tmp_path):
    """Two 1-core Workers, train.num_workers=1..2: past the epoch-2 checkpoint one Worker is SIGKILLed
    with everything under it; the run says "node lost" once and goes on with 1 rank; a new Worker is
    started and the run says "growing to 2 ranks" once; it ends 0 with every epoch recorded, the
    world size over time in metrics.jsonl, and the accuracy of a whole run."""
    cluster, log = own_cluster, tmp_path / "train.log"
    _workers(cluster, alive=2)
    run_dir = digits_etl / "runs" / "elastic-cluster"
    timeline: dict[str, float] = {}
    started = time.monotonic()
    proc = _train(cluster, dlpipe_zip, log, "elastic-cluster", digits_etl, ELASTIC)
    try:
        _wait("a checkpoint after 2 epochs", lambda: _checkpointed_epochs(run_dir) >= 2,
              proc, log, CHECKPOINT_TIMEOUT_S, cluster)
        timeline[f"checkpoint after {_checkpointed_epochs(run_dir)} epochs"] = time.monotonic() - started
        victim = cluster.alive_workers()[-1]
        groups = cluster.lose_worker(victim)  # the Worker JVM, its executor, PySpark's daemon, the rank
        timeline[f"{victim} lost (process groups {groups})"] = time.monotonic() - started
        _wait("the run continued on 1 rank", lambda: "continuing on 1 rank(s)" in _console(log),
              proc, log, LOSS_TIMEOUT_S, cluster)
        timeline["continuing on 1 rank"] = time.monotonic() - started
        added = cluster.start_worker()
        _wait("the run grew back to 2 ranks", lambda: "growing to 2 ranks" in _console(log),
              proc, log, GROW_TIMEOUT_S, cluster)
        timeline[f"{added} started; growing to 2 ranks"] = time.monotonic() - started
        try:
            code = proc.wait(timeout=FINISH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"spark-submit did not finish within {FINISH_TIMEOUT_S} s of growing; console {log}:\n"
                        f"{_tail(log)}\n{cluster.logs()}")
        timeline["finished"] = time.monotonic() - started
    finally:
        _stop(proc)
    print("timeline (s since spark-submit): " + ", ".join(f"{k} {v:.0f}" for k, v in timeline.items()))
    console = _console(log)
    assert code == 0, f"spark-submit exited {code}; console {log}:\n{_tail(log)}"

    traces = [m.group(0) for m in STACK_TRACE.finditer(console)]
    assert not traces, f"stack traces on the console: {traces[:10]}; console {log}"
    history = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1)), history
    sizes = [h["world_size"] for h in history]
    assert sizes[:2] == [2, 2] and 1 in sizes and sizes[-1] == 2, sizes
    assert history[-1]["val_accuracy"] >= 0.9, history[-1]

    grown = [x for x in console.splitlines() if "growing to" in x]
    assert len(grown) == 1 and re.fullmatch(r"dlpipe train: task slots returned: growing to 2 ranks from epoch "
                                            r"\d+( step \d+)?", grown[0]), grown
    lost = [x for x in console.splitlines() if "continuing on" in x]
    assert len(lost) == 1, lost
    line = re.fullmatch(r"dlpipe train: (node lost|launch failed): continuing on 1 rank\(s\) from epoch \d+( step "
                        r"\d+)? \(cause: (.*); the ranks' logs hold the details\)", lost[0])
    assert line, lost[0]
    # Whichever Spark saw first (the Worker's, the executor's or a rank's connection gone), a cause that
    # names a lost executor is a lost node, and says so.
    assert line.group(1) == "node lost" or not re.search(r"executor \S+ (on \S+ )?was lost", line.group(3)), lost[0]


def test_a_cluster_below_the_elastic_minimum_fails_within_a_bounded_wait(
        own_cluster, dlpipe_zip, digits_etl, tmp_path):
    """One 1-core Worker left, train.num_workers=2..2: the run waits train.start_timeout_s=10 s for a
    second task slot, then exits non-zero with one line naming the minimum (no traceback)."""
    cluster, log = own_cluster, tmp_path / "train.log"
    _workers(cluster, alive=1)
    started = time.monotonic()
    # Spark itself waits for every executor the application asked for (spark.cores.max=2) before its
    # first job, up to maxRegisteredResourcesWaitingTime: 2 s, so the wait measured is dlpipe's.
    proc = _train(cluster, dlpipe_zip, log, "elastic-below-minimum", digits_etl,
                  ["train.num_workers=2..2", "train.start_timeout_s=10"],
                  ("--conf", "spark.scheduler.maxRegisteredResourcesWaitingTime=2s"))
    try:
        code = proc.wait(timeout=BELOW_MINIMUM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"spark-submit still running after {BELOW_MINIMUM_TIMEOUT_S} s; console {log}:\n"
                    f"{_tail(log)}")
    finally:
        _stop(proc)
    seconds = time.monotonic() - started
    console = _console(log)
    assert code != 0, f"spark-submit exited 0; console {log}:\n{_tail(log)}"
    assert re.search(r"runs [01] task\(s\) at once, below the elastic minimum of train.num_workers=2..2, and stayed "
                     r"so for 10 s", console), _tail(log)
    traces = [m.group(0) for m in STACK_TRACE.finditer(console)]
    assert not traces, f"stack traces on the console: {traces[:10]}; console {log}"
    assert seconds < BELOW_MINIMUM_TIMEOUT_S
    print(f"below the minimum: spark-submit exited {code} after {seconds:.0f} s")
