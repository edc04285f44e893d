"""Tiny rank entry points that prove the launcher and the stack: ``dlpipe check`` and the tests."""
from __future__ import annotations

from typing import Any

from pipelines.launcher.rank import RankContext


def allreduce_sum(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Each rank contributes ``rank + 1`` (times ``payload['scale']``); return the summed tensor."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    try:
        assert hvd.rank() == ctx.rank and hvd.size() == ctx.size, "Horovod disagrees with the launcher"
        value = torch.full((4,), float((ctx.rank + 1) * payload.get("scale", 1)))
        total = hvd.allreduce(value, op=hvd.Sum, name="smoke")
        ctx.log(f"rank {ctx.rank}/{ctx.size} allreduced {total.tolist()}")
        return {"sum": total.tolist(), "size": hvd.size(), "threads": torch.get_num_threads()}
    finally:
        hvd.shutdown()


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
    import time

    import horovod.torch as hvd
    import torch

    hvd.init()
    ctx.heartbeat()
    if ctx.rank == payload["rank"]:
        time.sleep(3600)
    hvd.allreduce(torch.ones(1), name="waits-for-a-live-but-stuck-peer")
