"""Task side: runs inside one barrier task and owns exactly one rank process.

The rank lives in its own process so a native crash or ``hvd.shutdown()`` cannot poison Spark's
reused Python worker. The task forwards the rank's output to the driver line by line, sends
heartbeats, and turns a non-zero exit into a task failure carrying the rank's log tail.
"""
from __future__ import annotations

import collections
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from typing import Any, Iterator

from pipelines.device import TASK_GPUS_ENV, gpu_environment
from pipelines.launcher import protocol
from pipelines.launcher.protocol import TaskSpec

LOG_TAIL_LINES = 40
_PR_SET_PDEATHSIG = 1


class RankFailed(RuntimeError):
    """The rank process exited non-zero; the message names the rank and holds its log tail."""


def run_barrier_task(spec: TaskSpec, partition: int, host: str, threads: int,
                     gpus: tuple[str, ...] = ()) -> Iterator[str]:
    """Register with the driver, start the assigned rank, stream its output, return its result.

    ``gpus``: the GPU addresses Spark gave this task (``TaskContext.resources()["gpu"]``), the only
    ones its rank will see. Yields rank 0's result as one JSON string (other ranks yield nothing).
    """
    sock = socket.create_connection((spec.coordinator_host, spec.coordinator_port),
                                    timeout=spec.start_timeout_s)
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock:
            protocol.send(sock, {"partition": partition, **message})

    reader = sock.makefile("r")
    challenge = json.loads(reader.readline() or "{}").get("challenge")
    if not challenge:
        raise RuntimeError(f"task {partition}: the coordinator at {spec.coordinator_host}:{spec.coordinator_port} "
                           f"sent no challenge: is it a dlpipe launch?")
    send({"type": "auth", "answer": protocol.answer(spec.secret, challenge)})
    send({"type": "register", "host": host, "pid": os.getpid()})
    line = reader.readline()  # the assignment arrives once every task has registered
    if not line:
        raise RuntimeError(f"task {partition}: the driver closed the connection before assigning a rank")
    assignment = json.loads(line)
    if "rank" not in assignment:
        raise RuntimeError(f"task {partition}: the driver refused it: {assignment.get('reason')}")
    sock.settimeout(None)
    rank = assignment["rank"]
    env = rank_environment(spec, assignment, threads, gpus)
    with tempfile.TemporaryDirectory(prefix=f"dlpipe-rank{rank}-") as tmp:
        spec_path = os.path.join(tmp, "spec.json")
        with open(spec_path, "w") as f:
            json.dump({"entry": spec.entry, "payload": spec.payload}, f)
        proc = subprocess.Popen(
            [sys.executable, "-u", "-m", "pipelines.launcher", spec_path],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
            preexec_fn=_die_with_parent,
        )
        threading.Thread(target=_watch_driver, args=(reader, proc), daemon=True).start()
        stop_beats = threading.Event()
        threading.Thread(target=_heartbeat, args=(send, rank, stop_beats), daemon=True).start()
        tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
        result = None
        try:
            assert proc.stdout is not None
            for raw in proc.stdout:
                text = raw.rstrip("\n")
                event = protocol.decode_event(text)
                if event is None:
                    tail.append(text)
                    send({"type": "log", "rank": rank, "line": text})
                elif event.get("kind") == protocol.RESULT_EVENT:
                    result = event.get("result")
                else:
                    send({"type": "event", "rank": rank, "event": event})
            code = proc.wait()
        finally:
            stop_beats.set()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        send({"type": "exit", "rank": rank, "code": code})
        sock.close()
    if code != 0:
        raise RankFailed(f"rank {rank} (barrier task {partition} on {host}) {describe_exit(code)}; "
                         f"last lines of its log:\n" + "\n".join(tail))
    if rank == 0:
        yield json.dumps(result)


def rank_environment(spec: TaskSpec, a: dict[str, Any], threads: int, gpus: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment of one rank process: its place in the job, its GPUs (Spark's addresses in
    ``CUDA_VISIBLE_DEVICES``, so it sees only them; without any, what the worker sees), then what
    its rendezvous needs (Horovod's Gloo variables as horovodrun sets them, or the driver's
    torch.distributed store)."""
    env = dict(os.environ)
    env.pop(TASK_GPUS_ENV, None)
    env.update(gpu_environment(gpus))
    # The rank must import exactly what this Python worker imports (incl. --py-files zips).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    env.update({
        "RANK": str(a["rank"]),
        "WORLD_SIZE": str(a["size"]),
        "LOCAL_RANK": str(a["local_rank"]),
        "LOCAL_WORLD_SIZE": str(a["local_size"]),
        "DLPIPE_HOSTNAME": a["hostname"],
        "DLPIPE_STALL_TIMEOUT_S": str(spec.failure_timeout_s),
        "DLPIPE_RANK_THREADS": str(threads),
        "DLPIPE_ATTEMPT": str(a.get("attempt", 0)),
        "OMP_NUM_THREADS": str(threads),
        "PYTHONUNBUFFERED": "1",
    })
    if a.get("rendezvous", "horovod") == "torch":
        env.update({
            "DLPIPE_STORE_ADDR": a["rendezvous_addr"],
            "DLPIPE_STORE_PORT": str(a["rendezvous_port"]),
            "GLOO_SOCKET_IFNAME": a["gloo_iface"],
        })
    else:
        env.update({
            "HOROVOD_GLOO_RENDEZVOUS_ADDR": a["rendezvous_addr"],
            "HOROVOD_GLOO_RENDEZVOUS_PORT": str(a["rendezvous_port"]),
            "HOROVOD_CONTROLLER": "gloo",
            "HOROVOD_CPU_OPERATIONS": "gloo",
            "HOROVOD_GLOO_IFACE": a["gloo_iface"],
            "HOROVOD_HOSTNAME": a["hostname"],
            "HOROVOD_RANK": str(a["rank"]),
            "HOROVOD_SIZE": str(a["size"]),
            "HOROVOD_LOCAL_RANK": str(a["local_rank"]),
            "HOROVOD_LOCAL_SIZE": str(a["local_size"]),
            "HOROVOD_CROSS_RANK": str(a["cross_rank"]),
            "HOROVOD_CROSS_SIZE": str(a["cross_size"]),
            # A collective whose peer died must end, not wait forever.
            "HOROVOD_GLOO_TIMEOUT_SECONDS": str(int(spec.failure_timeout_s)),
            "HOROVOD_STALL_CHECK_TIME_SECONDS": str(max(5, int(spec.failure_timeout_s) // 2)),
            "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": str(int(spec.failure_timeout_s)),
        })
    env.update(spec.extra_env)
    return env


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


def _watch_driver(reader: Any, proc: subprocess.Popen) -> None:
    """Kill the rank when the driver says abort or its connection drops."""
    try:
        for line in reader:
            if json.loads(line).get("type") == "abort":
                break
    except (OSError, ValueError):
        pass
    if proc.poll() is None:
        proc.kill()


def _heartbeat(send: Any, rank: int, stop: threading.Event) -> None:
    while not stop.wait(protocol.HEARTBEAT_INTERVAL_S):
        try:
            send({"type": "heartbeat", "rank": rank})
        except OSError:
            return
