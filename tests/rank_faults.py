"""Rank entry points that fail on purpose, for the launcher's failure tests.

They run in rank processes started by barrier tasks: ``tests/conftest.py`` puts this folder on
``PYTHONPATH`` before Spark starts, so the executors' Python workers (and their ranks) import it.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from pipelines import events
from pipelines.launcher import RankContext
from pipelines.launcher.rank import as_context


def raise_on_rank(payload: dict[str, Any], ctx: RankContext) -> None:
    """Fail on ``payload['rank']`` after Horovod is up; the others block in a collective."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    if ctx.rank == payload["rank"]:
        raise ValueError(f"injected failure on rank {ctx.rank}")
    hvd.allreduce(torch.ones(1), name="never-completes")


def killed_on_rank(payload: dict[str, Any], ctx: RankContext) -> None:
    """``payload['rank']`` says a last word and dies by SIGKILL (as the out-of-memory killer does),
    saying nothing else; the others block in a collective."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    if ctx.rank == payload["rank"]:
        ctx.log(f"rank {ctx.rank}: about to be killed")
        os.kill(os.getpid(), signal.SIGKILL)
    hvd.allreduce(torch.ones(1), name="never-completes")


def stall_on_rank(payload: dict[str, Any], ctx: RankContext) -> None:
    """``payload['rank']`` stays alive but never joins the collective: a silent deadlock."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    ctx.heartbeat()
    if ctx.rank == payload["rank"]:
        time.sleep(3600)
    hvd.allreduce(torch.ones(1), name="waits-for-a-live-but-stuck-peer")


def config_error_on_rank(payload: dict[str, Any], ctx: RankContext) -> None:
    """``payload['rank']`` finds a setting it cannot honour (as a rank on a GPU without bf16 would);
    the others wait in a collective."""
    import horovod.torch as hvd
    import torch

    from pipelines.train.precision import PrecisionError

    hvd.init()
    if ctx.rank == payload["rank"]:
        raise PrecisionError("config key 'train.precision' = 'bf16' but the GPU of this rank (cuda:0) has no "
                             "bfloat16 support: use fp16 or fp32", key="train.precision")
    hvd.allreduce(torch.ones(1), name="waits-for-the-rank-with-the-config-problem")


KILL_AT = (2, 13)  # (epoch, step) at which rank 0 dies on the first attempt
AWAIT_CHECKPOINT = "epoch-0001.step-000010.pt"  # the checkpoint written off the step loop before KILL_AT
AWAIT_TIMEOUT_S = 120.0  # the background write takes milliseconds quiet; a loaded 2-core machine gets 120 s
_checkpoints: list[str] = []  # this rank's checkpoint folder (set by the entry below)


@dataclass(frozen=True)
class _KillAtStep(RankContext):
    """Rank 0 SIGKILLs itself when it reports step KILL_AT (first attempt only): exactly there, every
    run, and only once the checkpoint of step 10 is in the store (it is written on a background
    thread, which a loaded machine may not have run yet: the kill must not race it)."""

    def emit(self, event: events.RankEvent) -> None:
        super().emit(event)
        if (isinstance(event, events.StepProgress) and self.attempt == 0
                and (event.epoch, event.step) == KILL_AT):
            _die_once_written(AWAIT_CHECKPOINT)


def _die_once_written(checkpoint: str) -> None:
    """SIGKILL this rank as soon as ``checkpoint`` is in its run's checkpoint folder (written off the step
    loop: the kill must not race that write), or fail after :data:`AWAIT_TIMEOUT_S`."""
    from pipelines import storage

    deadline = time.monotonic() + AWAIT_TIMEOUT_S
    while not storage.exists(storage.join(_checkpoints[0], checkpoint)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{checkpoint} was not written within {AWAIT_TIMEOUT_S} s")
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)


def train_rank_killed_inside_epoch_2(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """The real trainer, with rank 0 killed at step 13 of epoch 2 on the first attempt."""
    from pipelines.train.job import TrainJob
    from pipelines.train.rank import train_rank

    _checkpoints.append(TrainJob.from_dict(payload).checkpoints)
    return train_rank(payload, as_context(_KillAtStep, ctx))


FAULT_FILE = "fault.json"  # in the workdir: which storage fault the next training's rank meets


def train_rank_with_storage_fault(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """The real trainer, with the storage fault ``<workdir>/fault.json`` describes (``rank``, ``kind``,
    ``at``, ``log``: tests/faults.py) installed in that rank on the first attempt; a kill is SIGKILL."""
    import json
    from pathlib import Path

    from faults import Fault, install
    from pipelines.train.job import TrainJob
    from pipelines.train.rank import train_rank

    spec_file = Path(TrainJob.from_dict(payload).run_dir).parent.parent / FAULT_FILE
    if spec_file.is_file() and ctx.attempt == 0:
        spec = json.loads(spec_file.read_text())
        if spec["rank"] == ctx.rank:
            install(Fault(spec["kind"], spec["at"], log=spec["log"],
                          on_kill=lambda: os.kill(os.getpid(), signal.SIGKILL)))
    return train_rank(payload, ctx)



ELASTIC_KILL_AT = (2, 8)  # (epoch, step) at which rank 0 of an elastic run dies on the first attempt
ELASTIC_AWAIT = "epoch-0001.step-000005.pt"  # the checkpoint that must be in the store before the kill
CONSUMED = "consumed"  # in the run folder: which records each rank trained on, per attempt, epoch and step


def train_rank_recording_records(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """The real trainer of an elastic run, each rank writing the ids (a hash of the row's features) of
    the records it trains on, step by step, to ``<run>/consumed/attempt-A.rank-R.jsonl``."""
    return _recording(payload, ctx, kill=False)


def train_rank_recording_records_killed(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """:func:`train_rank_recording_records`, rank 0 SIGKILLed at :data:`ELASTIC_KILL_AT` on the first
    attempt, once :data:`ELASTIC_AWAIT` is in the store."""
    return _recording(payload, ctx, kill=True)


def _recording(payload: dict[str, Any], ctx: RankContext, kill: bool) -> dict[str, Any]:
    import hashlib
    import json
    from pathlib import Path

    from pipelines.train import elastic
    from pipelines.train.job import TrainJob
    from pipelines.train.rank import train_rank

    job = TrainJob.from_dict(payload)
    run_dir = Path(job.run_dir)
    out = run_dir / CONSUMED / f"attempt-{ctx.attempt}.rank-{ctx.rank}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    real_batches = elastic.EpochPlan._batches

    def recorded(plan, split_files, rank, normalize, feature_shape):
        steps = range(plan.steps_done, plan.total_steps)
        with out.open("a") as log:
            for step, batch in zip(steps, real_batches(plan, split_files, rank, normalize, feature_shape)):
                if plan.rows(rank, step):  # not a placeholder
                    ids = [hashlib.sha1(row.numpy().tobytes()).hexdigest()[:16] for row in batch["features"]]
                    log.write(json.dumps({"epoch": plan.order.epoch + 1, "step": step + 1, "ids": ids}) + "\n")
                    log.flush()
                yield batch

    elastic.EpochPlan._batches = recorded  # type: ignore[method-assign]
    _checkpoints.append(job.checkpoints)
    return train_rank(payload, as_context(_ElasticKill, ctx) if kill else ctx)


@dataclass(frozen=True)
class _ElasticKill(RankContext):
    def emit(self, event: events.RankEvent) -> None:
        super().emit(event)
        if (isinstance(event, events.StepProgress) and self.attempt == 0 and self.rank == 0
                and (event.epoch, event.step) >= ELASTIC_KILL_AT):
            _die_once_written(ELASTIC_AWAIT)
