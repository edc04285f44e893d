"""Rank entry points that report what a rank process sees, for the launcher's tests.

Imported in rank processes the same way as ``rank_faults`` (``tests/`` is on the executors' ``PYTHONPATH``).
"""
from __future__ import annotations

import os
from typing import Any

from pipelines.launcher import RankContext

PROBED_PREFIXES = ("MALLOC_", "HOROVOD_CYCLE_TIME", "HOROVOD_FUSION_THRESHOLD", "DLPIPE_PIN_RANKS")


def environment(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Emit (every rank) and return (rank 0's) this rank's variables named by :data:`PROBED_PREFIXES`
    and the cores it may run on."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PROBED_PREFIXES)}
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    ctx.emit("environment", env=env, cores=cores)
    return {"env": env, "cores": cores}
