"""Training job, driver side (``dlpipe train`` / ``spark-submit pipelines/__main__.py train``).

Reads only the ETL's dataset (its manifest and Parquet); plans one :class:`~pipelines.train.job.TrainJob`
and launches one barrier stage of ``train.num_workers`` ranks (see ``pipelines.launcher``)
running :func:`pipelines.train.rank.train_rank` with ``train.strategy`` (Horovod, DDP, FSDP or
pipeline), through the rendezvous that strategy brings; retries a failed stage up to
``train.max_attempts`` times, each attempt resuming from the last checkpoint. The config was
validated before Spark started (``pipelines.preflight``); a setting only a rank can check comes back
as a ``ConfigError`` and is not retried.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Callable

from pyspark.sql import SparkSession

from pipelines import events, storage
from pipelines.checkpoint_store import latest_position
from pipelines.config import PipelineConfig, TrainConfig
from pipelines.dataset import VALIDATION_SPLIT, steps_per_epoch, view_folders
from pipelines.launcher import LaunchError, LaunchOptions, run_ranks
from pipelines.launcher.driver import explain_lost_executor
from pipelines.lease import check_leases
from pipelines.progress import EpochProgress
from pipelines.readers import ReadLease
from pipelines.runfolder import RunFolder
from pipelines.session import describe
from pipelines.tracking import Tracker, open_tracker
from pipelines.tracking.sinks import DatasetInput
from pipelines.train.job import TrainJob, TrainResult, plan_job, record_run_data
from pipelines.train.resources import training_profile
from pipelines.train.strategies import STRATEGIES
from pipelines.train.warm import check_warm_start, warm_start_artifact
from pipelines.train.world import NotEnoughSlots, Progress, more_slots, world_size

RANK_ENTRY = "pipelines.train.rank:train_rank"

EventHandler = Callable[[events.RankEvent], None]


class TrainError(RuntimeError):
    """Training cannot start or did not finish; the message says what to change."""


def main(spark: SparkSession, config: PipelineConfig, on_event: EventHandler | None = None,
         entry: str = RANK_ENTRY, tracker: Tracker | None = None, init_from: str = "") -> TrainResult:
    """Train ``config.model`` on the ETL output; return rank 0's summary (history, artifact).

    ``on_event(event)`` sees every event the ranks emit; ``entry`` is the rank function
    (tests and benchmarks wrap the trainer). ``tracker``: the run's (``dlpipe run``); without one,
    the job tracks itself as ``config.tracking`` says. ``init_from``: an artifact to warm-start from.
    """
    run_dir = config.run_dir()
    storage.check_location(run_dir, "workdir")
    # A registered reader of the dataset before its head is read: a full ETL or an append that
    # commits meanwhile keeps the versions this training (and its retries) read until it ends.
    with ReadLease(config.dataset_dir, f"dlpipe train (run {config.run_id})", config.lease.ttl_s) as reader:
        job = plan_job(config, run_dir, init_from=init_from or warm_start_artifact(config))
        reader.name(view_folders(job.data))
        return _planned(spark, job, on_event, entry, tracker)


def _planned(spark: SparkSession, job: TrainJob, on_event: EventHandler | None, entry: str,
             tracker: Tracker | None) -> TrainResult:
    """:func:`main` once the job is planned (and its data protected)."""
    config, run_dir = job.config, job.run_dir
    check_layout(job)  # every check before a tracked run starts
    if job.init_from:
        check_warm_start(job)
        print(f"dlpipe train: warm start from {storage.redact(job.init_from)} (its weights; the optimizer starts "
              f"fresh)", flush=True)
    record_run_data(job)
    if job.validation is None:
        print(f"dlpipe train: dataset {config.dataset} has no '{VALIDATION_SPLIT}' split: training without "
              f"per-epoch validation", flush=True)
    RunFolder(run_dir).write_config(config)
    if tracker is not None:
        return _attempts(spark, job, on_event, entry, tracker)
    with open_tracker(config, "train") as own:
        result = _attempts(spark, job, on_event, entry, own)
        own.log_artifact(job.metrics_file)
        return result


class _Grow(Exception):
    """Raised from the event handler to end a launch at a checkpoint so the run grows to more ranks."""

    def __init__(self, slots: int) -> None:
        super().__init__(f"{slots} task slots free")
        self.slots = slots


def _attempts(spark: SparkSession, job: TrainJob, on_event: EventHandler | None, entry: str,
              tracker: Tracker) -> TrainResult:
    """Launch the ranks, relaunching a failed stage up to ``train.max_attempts`` times; an elastic run
    (``train.num_workers=MIN..MAX``) relaunches on the ranks left without spending an attempt while its
    checkpoints advance, and grows back at a checkpoint when task slots return."""
    config, tc = job.config, job.config.train
    progress, world = EpochProgress(tc.epochs), Progress(job.checkpoints)
    size = _world_size(spark, tc)
    grow_after = (-1, -1)  # the checkpoint position from which a larger world may be launched
    view = job.data
    tracker.log_inputs([DatasetInput(f"{view.name} v{ref.version}", ref.identity,
                                     storage.join(view.location, ref.folder) if ref.folder else view.location)
                        for ref in view.versions])

    def handle(event: events.RankEvent) -> None:
        nonlocal grow_after
        if isinstance(event, events.EpochEnded):
            check_leases()  # a job that lost its run stops (the stage is cancelled) instead of writing it
            grow_after = (event.record.epoch, 0)
        elif isinstance(event, events.CheckpointSaved):  # inside an epoch: a point to grow from too
            grow_after = (event.epoch - 1, event.step)
        elif isinstance(event, events.StepProgress) and tc.elastic and size < tc.num_workers:
            _maybe_grow(spark, job, size, grow_after)
        progress(event)
        tracker.on_train_event(event)
        if on_event is not None:
            on_event(event)

    failures = 0
    for attempt in itertools.count():
        describe(spark, f"train {config.model.name} on {size} ranks ({tc.strategy})")
        world.mark()
        tracker.log_metrics({"world_size": size}, step=max(world.start[0], 0))  # the world size over time
        try:
            result = launch(spark, job, entry=entry, on_event=handle, attempt=attempt, num_workers=size,
                            description=f"dlpipe train {config.model.name} (attempt {attempt + 1})")
            if result.artifact:
                tracker.log_artifact(result.artifact, "model")
            return result
        except _Grow as grow:
            size = min(tc.num_workers, grow.slots)
            print(f"dlpipe train: task slots returned: growing to {size} ranks from {world.describe()}", flush=True)
        except LaunchError as e:
            cause = str(e).splitlines()[0].split("; then ")[0]  # what failed first; the rest is its consequence
            failures += 0 if tc.elastic and world.advanced() else 1  # an elastic run that progressed goes on
            if failures >= tc.max_attempts:
                counted = " without progress (an elastic run's relaunches after progress do not count)" \
                    if tc.elastic else ""
                raise TrainError(f"training failed after {failures} attempt(s){counted} "
                                 f"(train.max_attempts={tc.max_attempts}): {e}") from e
            if not tc.elastic:
                print(f"dlpipe train: attempt {attempt + 1} of {tc.max_attempts} failed; relaunching from the last "
                      f"checkpoint. Cause: {cause}", flush=True)
                continue
            size = _world_size(spark, tc)
            print(f"dlpipe train: {'node lost' if _lost_node(str(e)) else 'launch failed'}: continuing "
                  f"on {size} rank(s) from {world.describe()} (cause: {cause}; the ranks' logs hold the details)",
                  flush=True)
    raise AssertionError("unreachable")


def _lost_node(error: str) -> bool:
    """Whether a failed launch's error says an executor (a node) went away, in any of Spark's wordings."""
    return explain_lost_executor(error) is not None or re.search(
        r"executor \S+ (on \S+ )?was lost|ExecutorLostFailure|[Ww]orker lost", error) is not None


def _world_size(spark: SparkSession, tc: TrainConfig) -> int:
    """The next launch's ranks (:func:`pipelines.train.world.world_size`), as a TrainError below the minimum."""
    try:
        return world_size(spark.sparkContext, tc, tc.start_timeout_s)
    except NotEnoughSlots as e:
        raise TrainError(f"training cannot go on: {e}") from None


def _maybe_grow(spark: SparkSession, job: TrainJob, size: int, after: tuple[int, int]) -> None:
    """End the launch (raise :class:`_Grow`) when Spark has more task slots than ranks run and a
    checkpoint at or after ``after`` is in the store: the next launch resumes there on more ranks."""
    if after < (0, 0):
        return
    slots = more_slots(spark.sparkContext, size)
    if slots is not None and latest_position(job.checkpoints) >= after:
        raise _Grow(slots)


def launch(spark: SparkSession, job: TrainJob, *, entry: str = RANK_ENTRY, on_event: EventHandler | None = None,
           attempt: int = 0, description: str = "dlpipe train", num_workers: int = 0) -> TrainResult:
    """One barrier stage running ``entry`` (default: the trainer) on ``num_workers`` ranks (default:
    ``train.num_workers``); rank 0's result."""
    tc = job.config.train
    options = LaunchOptions(start_timeout_s=tc.start_timeout_s, failure_timeout_s=tc.failure_timeout_s,
                            gloo_iface=tc.gloo_iface, pin_cores=tc.pin_ranks, description=description,
                            resources=training_profile(spark, job.config))
    result = run_ranks(spark, entry, job.to_dict(), num_workers=num_workers or tc.num_workers,
                       rendezvous=STRATEGIES[tc.strategy].rendezvous(tc.failure_timeout_s),
                       on_event=on_event, attempt=attempt, options=options)
    return TrainResult.from_dict(result, "rank 0's training result")


def check_layout(job: TrainJob) -> None:
    """What the data must offer the ranks, caught before launching: with data parallelism a row
    group of the train split for each rank, and a batch for every rank's shard."""
    tc = job.config.train
    if not STRATEGIES[tc.strategy].data_parallel or tc.elastic:  # elastic: any world size cuts the epoch's rows
        return
    sizes = job.train.sizes
    if len(sizes) < tc.num_workers:
        raise TrainError(f"the train split of dataset {job.data.name} has {len(sizes)} row group(s) but "
                         f"train.num_workers={tc.num_workers}: lower train.num_workers, or re-run the ETL with a "
                         f"smaller etl.rows_per_row_group or more etl.output_files")
    # a step takes batch_size x grad_accumulation rows of each rank's shard, as the rank counts it
    if steps_per_epoch(sizes, tc.num_workers, tc.batch_size * tc.grad_accumulation) == 0:
        both = f" x train.grad_accumulation={tc.grad_accumulation}" if tc.grad_accumulation > 1 else ""
        raise TrainError(f"train.batch_size={tc.batch_size}{both} rows a step is larger than every rank's shard of "
                         f"the train split ({sum(sizes)} rows over {tc.num_workers} ranks): lower "
                         f"train.batch_size{' or train.grad_accumulation' if both else ''}")
