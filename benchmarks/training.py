"""dlpipe's own training as the train and memory benchmarks launch it, timed from the call.

One launch is exactly what ``dlpipe train`` does for one attempt: ``pipelines.train.job.plan_job``
(the driver->rank contract) and ``pipelines.train.driver.launch`` (one barrier stage of Horovod
ranks), with a rank entry from ``benchmarks.ranks`` that wraps the trainer unchanged. The no-op
launch is the same stage through ``pipelines.launcher.run_ranks`` (its entry returns no training
result for ``launch`` to read). Measured:
per-epoch samples/s and data-wait fraction as the trainer reports them, the time from the call
to the end of rank 0's first step (split into phases), every rank's peak RSS, and the cores each
part of the job used from the end of the first epoch to the end of the last (``benchmarks.cpu_profile``).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from benchmarks import cpu_profile
from benchmarks.data import on_dataset
from benchmarks.harness import BenchError, bench_dir
from benchmarks.ranks import NOOP_ENTRY, TIMED_ENTRY
from pipelines.config import PipelineConfig
from pipelines.events import EpochEnded, MemoryUse, Probe, RankEvent
from pipelines.launcher import LaunchOptions, run_ranks
from pipelines.train.driver import launch
from pipelines.train.job import TrainJob, plan_job
from pipelines.train.rendezvous import HorovodRendezvous

RANKS = 2  # Horovod ranks of every dlpipe launch here (the machine the figures target has 2 cores)


def plan(config: PipelineConfig, dataset_dir: Path, run_dir: Path, *overrides: str) -> TrainJob:
    """The job ``dlpipe train`` would plan for ``dataset_dir`` on :data:`RANKS` ranks, writing to ``run_dir``."""
    cfg = on_dataset(config, dataset_dir, f"train.num_workers={RANKS}", *overrides)
    return plan_job(cfg, run_dir=str(run_dir))


def _mark(event: RankEvent) -> str:
    """What an event marks on the launch's time line: its kind, or a probe's name."""
    return event.name if isinstance(event, Probe) else event.kind


def train_once(spark: Any, config: PipelineConfig, dataset_dir: Path, epochs: int, run_name: str,
               entry: str = TIMED_ENTRY) -> dict[str, Any]:
    """One launch of dlpipe's trainer for ``epochs`` epochs on a fresh run folder; its timed figures."""
    run_dir = (bench_dir(config) / "runs" / run_name).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run each time: no resuming from an earlier checkpoint
    run_dir.mkdir(parents=True)
    job = plan(config, dataset_dir, run_dir, f"train.epochs={epochs}")
    seen: dict[str, float] = {}  # rank 0's event kind (a probe's name) -> when it first came
    rss: dict[int, int] = {}
    memory: dict[int, dict[str, int]] = {}  # rank -> parameters and optimizer bytes it held at the end

    cpu: list[tuple[float, cpu_profile.Snapshot]] = []  # at rank 0's first and latest epoch end

    def on_event(event: RankEvent) -> None:
        if event.rank == 0:
            seen.setdefault(_mark(event), event.time)
            if isinstance(event, EpochEnded):  # the figures leave the first epoch out: so does the profile
                cpu[1:] = [(time.perf_counter(), cpu_profile.snapshot())]
        if isinstance(event, Probe) and event.name == "bench_peak_rss":
            rss[event.rank] = event.data["bytes"]
        if isinstance(event, MemoryUse):
            memory[event.rank] = {"parameters": event.parameters, "optimizer_bytes": event.optimizer_bytes}

    called = time.time()
    result = launch(spark, job, entry=entry, on_event=on_event, description=f"dlpipe bench ({run_name})")
    history = result.history
    if "bench_first_step" not in seen:
        raise BenchError("rank 0 never reported the end of its first step")
    # Where the launch time goes: Spark stage + rank process + imports, then Horovod + model + broadcasts,
    # then the loader's first batch and the first step.
    marks = [("called", called), *[(k, seen[k]) for k in ("started", "plan", "bench_first_step") if k in seen]]
    phases = {f"{a}->{b}": round(tb - ta, 3) for (a, ta), (b, tb) in zip(marks, marks[1:])}
    return {"samples_per_s": [h.samples_per_s for h in history],
            "data_wait_fraction": [h.data_wait_fraction for h in history],
            "launch_seconds": seen["bench_first_step"] - called, "launch_phases": phases,
            "cpu_cores": (cpu_profile.breakdown(cpu[0][1], cpu[-1][1], cpu[-1][0] - cpu[0][0])
                          if len(cpu) > 1 else {}),
            "peak_rss_bytes": max(rss.values()) if rss else 0, "peak_rss_by_rank": rss, "memory_by_rank": memory,
            "artifact": result.artifact}


def noop_launch(spark: Any, config: PipelineConfig, dataset_dir: Path) -> tuple[float, float]:
    """(call -> every rank joined Horovod, call -> return) in seconds, for the same launch without training.

    The stage ``launch`` would run (same payload, ranks, timeouts, pinning) with Horovod's rendezvous,
    through ``run_ranks`` itself: the no-op entry's result is not a training result.
    """
    job = plan(config, dataset_dir, (bench_dir(config) / "runs" / "noop").resolve())
    tc = job.config.train
    joined: list[float] = []

    def on_event(event: RankEvent) -> None:
        if isinstance(event, Probe) and event.name == "bench_joined":
            joined.append(event.time)

    called = time.time()
    options = LaunchOptions(start_timeout_s=tc.start_timeout_s, failure_timeout_s=tc.failure_timeout_s,
                            gloo_iface=tc.gloo_iface, pin_cores=tc.pin_ranks, description="dlpipe bench (no-op launch)")
    run_ranks(spark, NOOP_ENTRY, job.to_dict(), num_workers=tc.num_workers,
              rendezvous=HorovodRendezvous(tc.failure_timeout_s), on_event=on_event, options=options)
    returned = time.time()
    if len(joined) != RANKS:
        raise BenchError(f"{len(joined)} of {RANKS} no-op ranks reported joining Horovod")
    return max(joined) - called, returned - called
