"""Driver side: one barrier stage of N tasks, each running one rank process (no mpirun, no SSH).

The driver runs the ranks' rendezvous (Horovod's own rendezvous server, or a torch.distributed
TCPStore) and a small coordinator socket. Tasks authenticate and register their host with the
coordinator; once all N have, the driver computes the host plan (Horovod's), starts the
rendezvous and hands each task its rank, sizes and the rendezvous address. Tasks then stream
their rank's log lines and events back, which the driver prints prefixed with the rank.

Every wait is bounded: registration (``start_timeout_s``), a failed or silent rank
(``failure_timeout_s``); on failure the Spark job group is cancelled and the error names the rank.
"""
from __future__ import annotations

import collections
import json
import logging
import queue
import re
import signal
import socket
import socketserver
import threading
import time
import uuid
from typing import Any, Callable

from pyspark import BarrierTaskContext
from pyspark.sql import SparkSession

from pipelines.launcher.protocol import (
    AUTH_TIMEOUT_S, MAX_LINE_BYTES, TaskSpec, is_answer, new_challenge, new_secret, send,
)

log = logging.getLogger("dlpipe.launcher")
EventHandler = Callable[[int, dict[str, Any]], None]


class LaunchError(RuntimeError):
    """The barrier stage failed: names the rank and the cause, and holds the rank's log tail."""


RENDEZVOUS = ("horovod", "torch")


def run_ranks(
    spark: SparkSession,
    entry: str,
    payload: dict[str, Any],
    *,
    num_workers: int,
    rendezvous: str = "horovod",
    start_timeout_s: float = 120.0,
    failure_timeout_s: float = 120.0,
    gloo_iface: str = "",
    extra_env: dict[str, str] | None = None,
    on_event: EventHandler | None = None,
    attempt: int = 0,
    description: str = "dlpipe horovod",
) -> Any:
    """Run ``entry(payload, ctx)`` on ``num_workers`` ranks; return rank 0's result.

    ``entry`` is ``"package.module:function"``, importable on the executors. ``rendezvous``: what
    the ranks join: ``"horovod"`` (Horovod's Gloo rendezvous server, run by the driver) or
    ``"torch"`` (a torch.distributed ``TCPStore`` on the driver: ``DLPIPE_STORE_ADDR``/``_PORT``). ``gloo_iface``:
    the network interface Gloo uses; empty means ``lo`` when all ranks share one host (local
    mode), otherwise it must be given. ``on_event(rank, event)`` sees every event a rank emits.
    """
    sc = spark.sparkContext
    driver_host = sc.getConf().get("spark.driver.host", socket.gethostname())
    if rendezvous not in RENDEZVOUS:
        raise ValueError(f"rendezvous={rendezvous!r} is not one of {', '.join(RENDEZVOUS)}")
    secret = new_secret()  # this launch's: reaches the tasks only inside the Spark closure
    coordinator = Coordinator(driver_host, num_workers, gloo_iface, attempt, secret, rendezvous, failure_timeout_s)
    spec = TaskSpec(
        entry=entry, payload=payload, num_workers=num_workers,
        coordinator_host=driver_host, coordinator_port=coordinator.port,
        start_timeout_s=start_timeout_s, failure_timeout_s=failure_timeout_s, secret=secret,
        gloo_iface=gloo_iface, extra_env=dict(extra_env or {}),
    )
    group = f"dlpipe-horovod-{uuid.uuid4().hex[:8]}"
    outcome: dict[str, Any] = {}

    def run_stage() -> None:
        sc.setJobGroup(group, description, interruptOnCancel=True)
        try:
            rdd = sc.parallelize(range(num_workers), num_workers).barrier()
            outcome["results"] = rdd.mapPartitions(lambda _: _barrier_task(spec)).collect()
        except BaseException as e:  # reported by the watching thread below
            outcome["error"] = e

    stage = threading.Thread(target=run_stage, name="dlpipe-barrier-stage", daemon=True)
    stage.start()
    try:
        failure = coordinator.watch(stage, start_timeout_s, failure_timeout_s, on_event)
        if failure is not None:
            sc.cancelJobGroup(group)
            stage.join(timeout=30)
            raise LaunchError(failure + coordinator.tails_text())
        if "error" in outcome:
            raise LaunchError(_explain_spark_error(outcome["error"], num_workers) + coordinator.tails_text()) \
                from outcome["error"]
        results = outcome["results"]
        return json.loads(results[0]) if results else None
    finally:
        coordinator.close()


def _barrier_task(spec: TaskSpec):
    """Runs inside each barrier task (on an executor)."""
    from pipelines.launcher.task import run_barrier_task

    ctx = BarrierTaskContext.get()
    partition = ctx.partitionId()
    host = ctx.getTaskInfos()[partition].address.rsplit(":", 1)[0]
    gpu = ctx.resources().get("gpu")  # present when the cluster schedules GPUs (spark.task.resource.gpu.amount)
    return run_barrier_task(spec, partition, host, threads=max(1, ctx.cpus()),
                            gpus=tuple(gpu.addresses) if gpu is not None else ())


def _explain_spark_error(error: BaseException, num_workers: int) -> str:
    """One line that says why the barrier stage failed, without the Py4J and Java stacks around it."""
    text = str(error)
    first = text.strip().splitlines()[0] if text.strip() else repr(error)
    marker = "RankFailed: "
    if marker in text:  # the task's own message, without the Java stack around it
        first = text[text.index(marker) + len(marker):].split("\n\tat ")[0].strip()
        return f"barrier stage failed: {first}"
    if "BarrierJobSlotsNumberCheckFailed" in text or "barrier stage that requires more slots" in text:
        return (f"the barrier stage needs {num_workers} task slots at once but the cluster has fewer: "
                f"lower train.num_workers or give Spark more cores (local[N], more executors, "
                f"or a smaller spark.task.cpus)")
    lost = explain_lost_executor(text)
    if lost:
        return f"barrier stage failed: {lost}"
    aborted = re.search(r"Job aborted due to stage failure: ([^\n]*)", text)
    return f"barrier stage failed: {aborted.group(1).strip() if aborted else first}"


def explain_lost_executor(text: str) -> str | None:
    """'executor 1 on 10.0.0.5 was lost: Command exited with code 137 (SIGKILL: ...)' from Spark's error
    text, or None when no executor was lost."""
    lost = re.search(r"ExecutorLostFailure \(executor (\S+) exited([^)]*)\)\s*Reason: ([^\n]*)", text)
    if not lost:
        return None
    executor, cause, reason = lost.group(1), lost.group(2).strip(), lost.group(3).strip()
    host = re.search(r"\(([^\s()]+) executor " + re.escape(executor) + r"\)", text)
    where = f" on {host.group(1)}" if host else ""
    code = re.search(r"exited with code (\d+)", reason)
    hint = ""
    if code and int(code.group(1)) > 128:
        signum = int(code.group(1)) - 128
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        hint = f" ({name}" + (": often the kernel's out-of-memory killer or a preempted node; check that "
                              "worker's memory and its logs" if signum == signal.SIGKILL else "") + ")"
    why = f" ({cause})" if cause else ""
    return f"executor {executor}{where} was lost{why}: {reason}{hint}"


class Coordinator:
    """The driver's socket the barrier tasks talk to; also runs Horovod's rendezvous server.

    A connection counts only once it answered the challenge with the launch's secret; until then,
    and for any line that is not a JSON message, it is dropped and logged, never trusted.
    """

    def __init__(self, driver_host: str, num_workers: int, gloo_iface: str, attempt: int, secret: str,
                 rendezvous: str = "horovod", timeout_s: float = 120.0) -> None:
        self.driver_host = driver_host
        self.rendezvous_kind = rendezvous
        self.timeout_s = timeout_s
        self.num_workers = num_workers
        self.gloo_iface = gloo_iface
        self.attempt = attempt
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.tails: dict[int, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=30))
        self._registered: dict[int, tuple[str, socket.socket]] = {}
        self._lock = threading.Lock()
        self._rendezvous = None
        coordinator = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                peer = "%s:%s" % self.client_address[:2]
                if not coordinator._authenticate(self.request, self.rfile, secret, peer):
                    return
                for line in iter(lambda: self.rfile.readline(MAX_LINE_BYTES + 1), b""):
                    message = _parse(line)
                    if message is None:
                        log.warning("dlpipe launcher: dropped a malformed message from task at %s: %r",
                                    peer, line[:200])
                        continue
                    if message.get("type") == "register":
                        coordinator._register(message, self.request, peer)
                    coordinator.messages.put(message)
                coordinator.messages.put({"type": "disconnect", "partition": -1})

        socketserver.ThreadingTCPServer.daemon_threads = True
        self._server = socketserver.ThreadingTCPServer((driver_host, 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        log.info("dlpipe launcher: coordinator for %d tasks listening on %s:%d", num_workers, driver_host, self.port)

    @staticmethod
    def _authenticate(sock: socket.socket, rfile: Any, secret: str, peer: str) -> bool:
        """Challenge the peer; True when it answered with the launch's secret in time."""
        challenge = new_challenge()
        sock.settimeout(AUTH_TIMEOUT_S)
        try:
            send(sock, {"type": "challenge", "challenge": challenge})
            reply = _parse(rfile.readline(MAX_LINE_BYTES + 1))
        except OSError:  # timed out or gone
            reply = None
        if reply is None or reply.get("type") != "auth" or not is_answer(secret, challenge, reply.get("answer")):
            log.warning("dlpipe launcher: refused a connection from %s: it did not authenticate as a barrier "
                        "task of this launch", peer)
            return False
        sock.settimeout(None)
        return True

    def _register(self, message: dict[str, Any], sock: socket.socket, peer: str) -> None:
        partition, host = message.get("partition"), message.get("host")
        if not isinstance(partition, int) or not 0 <= partition < self.num_workers or not isinstance(host, str):
            log.warning("dlpipe launcher: ignored a malformed registration from %s: %r", peer, message)
            return
        with self._lock:
            if len(self._registered) == self.num_workers:
                # Spark re-ran a task of this barrier stage (a stage retry): its peers are gone, so
                # it must fail; dlpipe relaunches the whole stage itself (train.max_attempts).
                send(sock, {"type": "abort", "reason": "this Horovod job already started; Spark's retry "
                            "of a single barrier task cannot rejoin it"})
                return
            self._registered[partition] = (host, sock)
            if len(self._registered) == self.num_workers:
                self._assign()

    def _assign(self) -> None:
        """All tasks are in: plan ranks by host, start the rendezvous, send assignments."""
        from horovod.runner.common.util.hosts import HostInfo, get_host_assignments

        partitions = sorted(self._registered)
        hosts: dict[str, list[int]] = {}
        for p in partitions:  # ranks follow partition order, grouped by host
            hosts.setdefault(self._registered[p][0], []).append(p)
        plan = get_host_assignments([HostInfo(h, len(ps)) for h, ps in hosts.items()], self.num_workers)
        iface = self.gloo_iface or ("lo" if len(hosts) == 1 else "")
        if not iface:
            raise LaunchError(f"ranks run on {len(hosts)} hosts ({', '.join(hosts)}): set train.gloo_iface "
                              f"to the network interface they share (e.g. eth0)")
        port = self._start_rendezvous(plan)
        slots = iter(plan)
        for host, ps in hosts.items():
            for p in ps:
                slot = next(slots)
                send(self._registered[p][1], {
                    "rank": slot.rank, "size": slot.size, "local_rank": slot.local_rank,
                    "local_size": slot.local_size, "cross_rank": slot.cross_rank,
                    "cross_size": slot.cross_size, "hostname": slot.hostname,
                    "rendezvous": self.rendezvous_kind, "rendezvous_addr": self.driver_host,
                    "rendezvous_port": port, "gloo_iface": iface, "attempt": self.attempt,
                })

    def _start_rendezvous(self, plan: list[Any]) -> int:
        """Start this launch's rendezvous on the driver (a fresh port each launch); return its port."""
        if self.rendezvous_kind == "torch":
            import datetime

            from torch.distributed import TCPStore

            self._rendezvous = TCPStore(self.driver_host, 0, None, True, wait_for_workers=False,
                                        timeout=datetime.timedelta(seconds=self.timeout_s))
            return self._rendezvous.port
        from horovod.runner.http.http_server import RendezvousServer

        self._rendezvous = RendezvousServer()
        port = self._rendezvous.start()
        self._rendezvous.init(plan)
        return port

    def watch(self, stage: threading.Thread, start_timeout_s: float, failure_timeout_s: float,
              on_event: EventHandler | None) -> str | None:
        """Relay messages until the stage ends; return a failure reason to cancel it, or None."""
        started = time.monotonic()
        last_seen: dict[int, float] = {}
        failed_at: float | None = None
        failed_reason = ""
        while stage.is_alive():
            try:
                message = self.messages.get(timeout=0.5)
            except queue.Empty:
                message = None
            now = time.monotonic()
            if message is not None:
                rank = message.get("rank", -1)
                rank = rank if isinstance(rank, int) else -1
                if rank >= 0:
                    last_seen[rank] = now
                kind = message.get("type")
                if kind == "log":
                    line = str(message.get("line", ""))
                    self.tails[rank].append(line)
                    print(f"[rank {rank}] {line}", flush=True)
                elif kind == "event" and on_event is not None and isinstance(message.get("event"), dict):
                    on_event(rank, message["event"])
                elif kind == "exit" and message.get("code") != 0 and failed_at is None:
                    from pipelines.launcher.task import describe_exit

                    code = message.get("code")
                    failed_at = now
                    failed_reason = f"rank {rank} {describe_exit(code) if isinstance(code, int) else 'exited'}"
            with self._lock:
                registered = len(self._registered)
            if registered < self.num_workers and now - started > start_timeout_s:
                return (f"only {registered} of {self.num_workers} barrier tasks started within "
                        f"train.start_timeout_s={start_timeout_s:g}s: check that the cluster has "
                        f"{self.num_workers} free task slots, or raise train.start_timeout_s")
            if failed_at is not None and now - failed_at > failure_timeout_s:
                return f"{failed_reason}, and the stage did not end within {failure_timeout_s:g}s"
            silent = [r for r, t in last_seen.items() if now - t > failure_timeout_s]
            if silent:
                return (f"rank {silent[0]} sent nothing (not even a heartbeat) for "
                        f"{failure_timeout_s:g}s: its task or executor is gone")
        return None

    def tails_text(self) -> str:
        parts = [f"\n--- last lines of rank {r} ---\n" + "\n".join(t) for r, t in sorted(self.tails.items()) if t]
        return "".join(parts)

    def close(self) -> None:
        """Tell surviving tasks to kill their ranks, then stop the servers."""
        with self._lock:
            for _, sock in self._registered.values():
                try:
                    send(sock, {"type": "abort"})
                except OSError:
                    pass
        self._server.shutdown()
        self._server.server_close()
        if self._rendezvous is not None and self.rendezvous_kind == "horovod":
            self._rendezvous.stop()
        self._rendezvous = None  # a TCPStore closes when its last reference goes


def _parse(line: bytes) -> dict[str, Any] | None:
    """One JSON object per line; None for anything else (cut, too long, not JSON, not an object)."""
    if not line.endswith(b"\n") or len(line) > MAX_LINE_BYTES:
        return None
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None
