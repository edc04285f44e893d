"""Rank entry points for the benchmarks: dlpipe's own trainer, plus two measurements.

Launched as ``benchmarks.ranks:NAME`` through ``pipelines.train.driver.launch`` (the no-op through
``pipelines.launcher.run_ranks``, see ``benchmarks.training``), so the rank processes import this
module (the benchmarks put the repository root on ``PYTHONPATH``).

``timed_train_rank`` runs ``pipelines.train.rank.train_rank`` unchanged and adds two events
(:class:`~pipelines.events.Probe` events, told apart by name): the wall-clock time of the end of
the first training step (``bench_first_step``) and the rank's peak resident memory
(``bench_peak_rss``, ``data["bytes"]``). The step is seen through the heartbeat the trainer calls
at the start of every step: after the ``plan`` event (:class:`~pipelines.events.Planned`), the
second heartbeat marks the end of the first step.
"""
from __future__ import annotations

import resource
from dataclasses import dataclass
from typing import Any

from pipelines.events import Joined, Planned, Probe, RankEvent
from pipelines.launcher import RankContext
from pipelines.launcher.rank import as_context

# The entry strings the driver side launches (``module:function``, imported in the rank process).
TIMED_ENTRY = "benchmarks.ranks:timed_train_rank"
NOOP_ENTRY = "benchmarks.ranks:noop_rank"

_beats = [-1]  # heartbeats since the trainer's "plan" event (-1: not planned yet); one rank per process


@dataclass(frozen=True)
class _StepClock(RankContext):
    """A RankContext that emits ``bench_first_step`` when the first training step has ended."""

    def emit(self, event: RankEvent) -> None:
        super().emit(event)
        if isinstance(event, Planned):  # the steps start next
            _beats[0] = 0

    def heartbeat(self) -> None:
        super().heartbeat()
        if _beats[0] >= 0:
            _beats[0] += 1
            if _beats[0] == 2:  # a heartbeat at the start of each step: the second one ends step 0
                self.emit(Probe(name="bench_first_step"))


def peak_rss_bytes() -> int:
    """This process's peak resident set size (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed_train_rank(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """``pipelines.train.rank.train_rank`` with the first-step time and the peak RSS as events."""
    from pipelines.train.rank import train_rank

    clock = as_context(_StepClock, ctx)
    try:
        return train_rank(payload, clock)
    finally:
        ctx.emit(Probe(name="bench_peak_rss", data={"bytes": peak_rss_bytes()}))


def noop_rank(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Join Horovod and leave: what launching costs, without any training (the payload is ignored)."""
    import horovod.torch as hvd

    hvd.init()
    ctx.emit(Joined())  # every rank has joined: the driver may close Horovod's rendezvous
    ctx.emit(Probe(name="bench_joined"))
    try:
        return {"size": hvd.size()}
    finally:
        hvd.shutdown()
