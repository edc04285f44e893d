"""One rank process: ``python -m pipelines.launcher SPEC.json`` runs :func:`main`.

The barrier task starts this process with its place in the job (``RANK``, ``WORLD_SIZE``, ...)
and its rendezvous in the environment (Horovod's Gloo variables, so ``hvd.init()`` joins the
others through the driver's rendezvous server; or ``DLPIPE_STORE_ADDR``/``_PORT`` for
torch.distributed, see :func:`join_process_group`). The rank runs the entry function named in
the spec and prints its result as an event line.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from pipelines.launcher.protocol import RESULT_EVENT, encode_event

STALL_EXIT_CODE = 75
PIN_ENV = "DLPIPE_PIN_RANKS"  # "1": each rank process on its own cores (see pin_rank)
_last_beat: list[float] = []  # empty until the entry's first heartbeat arms the watchdog


@dataclass(frozen=True)
class RankContext:
    """What an entry function knows about its place in the job."""

    rank: int
    size: int
    local_rank: int
    threads: int  # cores given to this rank's task (spark.task.cpus)
    attempt: int  # 0 for the first launch, 1 for the first retry, ...

    def emit(self, kind: str, **data: Any) -> None:
        """Send an event (progress, metrics) to the driver, tagged with this rank."""
        print(encode_event(kind, {"rank": self.rank, "time": time.time(), **data}), flush=True)

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


def _stall_watchdog(ctx: RankContext, timeout_s: float) -> None:
    while True:
        time.sleep(min(1.0, timeout_s / 4))
        if _last_beat and time.monotonic() - _last_beat[0] > timeout_s:
            print(f"rank {ctx.rank}: no progress for {timeout_s:g}s (train.failure_timeout_s): stuck in a "
                  f"collective whose peers stopped or never joined; ending this rank", file=sys.stderr, flush=True)
            os._exit(STALL_EXIT_CODE)


def join_process_group(ctx: RankContext, backend: str = "gloo") -> None:
    """``torch.distributed.init_process_group`` through the driver's TCPStore (``rendezvous="torch"``).

    Collectives time out after the launch's failure timeout, so a dead peer ends this rank.
    """
    import datetime

    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=float(os.environ.get("DLPIPE_STALL_TIMEOUT_S", "120")))
    store = dist.TCPStore(os.environ["DLPIPE_STORE_ADDR"], int(os.environ["DLPIPE_STORE_PORT"]), ctx.size,
                          is_master=False, timeout=timeout)
    dist.init_process_group(backend, store=store, rank=ctx.rank, world_size=ctx.size, timeout=timeout)


def resolve_entry(entry: str) -> Callable[[dict[str, Any], RankContext], Any]:
    """Import ``module:function``."""
    module_name, _, func_name = entry.partition(":")
    if not func_name:
        raise ValueError(f"entry {entry!r} must look like 'package.module:function'")
    return getattr(importlib.import_module(module_name), func_name)


def context_from_env() -> RankContext:
    env = os.environ
    return RankContext(
        rank=int(env["RANK"]),
        size=int(env["WORLD_SIZE"]),
        local_rank=int(env["LOCAL_RANK"]),
        threads=int(env.get("DLPIPE_RANK_THREADS", "1")),
        attempt=int(env.get("DLPIPE_ATTEMPT", "0")),
    )


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
    """With ``DLPIPE_PIN_RANKS=1`` (``train.pin_ranks``), keep this process on its own cores; the cores.

    Called before any other thread starts, so the loader's, Petastorm's and Horovod's threads inherit
    it: on a host with a core per rank thread, a rank's helper threads then take time from their own
    rank only, instead of stalling the step of the rank they happen to land beside.
    """
    if os.environ.get(PIN_ENV) != "1" or not hasattr(os, "sched_setaffinity"):
        return []
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    cores = cores_for_rank(ctx.local_rank, local_size, ctx.threads, os.sched_getaffinity(0))
    if cores is None:
        ctx.log(f"not pinned to cores: {local_size} ranks x {ctx.threads} threads on this host but "
                f"{len(os.sched_getaffinity(0))} cores allowed")
        return []
    os.sched_setaffinity(0, cores)
    return sorted(cores)


def main(spec_path: str) -> int:
    with open(spec_path) as f:
        spec = json.load(f)
    ctx = context_from_env()
    cores = pin_rank(ctx)
    import torch

    # Without this every rank uses all cores of the machine and they fight (10x slower).
    torch.set_num_threads(ctx.threads)
    ctx.emit("started", pid=os.getpid(), host=os.environ.get("DLPIPE_HOSTNAME", ""), cores=cores)
    stall_timeout = float(os.environ.get("DLPIPE_STALL_TIMEOUT_S", "120"))
    threading.Thread(target=_stall_watchdog, args=(ctx, stall_timeout), daemon=True).start()
    try:
        result = resolve_entry(spec["entry"])(spec["payload"], ctx)
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        return 1
    ctx.emit(RESULT_EVENT, result=result)
    return 0
