"""Task side: runs inside one barrier task and owns exactly one rank process.

The rank lives in its own process so a native crash or a library's shutdown cannot poison Spark's
reused Python worker. The task forwards the rank's output to the driver line by line (and into
the rank's log file on this host, kept after the task ends), sends heartbeats, and turns a
non-zero exit into a task failure carrying the rank's log tail.
"""
from __future__ import annotations

import collections
import ctypes
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from pipelines.device import gpu_environment
from pipelines.launcher import protocol
from pipelines.launcher.protocol import PEER_LOST, Assignment, RankSpec, TaskSpec

# Variables through which Spark hands its secrets to executors and Python workers.
SPARK_SECRET_VARIABLES = frozenset({"_SPARK_AUTH_SECRET", "PYSPARK_GATEWAY_SECRET", "PYTHON_WORKER_FACTORY_SECRET"})
# What a rendezvous may set in a rank's environment (Horovod's Gloo join, torch's Gloo/NCCL interface).
RENDEZVOUS_PREFIXES = ("HOROVOD_",)
RENDEZVOUS_VARIABLES = frozenset({"GLOO_SOCKET_IFNAME", "NCCL_SOCKET_IFNAME", "MASTER_ADDR", "MASTER_PORT"})
PEER_GRACE_S = 2.0  # how long such a rank's task waits before failing, so the rank that caused it fails first
LOG_DIR = "dlpipe-ranks"  # under the host's temp folder: every rank's log file
_PR_SET_PDEATHSIG = 1


class RankFailed(RuntimeError):
    """The rank process exited non-zero; the message names the rank, its cause (or, when it died
    without saying, its log's last lines) and its log file."""


def run_barrier_task(spec: TaskSpec, partition: int, host: str, threads: int,
                     gpus: tuple[str, ...] = ()) -> Iterator[str]:
    """Register with the driver, start the assigned rank, stream its output, return its result.

    ``gpus``: the GPU addresses Spark gave this task (``TaskContext.resources()["gpu"]``), the only
    ones its rank will see. Yields rank 0's result as one JSON string (other ranks yield nothing).
    """
    with _DriverLink(spec, partition) as link:
        assignment = link.register(partition, host)
        rank = assignment.slot.rank
        log_path = rank_log_path(spec.launch_id, rank)
        rank_spec = RankSpec(spec.entry, spec.payload, assignment.slot, threads, assignment.attempt, list(gpus),
                             assignment.rendezvous_addr, assignment.rendezvous_port, spec.failure_timeout_s,
                             log_path, spec.pin_cores)
        run = _run_rank(link, rank_spec, assignment, partition)
    if run.code != 0:
        if PEER_LOST.search(run.cause):
            time.sleep(PEER_GRACE_S)  # Spark reports the first task to fail: let the root cause's be first
        raise run.failure(f"rank {rank} (barrier task {partition} on {host})", f"{host}:{log_path}")
    if rank == 0:
        import json

        yield json.dumps(run.result)


class _DriverLink:
    """This task's authenticated connection to the driver's coordinator; closed on every path (a context manager).

    Its reader belongs to the thread that watches the driver once :meth:`watch` started it: closing
    it here would wait for that thread's blocked read, so the socket's real close then waits for it.
    """

    def __init__(self, spec: TaskSpec, partition: int) -> None:
        self.sock = socket.create_connection((spec.coordinator_host, spec.coordinator_port),
                                             timeout=spec.start_timeout_s)
        self.reader = self.sock.makefile("rb")
        self._watched = False
        try:
            self.channel = self._authenticate(spec, partition)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> _DriverLink:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _authenticate(self, spec: TaskSpec, partition: int) -> protocol.Channel:
        challenge = protocol.decode(self.reader.readline(protocol.MAX_LINE_BYTES + 1))
        if not isinstance(challenge, protocol.Challenge):
            raise RuntimeError(f"task {partition}: the coordinator at {spec.coordinator_host}:"
                               f"{spec.coordinator_port} sent no challenge: is it a dlpipe launch?")
        protocol.send(self.sock, protocol.Auth(protocol.answer(spec.secret, challenge.challenge)))
        return protocol.Channel(spec.secret, challenge.challenge, "task")

    def send(self, message: protocol.Message) -> None:
        """Send one sealed message to the driver."""
        self.channel.send(self.sock, message)

    def register(self, partition: int, host: str) -> Assignment:
        """Register this task; the rank the driver assigns it once every task has registered."""
        self.send(protocol.Register(partition, host, os.getpid()))
        reply = self.channel.open(self.reader.readline(protocol.MAX_LINE_BYTES + 1))
        if isinstance(reply, protocol.Refused):
            raise RuntimeError(f"task {partition}: the driver refused it: {reply.reason}")
        if not isinstance(reply, Assignment):
            raise RuntimeError(f"task {partition}: the driver closed the connection before assigning a rank "
                               "(the launch failed on the driver: see its error), or sent something not sealed "
                               "under this connection's key")
        self.sock.settimeout(None)
        return reply

    def watch(self, proc: subprocess.Popen[str]) -> None:
        """Kill the rank when the driver says abort or its connection drops (a thread of its own)."""
        threading.Thread(target=_watch_driver, args=(self.reader, self.channel, proc), daemon=True).start()
        self._watched = True

    def close(self) -> None:
        """Close the connection (for real once nothing reads it any more)."""
        if not self._watched:
            self.reader.close()
        self.sock.close()


@dataclass
class _RankRun:
    """What a task saw of its rank process: its exit code, its result, its own cause, its last lines."""

    code: int = -1
    result: Any = None  # rank 0's result event's
    cause: str = ""  # the rank's own one-line error (its ``failed`` event)
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=protocol.LOG_TAIL_LINES))

    def failure(self, where: str, log: str) -> RankFailed:
        """The task's error for a rank that exited non-zero: its cause, else its exit and last lines."""
        if self.cause:
            return RankFailed(f"{where} failed: {self.cause}; its log: {log}")
        return RankFailed(f"{where} {describe_exit(self.code)}; its log: {log}; last lines:\n" + "\n".join(self.tail))


def _run_rank(link: _DriverLink, rank_spec: RankSpec, assignment: Assignment, partition: int) -> _RankRun:
    """Start the rank process, relay its output until it exits (killed if it has not), tell the driver its exit."""
    rank = rank_spec.slot.rank
    run = _RankRun()
    with tempfile.TemporaryDirectory(prefix=f"dlpipe-rank{rank}-") as tmp, open(rank_spec.log_path, "a") as log:
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            f.write(rank_spec.to_json())
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "pipelines.launcher", spec_path],
            env=rank_environment(assignment, rank_spec.threads, tuple(rank_spec.gpus)), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, preexec_fn=_die_with_parent,
        )
        link.watch(proc)
        stop_beats = threading.Event()
        threading.Thread(target=_heartbeat, args=(link.send, partition, rank, stop_beats), daemon=True).start()
        try:
            _relay(proc, log, link, partition, rank, run)
            run.code = proc.wait()
        finally:
            stop_beats.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        link.send(protocol.Exit(partition, rank, run.code))
    return run


def _relay(proc: subprocess.Popen[str], log: TextIO, link: _DriverLink, partition: int, rank: int,
           run: _RankRun) -> None:
    """The rank's output, line by line: log lines to its log file and the driver, events to the driver,
    its result and its own cause into ``run``."""
    assert proc.stdout is not None
    for raw in proc.stdout:
        text = raw.rstrip("\n")
        event = protocol.parse_event_line(text)
        if event is None:
            run.tail.append(text)
            log.write(raw)
            log.flush()
            link.send(protocol.LogLine(partition, rank, text))
        elif event.get("kind") == "result":
            run.result = event.get("result")
        else:
            if event.get("kind") == "failed":
                run.cause = str(event.get("error", ""))
            link.send(protocol.EventLine(partition, rank, event))


def rank_log_path(launch_id: str, rank: int) -> str:
    """This host's log file of ``rank`` in launch ``launch_id`` (kept after the task ends)."""
    folder = os.path.join(tempfile.gettempdir(), LOG_DIR)
    os.makedirs(folder, exist_ok=True)
    return os.path.join(folder, f"{launch_id}-rank{rank}.log")


def rank_environment(a: Assignment, threads: int, gpus: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of one rank process: what libraries read, nothing dlpipe's settings decide.

    Its GPUs (Spark's addresses in ``CUDA_VISIBLE_DEVICES``, so it sees only them; without any,
    what the worker sees), the variables its rendezvous's library reads, the thread count for
    OpenMP, and the Python path of this worker (the rank imports exactly what it imports).
    """
    # dlpipe's own variables (the driver JVM's log file in local mode, the RL state key) are the
    # driver's: a rank's settings travel in its job. Spark's secrets (the cluster's RPC secret a
    # Worker hands its executors, PySpark's gateway and worker tokens) are the executor's: a rank
    # talks to no Spark process, so it gets none of them.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLPIPE_") and k not in SPARK_SECRET_VARIABLES}
    env.update(gpu_environment(gpus))
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update({
        "RANK": str(a.slot.rank),
        "WORLD_SIZE": str(a.slot.size),
        "LOCAL_RANK": str(a.slot.local_rank),
        "LOCAL_WORLD_SIZE": str(a.slot.local_size),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    })
    refused = sorted(k for k in a.env if not rendezvous_variable(k))
    if refused:
        raise RuntimeError(f"the driver's assignment sets {', '.join(refused)}: a rank's environment takes only "
                           f"its rendezvous's variables ({', '.join(RENDEZVOUS_PREFIXES)}*, "
                           f"{', '.join(sorted(RENDEZVOUS_VARIABLES))})")
    env.update(a.env)
    return env


def rendezvous_variable(name: str) -> bool:
    """Whether ``name`` is a variable a rendezvous may set in a rank's environment (an allow-list: a
    library's join settings, never the loader's or the interpreter's, e.g. ``LD_PRELOAD``)."""
    return name in RENDEZVOUS_VARIABLES or name.startswith(RENDEZVOUS_PREFIXES)


def describe_exit(code: int) -> str:
    """'exited with code 1' or 'was killed by SIGKILL'."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def _die_with_parent() -> None:
    """In the child: get SIGKILL when the Python worker dies (Spark killed the task)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the driver's abort message still ends the rank


def _watch_driver(reader: Any, channel: protocol.Channel, proc: subprocess.Popen[str]) -> None:
    """Kill the rank when the driver says abort (sealed: nobody else can) or its connection drops."""
    try:
        for line in reader:
            if isinstance(channel.open(line), protocol.Abort):
                break
    except (OSError, ValueError):
        pass
    if proc.poll() is None:
        proc.kill()


def _heartbeat(send: Any, partition: int, rank: int, stop: threading.Event) -> None:
    while not stop.wait(protocol.HEARTBEAT_INTERVAL_S):
        try:
            send(protocol.Heartbeat(partition, rank))
        except OSError:
            return
