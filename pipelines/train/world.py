"""How many ranks a training launch runs, asked of Spark (issue 32, ``train.num_workers=MIN..MAX``).

A fixed-size run always launches ``train.num_workers`` ranks. An elastic one launches as many as the
cluster can run at once within its range: the task slots of the executors Spark has now (the number
its own barrier-stage check uses), waiting at most ``train.start_timeout_s`` for the minimum and
failing with what was there. :class:`Progress` tells the driver whether a failed launch moved the
run forward (a newer checkpoint), which is what lets an elastic run relaunch without spending
``train.max_attempts``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from pyspark import SparkContext

from pipelines.checkpoint_store import latest_position
from pipelines.config import TrainConfig
from pipelines.launcher.plan import local_slots

POLL_S = 1.0  # how often a wait for task slots asks Spark again


class NotEnoughSlots(RuntimeError):
    """Fewer task slots than the run's minimum world size stayed so past the wait."""


def task_slots(sc: SparkContext) -> int | None:
    """Tasks the application's executors can run at once now (None: Spark would not say)."""
    local = local_slots(str(sc.master), int(sc.getConf().get("spark.task.cpus") or "1"))
    if local is not None:
        return local
    try:  # the count Spark's barrier-stage check uses (private[spark] in Scala, public in the JVM)
        jvm_context = sc._jsc.sc()
        profile = jvm_context.resourceProfileManager().defaultResourceProfile()
        return int(jvm_context.maxNumConcurrentTasks(profile))
    except Exception:  # noqa: BLE001 - another Spark build: launch the maximum and let the barrier check say
        return None


def world_size(sc: SparkContext, tc: TrainConfig, wait_s: float) -> int:
    """Ranks for the next launch: ``train.num_workers`` (fixed), or as many task slots as Spark has
    within the elastic range, waiting up to ``wait_s`` for the minimum."""
    low, high = tc.world_range
    if not tc.elastic:
        return high
    deadline = time.monotonic() + wait_s
    while True:
        slots = task_slots(sc)
        if slots is None:
            return high
        if slots >= low:
            return min(high, slots)
        if time.monotonic() >= deadline:
            raise NotEnoughSlots(f"the cluster runs {slots} task(s) at once, below the elastic minimum of "
                                 f"train.num_workers={low}..{high}, and stayed so for {wait_s:.0f} s "
                                 f"(train.start_timeout_s): add executors, or lower the minimum")
        time.sleep(POLL_S)


def more_slots(sc: SparkContext, ranks: int) -> int | None:
    """The task slots Spark has now when they are more than ``ranks`` (a launch could grow), else None."""
    slots = task_slots(sc)
    return slots if slots is not None and slots > ranks else None


@dataclass
class Progress:
    """The newest checkpoint's position (epochs, steps) when a launch started; whether a later look
    finds a newer one."""

    folder: str
    start: tuple[int, int] = (-1, -1)

    def mark(self) -> None:
        """Remember where the run stands now (before a launch)."""
        self.start = latest_position(self.folder)

    def advanced(self) -> bool:
        """A checkpoint newer than the mark was written since."""
        return latest_position(self.folder) > self.start

    def describe(self) -> str:
        """'epoch 5 step 120' for the position a relaunch resumes from."""
        epochs, step = latest_position(self.folder)
        if epochs < 0:
            return "the start"
        return f"epoch {epochs + 1} step {step}" if step else f"epoch {epochs + 1}"
