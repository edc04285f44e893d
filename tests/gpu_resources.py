"""Spark GPU scheduling without GPUs: a ``local-cluster`` whose workers discover fake GPUs, and a
rank entry that reports what its barrier task handed it (for tests/spark/launcher/test_gpu_resources.py).

``python tests/gpu_resources.py OUT.json DISCOVERY_SCRIPT`` is the driver: its own process, since the
test session's ``local[2]`` SparkSession cannot schedule resources. The rank processes import this
module by name (``tests/`` is on their path).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def device_probe(payload: dict[str, Any], ctx: Any) -> dict[str, Any]:
    """Rank entry: the GPUs the task gave this rank, and the device ``train.device=auto`` picks."""
    from pipelines.device import resolve_device, visible_gpus
    from pipelines.events import Probe

    seen = {"cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "task_gpus": list(ctx.gpus),
            **resolve_device("auto", ctx.gpus, visible_gpus(), ctx.local_rank).describe()}
    ctx.emit(Probe(name="gpus", data=seen))
    return seen


def task_gpus(_: Any) -> list[list[str]]:
    """What an ordinary (ETL-like) task was given: its GPU addresses, [] when none."""
    from pyspark import TaskContext

    gpu = TaskContext.get().resources().get("gpu")
    return [list(gpu.addresses) if gpu is not None else []]


def main(out: str, discovery_script: str, mode: str = "app") -> None:
    """``mode`` app: every task asks for a GPU (spark.task.resource.gpu.amount=1); stage: only the
    training stage does, through ``train.gpus_per_rank`` (pipelines.train.resources), and an
    ordinary job before it reports what its tasks were given."""
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "tests"), str(REPO_ROOT),
                                                os.environ.get("PYTHONPATH", "")])
    sys.path[:0] = [str(REPO_ROOT)]
    from pipelines.config import load_config
    from pipelines.launcher import LaunchOptions, run_ranks
    from pipelines.session import get_spark
    from pipelines.train.resources import training_profile

    gpu = {"amount": "1", "discoveryScript": discovery_script}
    task_amount = {"spark.task.resource.gpu.amount": "1"} if mode == "app" else {}
    spark = get_spark("dlpipe-gpu-resources", master="local-cluster[2,1,1024]", conf={
        "spark.driver.host": "127.0.0.1", "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
        **{f"spark.worker.resource.gpu.{k}": v for k, v in gpu.items()},
        **{f"spark.executor.resource.gpu.{k}": v for k, v in gpu.items()},
        **task_amount, "spark.executor.memory": "512m",
        "spark.scheduler.minRegisteredResourcesRatio": "1.0",
        "spark.scheduler.maxRegisteredResourcesWaitingTime": "60s"})
    try:
        found: dict[str, Any] = {"ordinary_tasks": []}
        if mode == "stage":
            found["ordinary_tasks"] = spark.sparkContext.parallelize(range(4), 4).mapPartitions(task_gpus).collect()
        profile = training_profile(spark, load_config(None, ["train.gpus_per_rank=1"])) if mode == "stage" else None
        events: list[dict[str, Any]] = []
        run_ranks(spark, "gpu_resources:device_probe", {}, num_workers=2,
                  options=LaunchOptions(start_timeout_s=90, failure_timeout_s=60, resources=profile),
                  on_event=lambda e: events.append({"rank": e.rank, **e.data}) if e.kind == "probe" else None)
        found["ranks"] = sorted(events, key=lambda e: e["rank"])
        Path(out).write_text(json.dumps(found))
    finally:
        spark.stop()


if __name__ == "__main__":
    main(*sys.argv[1:4])
