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

from pipelines.events import Joined, Planned, Probe, RankEvent, StepProgress
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


KILLED_ENTRY = "benchmarks.ranks:killed_train_rank"
KILL_FRACTION = 0.7  # rank 0 dies this far into the last epoch, on the first attempt
KILLED_AT_FILE = "bench-killed-at.json"  # in the run folder: when and at which step rank 0 died


@dataclass(frozen=True)
class _KilledInLastEpoch(_StepClock):
    """:class:`_StepClock` whose rank 0, on the first attempt, SIGKILLs itself :data:`KILL_FRACTION` into
    the last epoch (once the checkpoint before that point is in the store: the kill must not race its
    background write), after writing the time and step to :data:`KILLED_AT_FILE`."""

    def emit(self, event: RankEvent) -> None:
        super().emit(event)
        if not (isinstance(event, StepProgress) and self.attempt == 0 and self.rank == 0):
            return
        if event.epoch < _plan[0]["epochs"] or event.step < KILL_FRACTION * event.steps:
            return
        import json
        import os
        import signal
        import time

        from pipelines import storage
        from pipelines.checkpoint_store import latest_position

        every = _plan[0]["checkpoint_every_steps"]
        wanted = (event.epoch - 1, event.step // every * every if every else 0)
        deadline = time.monotonic() + 120
        while latest_position(_plan[0]["checkpoints"]) < wanted and time.monotonic() < deadline:
            time.sleep(0.02)
        storage.write_text(storage.join(_plan[0]["run_dir"], KILLED_AT_FILE),
                           json.dumps({"time": time.time(), "epoch": event.epoch, "step": event.step}))
        os.kill(os.getpid(), signal.SIGKILL)


_plan: list[dict[str, Any]] = []  # what the killing context needs of the job (one rank per process)


def killed_train_rank(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """``pipelines.train.rank.train_rank`` with the first-step probe, rank 0 killed inside the last epoch
    on the first attempt (the elastic benchmark)."""
    from pipelines.train.job import TrainJob
    from pipelines.train.rank import train_rank

    job = TrainJob.from_dict(payload)
    _plan.append({"epochs": job.config.train.epochs, "checkpoint_every_steps": job.config.train.checkpoint_every_steps,
                  "checkpoints": job.checkpoints, "run_dir": job.run_dir})
    return train_rank(payload, as_context(_KilledInLastEpoch, ctx))
