"""Rank entry points that fail on purpose, for the launcher's failure tests.

They run in rank processes started by barrier tasks: ``tests/conftest.py`` puts this folder on
``PYTHONPATH`` before Spark starts, so the executors' Python workers (and their ranks) import it.
"""
from __future__ import annotations

import time
from typing import Any

from pipelines.launcher import RankContext


def raise_on_rank(payload: dict[str, Any], ctx: RankContext) -> None:
    """Fail on ``payload['rank']`` after Horovod is up; the others block in a collective."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    if ctx.rank == payload["rank"]:
        raise ValueError(f"injected failure on rank {ctx.rank}")
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
