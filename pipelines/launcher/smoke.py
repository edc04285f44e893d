"""``dlpipe check``: N Horovod ranks in a barrier stage allreduce a tensor (proves the launcher and the stack)."""
from __future__ import annotations

from typing import Any

from pyspark.sql import SparkSession

from pipelines.config import PipelineConfig
from pipelines.launcher.driver import run_ranks
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


def main(spark: SparkSession, config: PipelineConfig) -> dict[str, Any]:
    """Run :func:`allreduce_sum` on ``train.num_workers`` ranks and check the sum."""
    n = config.train.num_workers
    result = run_ranks(spark, "pipelines.launcher.smoke:allreduce_sum", {}, num_workers=n,
                         start_timeout_s=config.train.start_timeout_s, gloo_iface=config.train.gloo_iface)
    expected = float(n * (n + 1) // 2)
    if result["sum"] != [expected] * 4:
        raise RuntimeError(f"dlpipe check: {n} ranks allreduced {result['sum']}, expected {expected} each")
    print(f"dlpipe check: {n} Horovod ranks allreduced {result['sum']}")
    return result
