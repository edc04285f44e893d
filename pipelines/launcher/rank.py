"""One rank process: ``python -m pipelines.launcher SPEC.json`` runs :func:`main`.

The barrier task writes the rank's :class:`~pipelines.launcher.protocol.RankSpec` (entry, payload,
its place in the job, its rendezvous) and starts this process with the variables its library
reads in the environment (``CUDA_VISIBLE_DEVICES``, Horovod's Gloo variables). The rank runs the
entry function and prints its result as an event line. This process imports no pyspark and
nothing of the driver side.

A setting only the rank can check that does not work here (a ``ConfigError``, e.g. fp16 on a
device without it) ends the rank with one :class:`~pipelines.events.ConfigProblem` event naming the
key; any other exception ends it with one :class:`~pipelines.events.Failed` event (its type and
first line). Either way the traceback goes to the rank's log file only, whose path the event gives,
so the console shows each cause once.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import events, storage
from pipelines.errors import ConfigError
from pipelines.launcher.protocol import RankSpec, event_line

STALL_EXIT_CODE = 75
CONFIG_EXIT_CODE = 78  # EX_CONFIG
_last_beat: list[float] = []  # empty until the entry's first heartbeat arms the watchdog


@dataclass(frozen=True)
class RankContext:
    """What an entry function knows about its place in the job."""

    rank: int
    size: int
    local_rank: int
    local_size: int = 1
    threads: int = 1  # cores given to this rank's task (spark.task.cpus)
    attempt: int = 0  # 0 for the first launch, 1 for the first retry, ...
    hostname: str = ""
    gpus: tuple[str, ...] = ()  # the GPU addresses Spark gave the task (the only ones this process sees)
    rendezvous_addr: str = ""  # the driver's rendezvous (a torch.distributed store: host and port)
    rendezvous_port: int = 0
    stall_timeout_s: float = 120.0  # no progress for this long ends the rank (launcher's failure timeout)
    log_path: str = ""  # this rank's log file on its host

    @classmethod
    def from_spec(cls, spec: RankSpec) -> RankContext:
        slot = spec.slot
        return cls(slot.rank, slot.size, slot.local_rank, slot.local_size, spec.threads, spec.attempt,
                   slot.hostname, tuple(spec.gpus), spec.rendezvous_addr, spec.rendezvous_port,
                   spec.stall_timeout_s, spec.log_path)

    @property
    def log_location(self) -> str:
        """This rank's log file as the driver names it: ``host:/path``."""
        return f"{self.hostname}:{self.log_path}"

    def emit(self, event: events.RankEvent) -> None:
        """Send an event (progress, metrics) to the driver, tagged with this rank and the time."""
        print(event_line(events.stamped(event, self.rank, time.time())), flush=True)

    def log(self, message: str) -> None:
        """A log line the driver prints prefixed with this rank."""
        print(message, flush=True)

    def heartbeat(self) -> None:
        """Mark progress (call it every step). Once called, a main thread that makes no progress
        for the stall timeout (a collective waiting on a hung peer) ends this rank with an error."""
        if _last_beat:
            _last_beat[0] = time.monotonic()
        else:
            _last_beat.append(time.monotonic())


def as_context(cls: type[RankContext], ctx: RankContext) -> RankContext:
    """``ctx`` as an instance of the subclass ``cls`` (tests and benchmarks wrap ``emit`` / ``heartbeat``)."""
    return cls(**{f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx)})


def _stall_watchdog(ctx: RankContext) -> None:
    timeout_s = ctx.stall_timeout_s
    while True:
        time.sleep(min(1.0, timeout_s / 4))
        if _last_beat and time.monotonic() - _last_beat[0] > timeout_s:
            print(f"rank {ctx.rank}: no progress for {timeout_s:g}s (train.failure_timeout_s): stuck in a "
                  f"collective whose peers stopped or never joined; ending this rank", file=sys.stderr, flush=True)
            os._exit(STALL_EXIT_CODE)


def resolve_entry(entry: str) -> Callable[[dict[str, Any], RankContext], Any]:
    """Import ``module:function``."""
    module_name, _, func_name = entry.partition(":")
    if not func_name:
        raise ValueError(f"entry {entry!r} must look like 'package.module:function'")
    entry_fn: Callable[[dict[str, Any], RankContext], Any] = getattr(importlib.import_module(module_name), func_name)
    return entry_fn


def exit_now(code: int) -> None:
    """End the rank process without interpreter finalization, once its output is flushed.

    Finalization tears down objects that still hold a process group (a DDP reducer keeps Gloo's
    worker threads and pending work alive after ``destroy_process_group``); destroying them at
    exit can abort the process ("terminate called without an active exception", SIGABRT) after a
    run that succeeded. Everything a rank writes is already atomic and closed by now.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def cores_for_rank(local_rank: int, local_size: int, threads: int, allowed: set[int]) -> set[int] | None:
    """This rank's own ``threads`` cores of the ``allowed`` ones, when every rank on the host can
    have its own; None when they cannot (pinning them would stack ranks on shared cores)."""
    cores = sorted(allowed)
    if local_size * threads > len(cores):
        return None
    first = local_rank * threads
    return set(cores[first:first + threads])


def pin_rank(ctx: RankContext) -> list[int]:
    """Keep this process on its own cores (the launch's ``pin_cores``); the cores, [] when not pinned.

    Called before any other thread starts, so the loader's, Petastorm's and Horovod's threads inherit
    it: on a host with a core per rank thread, a rank's helper threads then take time from their own
    rank only, instead of stalling the step of the rank they happen to land beside.
    """
    if not hasattr(os, "sched_setaffinity"):
        return []
    cores = cores_for_rank(ctx.local_rank, ctx.local_size, ctx.threads, os.sched_getaffinity(0))
    if cores is None:
        ctx.log(f"not pinned to cores: {ctx.local_size} ranks x {ctx.threads} threads on this host but "
                f"{len(os.sched_getaffinity(0))} cores allowed")
        return []
    os.sched_setaffinity(0, cores)
    return sorted(cores)


def error_line(error: BaseException) -> str:
    """``ArrowInvalid: Parquet magic bytes not found ...``: the exception's type and first line."""
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0].strip()}" if lines else type(error).__name__


def _log_traceback(path: str) -> None:
    """This exception's traceback into the rank's log file only (not on the driver's console)."""
    if not path:
        return
    try:
        with open(path, "a") as log:
            traceback.print_exc(file=log)
    except OSError:
        traceback.print_exc()


def main(spec_path: str) -> int:
    spec = RankSpec.from_json(Path(spec_path).read_text(), spec_path)
    storage.mark_worker_process()  # the entry brings its job's storage options (storage.using_options)
    ctx = RankContext.from_spec(spec)
    cores = pin_rank(ctx) if spec.pin_cores else []
    import torch

    # Without this every rank uses all cores of the machine and they fight (10x slower).
    torch.set_num_threads(ctx.threads)
    ctx.emit(events.Started(pid=os.getpid(), host=ctx.hostname, cores=cores, log=ctx.log_location))
    threading.Thread(target=_stall_watchdog, args=(ctx,), daemon=True).start()
    try:
        result = resolve_entry(spec.entry)(spec.payload, ctx)
    except ConfigError as e:
        _log_traceback(ctx.log_path)
        ctx.emit(events.ConfigProblem(key=e.key, message=str(e), log=ctx.log_location))
        return CONFIG_EXIT_CODE
    except BaseException as e:  # noqa: BLE001 - any failure of the entry is reported once, as the rank's cause
        if not ctx.log_path:  # no log file to keep it in: the traceback goes to the console
            traceback.print_exc()
        _log_traceback(ctx.log_path)
        ctx.emit(events.Failed(error=error_line(e), log=ctx.log_location))
        sys.stderr.flush()
        return 1
    ctx.emit(events.Result(result=result))
    return 0
