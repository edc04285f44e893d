"""Training job, driver side (``dlpipe train`` / ``spark-submit pipelines/__main__.py train``).

Reads only the ETL's manifest and Parquet; plans one :class:`~pipelines.train.job.TrainJob` and
launches one barrier stage of ``train.num_workers`` ranks (see ``pipelines.launcher``) running
:func:`pipelines.train.rank.train_rank` with ``train.strategy`` (Horovod, DDP, FSDP or pipeline); retries a failed stage up to
``train.max_attempts`` times, each attempt resuming from the last checkpoint.
"""
from __future__ import annotations

from typing import Any, Callable

from pyspark.sql import SparkSession

from pipelines.config import PipelineConfig, TrainConfig, to_yaml
from pipelines.dataset import VALIDATION_SPLIT, row_group_sizes
from pipelines.device import DeviceError
from pipelines.launcher import LaunchError, run_ranks
from pipelines.launcher.rank import PIN_ENV
from pipelines.progress import EpochProgress
from pipelines.publish import check_writable, write_text_atomic
from pipelines.session import check_device, describe
from pipelines.tracking import Tracker, open_tracker
from pipelines.train.job import TrainJob, plan_job
from pipelines.train.strategies import STRATEGIES

RANK_ENTRY = "pipelines.train.rank:train_rank"

EventHandler = Callable[[int, dict[str, Any]], None]


class TrainError(RuntimeError):
    """Training cannot start or did not finish; the message says what to change."""


def main(spark: SparkSession, config: PipelineConfig, on_event: EventHandler | None = None,
         entry: str = RANK_ENTRY, tracker: Tracker | None = None) -> dict[str, Any]:
    """Train ``config.model`` on the ETL output; return rank 0's summary (history, artifact path).

    ``on_event(rank, event)`` sees every event the ranks emit; ``entry`` is the rank function
    (tests and benchmarks wrap the trainer). ``tracker``: the run's (``dlpipe run``); without one,
    the job tracks itself as ``config.tracking`` says.
    """
    tc = config.train
    try:
        check_device(spark, tc.device, "train.device")
    except DeviceError as e:
        raise TrainError(str(e)) from None
    check_writable(config.run_dir(), "workdir")
    job = plan_job(config)
    check_layout(job, tc.num_workers)  # every check before a tracked run starts
    if not job.validation_path:
        print(f"dlpipe train: dataset {config.dataset} has no '{VALIDATION_SPLIT}' split: training without "
              f"per-epoch validation", flush=True)
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    if tracker is not None:
        return _attempts(spark, job, on_event, entry, tracker)
    with open_tracker(config, "train") as own:
        result = _attempts(spark, job, on_event, entry, own)
        own.log_artifact(job.metrics_file)
        return result


def _attempts(spark: SparkSession, job: TrainJob, on_event: EventHandler | None, entry: str,
              tracker: Tracker) -> dict[str, Any]:
    """Launch the ranks, relaunching a failed stage up to ``train.max_attempts`` times."""
    config, tc = job.config, job.config.train
    progress = EpochProgress(tc.epochs)

    def handle(rank: int, event: dict[str, Any]) -> None:
        progress(rank, event)
        tracker.on_train_event(rank, event)
        if on_event is not None:
            on_event(rank, event)

    describe(spark, f"train {config.model.name} on {tc.num_workers} ranks ({tc.strategy})")
    for attempt in range(tc.max_attempts):
        try:
            result = launch(spark, job, entry=entry, on_event=handle, attempt=attempt,
                            description=f"dlpipe train {config.model.name} (attempt {attempt + 1})")
            if "artifact" in result:
                tracker.log_artifact(result["artifact"], "model")
            return result
        except LaunchError as e:
            if attempt + 1 >= tc.max_attempts:
                raise TrainError(f"training failed after {tc.max_attempts} attempt(s) "
                                 f"(train.max_attempts={tc.max_attempts}): {e}") from e
            print(f"dlpipe train: attempt {attempt + 1} of {tc.max_attempts} failed; relaunching from the last "
                  f"checkpoint. Cause: {str(e).splitlines()[0]}", flush=True)
    raise AssertionError("unreachable")


# glibc's default (dynamic) thresholds hand every step's large activation buffers back to the OS
# and fault them in again on the next step; in a rank process with loader and Horovod threads
# beside the trainer, that kernel work (page faults, unmapping) slowed training measurably
# (docs/benchmarks.md, dlpipe_2_ranks_malloc_default). Allocations below 32 MiB (glibc's cap)
# come from the heap, and up to 64 MiB of free heap stays mapped. train.malloc_tuning=false
# leaves the executors' own settings.
RANK_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(64 << 20)}


def rank_env(tc: TrainConfig) -> dict[str, str]:
    """What the training settings add to every rank process's environment."""
    env = {"HOROVOD_CYCLE_TIME": str(tc.horovod_cycle_time_ms),
           "HOROVOD_FUSION_THRESHOLD": str(tc.horovod_fusion_threshold_mb * 1024 * 1024)}
    if tc.malloc_tuning:
        env.update(RANK_MALLOC_ENV)
    if tc.pin_ranks:
        env[PIN_ENV] = "1"
    return env


def launch(spark: SparkSession, job: TrainJob, *, entry: str = RANK_ENTRY, on_event: EventHandler | None = None,
           attempt: int = 0, description: str = "dlpipe train") -> dict[str, Any]:
    """One barrier stage running ``entry`` (default: the trainer) on the job's ranks; rank 0's result."""
    tc = job.config.train
    return run_ranks(spark, entry, job.to_payload(), num_workers=tc.num_workers,
                     rendezvous=STRATEGIES[tc.strategy].rendezvous,
                     start_timeout_s=tc.start_timeout_s, failure_timeout_s=tc.failure_timeout_s,
                     gloo_iface=tc.gloo_iface, extra_env=rank_env(tc), on_event=on_event, attempt=attempt,
                     description=description)


def check_layout(job: TrainJob, num_workers: int) -> None:
    """What the ranks need, caught before launching: with data parallelism a row group of their own
    each; with the pipeline, a model that can be cut into that many stages."""
    tc = job.config.train
    from pipelines.train.rank import build_model

    phases = [p.name for p in build_model(job).training_phases()]
    if len(phases) > 1 and not STRATEGIES[tc.strategy].multi_phase:
        raise TrainError(f"model {job.config.model.name!r} trains with {len(phases)} optimizers ({', '.join(phases)}); "
                         f"train.strategy={tc.strategy} supports one: use train.strategy=horovod or ddp")
    if not STRATEGIES[tc.strategy].data_parallel:
        try:
            build_model(job).pipeline_stages(num_workers)
        except ValueError as e:
            raise TrainError(f"train.strategy=pipeline with train.num_workers={num_workers}: {e}") from e
        return
    train_path = job.train_path
    groups = len(row_group_sizes(train_path))
    if groups < num_workers:
        raise TrainError(f"the train split {train_path} has {groups} row group(s) but train.num_workers="
                         f"{num_workers}: lower train.num_workers, or re-run the ETL with a smaller "
                         f"etl.rows_per_row_group or more etl.output_files")
