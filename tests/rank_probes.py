"""Rank entry points that report what a rank process sees, for the launcher's tests.

Imported in rank processes the same way as ``rank_faults`` (``tests/`` is on the executors' ``PYTHONPATH``).
"""
from __future__ import annotations

import os
import sys
from typing import Any

from pipelines.events import Probe
from pipelines.launcher import RankContext

# Variables through which settings used to reach ranks: none of them may be set by dlpipe now.
PROBED_PREFIXES = ("MALLOC_", "HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD", "DLPIPE_")


def environment(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Emit (every rank) and return (rank 0's) this rank's variables named by :data:`PROBED_PREFIXES`,
    the cores it may run on, and whether pyspark or the launcher's driver side were imported."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PROBED_PREFIXES)}
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    seen = {"env": env, "cores": cores, "pyspark_loaded": any(m.split(".")[0] == "pyspark" for m in sys.modules),
            "driver_loaded": "pipelines.launcher.driver" in sys.modules}
    ctx.emit(Probe(name="environment", data=seen))
    return seen


def horovod_settings(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Start the Horovod strategy from the shipped training job and report what Horovod was told
    (the variables it reads at init), and the cores this rank runs on."""
    from pipelines.train.job import TrainJob
    from pipelines.train.strategies import make_strategy

    strategy = make_strategy(ctx, TrainJob.from_dict(payload).config.train)
    strategy.start()
    try:
        env = {k: v for k, v in os.environ.items() if k.startswith("HOROVOD_")}
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        ctx.emit(Probe(name="horovod_settings", data={"env": env, "cores": cores}))
        return {"env": env}
    finally:
        strategy.stop()
