"""Driver side: one barrier stage of N tasks, each running one rank process (no mpirun, no SSH).

The driver runs a small coordinator socket and the rendezvous its caller chose (for training, the
strategy's: Horovod's Gloo rendezvous or a torch.distributed store; see
``pipelines.launcher.rendezvous``). Tasks authenticate and register their host with the
coordinator; once all N have, the driver plans the ranks by host (``pipelines.launcher.plan``),
starts the rendezvous and hands each task its rank and the rendezvous's address. Tasks then
stream their rank's log lines and events back, which the driver prints prefixed with the rank
and hands to ``on_event``.

Every wait is bounded: registration (``start_timeout_s``), a failed or silent rank
(``failure_timeout_s``). A failure in any of the coordinator's threads reaches the driver's wait
loop as its own message; on any failure the Spark job group is cancelled and the error names the
rank. Every socket binds to the driver's address (``spark.driver.bindAddress`` when set, else
``spark.driver.host``, which is what the tasks are told), never all interfaces.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

from pyspark import BarrierTaskContext, SparkContext
from pyspark.resource import ResourceProfile
from pyspark.sql import SparkSession

from pipelines import events
from pipelines.errors import ConfigError
from pipelines.formats import FormatError
from pipelines.launcher import protocol
from pipelines.launcher.plan import assign_ranks, local_slots
from pipelines.launcher.protocol import AUTH_TIMEOUT_S, MAX_LINE_BYTES, PEER_LOST, TaskSpec
from pipelines.launcher.rendezvous import NoRendezvous, Rendezvous

log = logging.getLogger("dlpipe.launcher")
STAGE_END_TIMEOUT_S = 30.0  # after cancelling a launch's Spark job, the longest wait for its tasks to end
DRAIN_TIMEOUT_S = 5.0  # after the stage ends, the longest wait for the ranks' last messages
MAX_PENDING_EXTRA = 8  # connections authenticating at once beyond one per task; more are closed at once
SILENT_RANK = "sent nothing (not even a heartbeat)"  # the watch's reason for a rank whose task is gone
EventHandler = Callable[[events.RankEvent], None]


class LaunchError(RuntimeError):
    """The barrier stage failed: names the rank and the cause, and holds the rank's log tail."""


@dataclass(frozen=True)
class _Failed:
    """Put on the coordinator's queue by a thread that failed: the wait loop ends the launch with it."""

    error: Exception
    peer: str


@dataclass(frozen=True)
class _Disconnected:
    peer: str


@dataclass(frozen=True)
class LaunchOptions:
    """How a launch runs, apart from what it runs: its bounded waits, the ranks' network, their cores
    and resources, and the name its Spark job shows. The defaults suit a test or a small local job."""

    start_timeout_s: float = 120.0  # every barrier task registered within this, or the launch fails
    failure_timeout_s: float = 120.0  # a failed or silent rank ends the launch within this
    gloo_iface: str = ""  # the ranks' collectives' interface; empty: ``lo`` on one host, else it must be given
    pin_cores: bool = False  # each rank process on its own cores when its host has enough
    description: str = "dlpipe ranks"  # the Spark job group's description (its UI shows it)
    # what each barrier task asks for (e.g. GPUs per rank) instead of the application's task resources
    resources: ResourceProfile | None = None


@dataclass
class _StageOutcome:
    """What the barrier stage's thread leaves the driver's: the tasks' results, or what ended the stage."""

    results: list[str] | None = None
    error: BaseException | None = None


def run_ranks(
    spark: SparkSession,
    entry: str,
    payload: dict[str, Any],
    *,
    num_workers: int,
    rendezvous: Rendezvous | None = None,
    on_event: EventHandler | None = None,
    attempt: int = 0,
    options: LaunchOptions = LaunchOptions(),
) -> Any:
    """Run ``entry(payload, ctx)`` on ``num_workers`` ranks; return rank 0's result.

    ``entry`` is ``"package.module:function"``, importable on the executors. ``rendezvous``: what
    the ranks join (default: none). ``attempt``: 0 for a first launch, 1 for its first retry, ...
    ``options``: its timeouts, network interface, core pinning, task resources and job description
    (see :class:`LaunchOptions`). ``on_event(event)`` sees every event a rank emits. A rank that
    reports a :class:`~pipelines.events.ConfigProblem` ends the launch with a :class:`ConfigError`
    naming its key.
    """
    sc = spark.sparkContext
    _check_task_slots(sc, num_workers)
    coordinator, spec = _plan_launch(sc, entry, payload, num_workers, rendezvous, attempt, options)
    group = f"dlpipe-ranks-{uuid.uuid4().hex[:8]}"
    outcome = _StageOutcome()
    stage = threading.Thread(target=_run_stage, args=(sc, spec, group, options, outcome),
                             name="dlpipe-barrier-stage", daemon=True)
    stage.start()
    try:
        _watch_stage(sc, coordinator, stage, group, options, on_event)
        return _stage_result(coordinator, outcome, num_workers)
    finally:
        coordinator.close()


def _check_task_slots(sc: SparkContext, num_workers: int) -> None:
    """Fail at once when a local master cannot run every task of the barrier stage together."""
    slots = local_slots(str(sc.master), int(sc.getConf().get("spark.task.cpus") or "1"))
    if slots is not None and num_workers > slots:  # Spark would retry its barrier check for seconds first
        raise LaunchError(f"the barrier stage needs {num_workers} task slots at once but master={sc.master} has "
                          f"{slots}: lower train.num_workers or give Spark more cores (local[N], or a smaller "
                          "spark.task.cpus)")


def _plan_launch(sc: SparkContext, entry: str, payload: dict[str, Any], num_workers: int,
                 rendezvous: Rendezvous | None, attempt: int, options: LaunchOptions) -> tuple[Coordinator, TaskSpec]:
    """Start this launch's coordinator; the spec every barrier task gets (it holds the launch's secret)."""
    driver_host = sc.getConf().get("spark.driver.host", socket.gethostname())
    # behind NAT or in a pod, Spark binds spark.driver.bindAddress and advertises spark.driver.host: so do we
    bind_host = sc.getConf().get("spark.driver.bindAddress", driver_host)
    secret = protocol.new_secret()  # this launch's: reaches the tasks only inside the Spark closure
    launch_id = f"dlpipe-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    coordinator = Coordinator(driver_host, num_workers, options.gloo_iface, attempt, secret,
                              rendezvous or NoRendezvous(), bind_host=bind_host)
    spec = TaskSpec(
        entry=entry, payload=payload, num_workers=num_workers,
        coordinator_host=driver_host, coordinator_port=coordinator.port,
        start_timeout_s=options.start_timeout_s, failure_timeout_s=options.failure_timeout_s,
        launch_id=launch_id, secret=secret, pin_cores=options.pin_cores,
    )
    return coordinator, spec


def _run_stage(sc: SparkContext, spec: TaskSpec, group: str, options: LaunchOptions, outcome: _StageOutcome) -> None:
    """The barrier stage, in its own thread: its results, or what ended it, go to ``outcome``."""
    sc.setJobGroup(group, options.description, interruptOnCancel=True)
    try:
        tasks = sc.parallelize(range(spec.num_workers), spec.num_workers)
        barrier = (tasks.withResources(options.resources) if options.resources is not None else tasks).barrier()
        outcome.results = barrier.mapPartitions(lambda _: _barrier_task(spec)).collect()
    except BaseException as e:  # noqa: BLE001 - whatever ended the stage is reported by the watching thread
        outcome.error = e


def _watch_stage(sc: SparkContext, coordinator: Coordinator, stage: threading.Thread, group: str,
                 options: LaunchOptions, on_event: EventHandler | None) -> None:
    """Relay the ranks' messages until the stage ends; cancel it and raise when the launch must stop."""
    try:
        failure = coordinator.watch(stage, options.start_timeout_s, options.failure_timeout_s, on_event)
    except BaseException as stopped:  # the caller's event handler stopped the launch (a lost lease, Ctrl-C, ...)
        sc.cancelJobGroup(group)
        if not isinstance(stopped, KeyboardInterrupt):  # its ranks are gone before the caller goes on
            stage.join(timeout=STAGE_END_TIMEOUT_S)
        raise
    if failure is not None:
        sc.cancelJobGroup(group)
        stage.join(timeout=STAGE_END_TIMEOUT_S)
        _raise_failure(coordinator, failure)


def _raise_failure(coordinator: Coordinator, failure: str | events.ConfigProblem | _Failed) -> NoReturn:
    """The error that ends a launch the watch stopped: a rank's config problem, a coordinator
    thread's failure, or the watch's reason with what the ranks told."""
    if isinstance(failure, events.ConfigProblem):
        raise ConfigError(f"{failure.message} (reported by rank {failure.rank}; its traceback is in "
                          f"its log {failure.log})", key=failure.key)
    if isinstance(failure, _Failed):
        if isinstance(failure.error, ConfigError):
            raise failure.error
        raise LaunchError(f"the driver's coordinator failed while serving the task at {failure.peer}: "
                          f"{type(failure.error).__name__}: {failure.error}") from failure.error
    raise LaunchError(coordinator.explain(failure, lost=SILENT_RANK in failure))


def _stage_result(coordinator: Coordinator, outcome: _StageOutcome, num_workers: int) -> Any:
    """Rank 0's result from a stage that ended by itself, or the error that explains why it failed."""
    if outcome.error is not None:
        lost = explain_lost_executor(str(outcome.error)) is not None
        raise LaunchError(coordinator.explain(_explain_spark_error(outcome.error, num_workers), lost)) \
            from outcome.error
    if outcome.results is None:  # its thread died before the job ran (it printed why): a bug, not a failed launch
        raise RuntimeError("the barrier stage's thread ended without running the stage")
    return json.loads(outcome.results[0]) if outcome.results else None


def _barrier_task(spec: TaskSpec) -> Iterator[str]:
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
        first = text[text.index(marker) + len(marker):].split("\n")[0].strip()
        first = first.removesuffix("; last lines:")  # the coordinator adds the tail, once
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
    """The driver's socket the barrier tasks talk to; it also runs the launch's rendezvous.

    A connection counts only once it answered the challenge with the launch's secret; until then,
    and for any line that is not a launcher message, it is dropped and logged, never trusted.
    """

    def __init__(self, driver_host: str, num_workers: int, gloo_iface: str, attempt: int, secret: str,
                 rendezvous: Rendezvous, bind_host: str = "") -> None:
        self.driver_host = driver_host  # what the tasks are told to connect to
        self.bind_host = bind_host or driver_host  # the local address every socket of the launch binds
        self.num_workers = num_workers
        self.gloo_iface = gloo_iface
        self.attempt = attempt
        self.rendezvous = rendezvous
        self.messages: queue.Queue[Any] = queue.Queue()
        self.tails: dict[int, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=protocol.LOG_TAIL_LINES))
        self.failures: list[events.Failed] = []  # the ranks' own causes, first reported first
        self.exit_codes: dict[int, int] = {}
        self.logs: dict[int, str] = {}  # rank -> its log file ("host:/path"), from its Started event
        self._registered: dict[int, tuple[str, socket.socket, protocol.Channel]] = {}
        # connections not yet authenticated: each holds a thread for up to AUTH_TIMEOUT_S
        self._pending = threading.BoundedSemaphore(num_workers + MAX_PENDING_EXTRA)
        self._lock = threading.Lock()
        coordinator = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                peer = f"{self.client_address[0]}:{self.client_address[1]}"
                try:
                    coordinator._serve(self.request, self.rfile, secret, peer)
                except Exception as e:  # any failure here must end the launch, not vanish (logged, queued)
                    log.exception("dlpipe launcher: coordinator thread for %s failed", peer)
                    coordinator.messages.put(_Failed(e, peer))

        socketserver.ThreadingTCPServer.daemon_threads = True
        self._server = socketserver.ThreadingTCPServer((self.bind_host, 0), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        log.info("dlpipe launcher: coordinator for %d tasks listening on %s:%d", num_workers, self.bind_host, self.port)

    def _serve(self, sock: socket.socket, rfile: Any, secret: str, peer: str) -> None:
        if not self._pending.acquire(blocking=False):
            log.warning("dlpipe launcher: refused a connection from %s: %d others are still authenticating",
                        peer, self.num_workers + MAX_PENDING_EXTRA)
            return
        try:
            channel = self._authenticate(sock, rfile, secret, peer)
        finally:
            self._pending.release()
        if channel is None:
            return
        for line in iter(lambda: rfile.readline(MAX_LINE_BYTES + 1), b""):
            message = channel.open(line)
            if message is None:
                log.warning("dlpipe launcher: dropped a message from task at %s that is not its next one sealed "
                            "under this connection's key (forged, altered, replayed or malformed): %r",
                            peer, line[:200])
                continue
            if isinstance(message, protocol.Register):
                self._register(message, sock, channel)
            self.messages.put(message)
        self.messages.put(_Disconnected(peer))

    @staticmethod
    def _authenticate(sock: socket.socket, rfile: Any, secret: str, peer: str) -> protocol.Channel | None:
        """Challenge the peer; its sealed channel when it answered with the launch's secret in time."""
        challenge = protocol.new_challenge()
        sock.settimeout(AUTH_TIMEOUT_S)
        try:
            protocol.send(sock, protocol.Challenge(challenge))
            reply = protocol.decode(rfile.readline(MAX_LINE_BYTES + 1))
        except OSError:  # timed out or gone
            reply = None
        if not isinstance(reply, protocol.Auth) or not protocol.is_answer(secret, challenge, reply.answer):
            log.warning("dlpipe launcher: refused a connection from %s: it did not authenticate as a barrier "
                        "task of this launch", peer)
            return None
        sock.settimeout(None)
        return protocol.Channel(secret, challenge, "driver")

    def _register(self, message: protocol.Register, sock: socket.socket, channel: protocol.Channel) -> None:
        if not 0 <= message.partition < self.num_workers:
            log.warning("dlpipe launcher: ignored a registration of partition %d", message.partition)
            return
        with self._lock:
            if len(self._registered) == self.num_workers:
                # Spark re-ran a task of this barrier stage (a stage retry): its peers are gone, so
                # it must fail; dlpipe relaunches the whole stage itself (train.max_attempts).
                channel.send(sock, protocol.Refused("this launch's ranks already started; Spark's retry of a "
                                                    "single barrier task cannot rejoin them"))
                return
            self._registered[message.partition] = (message.host, sock, channel)
            if len(self._registered) == self.num_workers:
                self._assign()

    def _assign(self) -> None:
        """All tasks are in: plan ranks by host, start the rendezvous, send assignments."""
        slots = assign_ranks({p: host for p, (host, _, _) in self._registered.items()})
        hosts = sorted({s.hostname for s in slots.values()})
        iface = self.gloo_iface or ("lo" if len(hosts) == 1 else "")
        if not iface:
            raise ConfigError(f"ranks run on {len(hosts)} hosts ({', '.join(hosts)}): set train.gloo_iface to the "
                              f"network interface they share (e.g. eth0)", key="train.gloo_iface")
        port = self.rendezvous.start(self.bind_host, sorted(slots.values(), key=lambda s: s.rank))
        for partition, (_, sock, channel) in self._registered.items():
            slot = slots[partition]
            channel.send(sock, protocol.Assignment(
                slot=slot, attempt=self.attempt, rendezvous_addr=self.driver_host, rendezvous_port=port,
                gloo_iface=iface, env=self.rendezvous.rank_env(slot, self.driver_host, port, iface)))

    def watch(self, stage: threading.Thread, start_timeout_s: float, failure_timeout_s: float,
              on_event: EventHandler | None) -> str | events.ConfigProblem | _Failed | None:
        """Relay messages until the stage ends (and then every rank's last messages, which may still
        be on their way); return why to cancel the stage (a reason, a rank's config problem, or a
        coordinator thread's failure), or None."""
        started = time.monotonic()
        self._last_seen: dict[int, float] = {}
        self._joined: set[int] = set()
        self._exited: set[int] = set()
        self._failed_at: float | None = None
        self._failed_reason = ""
        while stage.is_alive():
            try:
                message = self.messages.get(timeout=0.5)
            except queue.Empty:
                message = None
            now = time.monotonic()
            stop = self._handle(message, now, on_event)
            if stop is not None:
                return stop
            with self._lock:
                registered = len(self._registered)
            if registered < self.num_workers and now - started > start_timeout_s:
                return (f"only {registered} of {self.num_workers} barrier tasks started within "
                        f"train.start_timeout_s={start_timeout_s:g}s: check that the cluster has "
                        f"{self.num_workers} free task slots, or raise train.start_timeout_s")
            if self._failed_at is not None and now - self._failed_at > failure_timeout_s:
                return f"{self._failed_reason}, and the stage did not end within {failure_timeout_s:g}s"
            silent = [r for r, t in self._last_seen.items() if now - t > failure_timeout_s]
            if silent:
                return (f"rank {silent[0]} {SILENT_RANK} for "
                        f"{failure_timeout_s:g}s: its task or executor is gone")
        # Every task sent its exit before its task ended; what it sent may still be queued or in transit.
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while len(self._exited) < self.num_workers and time.monotonic() < deadline:
            try:
                message = self.messages.get(timeout=0.1)
            except queue.Empty:
                continue
            stop = self._handle(message, time.monotonic(), on_event)
            if stop is not None:
                return stop
        return None

    def _handle(self, message: Any, now: float,
                on_event: EventHandler | None) -> events.ConfigProblem | _Failed | None:
        """Print a log line, relay an event, note an exit; a failure that must end the launch."""
        if isinstance(message, _Failed):
            return message
        rank = getattr(message, "rank", -1)
        if rank >= 0:
            self._last_seen[rank] = now
        if isinstance(message, protocol.LogLine):
            self.tails[rank].append(message.line)
            print(f"[rank {rank}] {message.line}", flush=True)
        elif isinstance(message, protocol.EventLine):
            event = self._event(message)
            if isinstance(event, events.ConfigProblem):
                return event
            if isinstance(event, events.Started):
                self.logs[rank] = event.log
            if isinstance(event, events.Failed):
                self.failures.append(event)
                # the type only: the job's error line says the cause once
                print(f"[rank {rank}] failed: {event.error.split(':')[0]} (traceback in its log {event.log})",
                      flush=True)
            if isinstance(event, events.Joined):
                self._joined.add(rank)
                if len(self._joined) == self.num_workers:
                    self.rendezvous.all_joined()
            if event is not None and on_event is not None:
                on_event(event)
        elif isinstance(message, protocol.Exit):
            self._exited.add(rank)
            self.exit_codes[rank] = message.code
            if message.code != 0 and self._failed_at is None:
                from pipelines.launcher.task import describe_exit

                self._failed_at = now
                self._failed_reason = f"rank {rank} {describe_exit(message.code)}"
        return None

    @staticmethod
    def _event(message: protocol.EventLine) -> events.RankEvent | None:
        try:
            return events.decode(message.event)
        except FormatError as e:
            log.warning("dlpipe launcher: dropped an event from rank %d: %s", message.rank, e)
            return None

    def explain(self, reason: str, lost: bool = False) -> str:
        """Why the launch failed, once, root cause first. A rank that died without saying why (a
        native crash, a kill) leads, with its last lines; then the first cause a rank reported (its
        ``failed`` event: the others often fail only because it did). ``reason`` (Spark's or the
        watch's) leads when a rank was ``lost`` (its executor or its messages gone) or when no rank
        told anything."""
        from pipelines.launcher.task import describe_exit

        reported = {f.rank for f in self.failures}
        silent = [r for r, code in self.exit_codes.items() if code != 0 and r not in reported]  # in exit order
        parts = [reason] if lost or not (silent or self.failures) else []
        parts += [f"rank {r} {describe_exit(self.exit_codes[r])}"
                  + (f" (its log {self.logs[r]})" if self.logs.get(r) else "")
                  for r in silent]
        if self.failures:
            # a peer's loss is a consequence: a rank that failed on its own goes first, whenever it said so
            first = next((f for f in self.failures if not PEER_LOST.search(f.error)), self.failures[0])
            others = sorted(reported - {first.rank})
            also = f"; rank(s) {', '.join(map(str, others))} failed too (see their logs)" if others else ""
            parts.append(f"{'then ' if parts else ''}rank {first.rank} failed: {first.error} "
                         f"(traceback in its log {first.log}){also}")
        tails = "".join(f"\n--- last lines of rank {r} ---\n" + "\n".join(self.tails[r])
                        for r in silent if self.tails.get(r))
        return "; ".join(parts) + tails

    def close(self) -> None:
        """Tell surviving tasks to kill their ranks, then stop the servers."""
        with self._lock:
            for _, sock, channel in self._registered.values():
                try:
                    channel.send(sock, protocol.Abort())
                except OSError:
                    pass
        self._server.shutdown()
        self._server.server_close()
        self.rendezvous.close()
