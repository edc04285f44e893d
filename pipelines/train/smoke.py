"""``dlpipe check``: N Horovod ranks in a barrier stage allreduce a tensor (proves the launcher and the stack)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import SparkSession

from pipelines.config import PipelineConfig
from pipelines.events import Joined
from pipelines.formats import Record
from pipelines.launcher import LaunchOptions, RankContext, run_ranks
from pipelines.train.rendezvous import HorovodRendezvous

ENTRY = "pipelines.train.smoke:allreduce_sum"


@dataclass(frozen=True)
class CheckResult(Record):
    """What ``dlpipe check`` returns: rank 0's view of the allreduce."""

    sum: list[float]
    size: int
    threads: int


def allreduce_sum(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Each rank contributes ``rank + 1`` (times ``payload['scale']``); return the summed tensor."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    ctx.emit(Joined())
    try:
        assert hvd.rank() == ctx.rank and hvd.size() == ctx.size, "Horovod disagrees with the launcher"
        value = torch.full((4,), float((ctx.rank + 1) * payload.get("scale", 1)))
        total = hvd.allreduce(value, op=hvd.Sum, name="smoke")
        ctx.log(f"rank {ctx.rank}/{ctx.size} allreduced {total.tolist()}")
        return {"sum": total.tolist(), "size": hvd.size(), "threads": torch.get_num_threads()}
    finally:
        hvd.shutdown()


def main(spark: SparkSession, config: PipelineConfig) -> CheckResult:
    """Run :func:`allreduce_sum` on ``train.num_workers`` ranks and check the sum."""
    tc = config.train
    n = tc.num_workers
    options = LaunchOptions(start_timeout_s=tc.start_timeout_s, failure_timeout_s=tc.failure_timeout_s,
                            gloo_iface=tc.gloo_iface, description="dlpipe check")
    result = CheckResult.from_dict(run_ranks(
        spark, ENTRY, {}, num_workers=n, rendezvous=HorovodRendezvous(tc.failure_timeout_s), options=options))
    expected = float(n * (n + 1) // 2)
    if result.sum != [expected] * 4:
        raise RuntimeError(f"dlpipe check: {n} ranks allreduced {result.sum}, expected {expected} each")
    print(f"dlpipe check: {n} Horovod ranks allreduced {result.sum}")
    return result
