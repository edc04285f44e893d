"""Rank side of training: one rank's loop (runs in the rank process, not in Spark).

The loop never branches on the model kind (it calls the strategy, which calls the model's own
``loss``) nor on the strategy (Horovod, DDP, FSDP or pipeline: ``pipelines.train.strategies``).
Rank 0 writes checkpoints (off the step loop: ``pipelines.checkpoint_store.CheckpointWriter``),
``metrics.jsonl`` and the final model artifact, through ``pipelines.storage``, so the run folder
may be on any store. Everything a rank knows arrives as one :class:`~pipelines.train.job.TrainJob`
and its :class:`~pipelines.launcher.RankContext`. Its device (a GPU or the CPU) is resolved once
at start (``pipelines.device``); batches move there in one place (``to_device``).
"""
from __future__ import annotations

import ctypes
import itertools
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

import models
from pipelines import events, storage
from pipelines.artifact import Normalizer, artifact_meta, load_state, save_artifact
from pipelines.checkpoint_store import CheckpointWriter
from pipelines.config import TrainConfig
from pipelines.config import from_dict as config_from_dict
from pipelines.dataset import SplitFiles, shard_rows, steps_per_epoch
from pipelines.device import DeviceChoice, activate, resolve_device, to_device, visible_gpus
from pipelines.errors import ConfigError
from pipelines.events import EpochRecord
from pipelines.launcher import RankContext
from pipelines.train import loader
from pipelines.train.checkpoint import RankState, TrainCheckpoint, latest_checkpoint
from pipelines.train.elastic import EpochPlan, epoch_steps, global_batch
from pipelines.train.elastic_order import Remaining
from pipelines.train.job import RankDevice, TrainJob, TrainResult
from pipelines.train.strategies import Strategy, make_strategy

PROGRESS_EVENTS_PER_EPOCH = 20
# glibc's default (dynamic) thresholds hand every step's large activation buffers back to the OS
# and fault them in again on the next step; in a rank process with loader and Horovod threads
# beside the trainer, that kernel work slowed training measurably (docs/benchmarks.md,
# dlpipe_2_ranks_malloc_default). With train.malloc_tuning, allocations below 32 MiB come from the
# heap and up to 64 MiB of free heap stays mapped (mallopt; the same as MALLOC_*_THRESHOLD_).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
RANK_MALLOC = {M_MMAP_THRESHOLD: 32 << 20, M_TRIM_THRESHOLD: 64 << 20}


def train_rank(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Train on this rank's part; rank 0 returns the run's result (``pipelines.train.driver.TrainResult``)."""
    job = TrainJob.from_dict(payload)
    with storage.using_options(job.storage_options):  # every store call of the rank, its loader's threads too
        tc = job.config.train
        if tc.malloc_tuning:
            tune_malloc()
        choice = resolve_device(tc.device, ctx.gpus, visible_gpus(), ctx.local_rank)
        # The driver prints it as "[rank N] training on cuda:0 (Spark task GPU 3), ...".
        ctx.log(f"training on {choice.device} ({choice.reason}), train.precision={tc.precision}")
        strategy = make_strategy(ctx, tc, activate(choice))
        strategy.start()
        ctx.heartbeat()  # arm the stall watchdog: set-up and resuming are collectives too
        try:
            return _train(strategy, job, ctx, choice)
        finally:
            strategy.stop()


def tune_malloc() -> None:
    """Keep freed memory for the next step (see :data:`RANK_MALLOC`); no-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    for option, value in RANK_MALLOC.items():
        libc.mallopt(option, value)


@dataclass
class Position:
    """Where an epoch starts: at its first step, or (resumed) ``step`` steps in with the sums so far."""

    epoch: int
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    remaining: Remaining | None = None  # elastic: the epoch's positions not used yet (None: all of them)


def build_model(job: TrainJob) -> models.DlpipeModel:
    """The configured model, initialized from ``train.seed`` (identical on every rank), or from
    the weights of ``job.init_from`` (a warm start; the optimizer starts fresh)."""
    config, manifest = job.config, job.data.manifest
    torch.manual_seed(config.train.seed)
    model = models.build(config.model.name, feature_shape=tuple(manifest.feature_shape),
                         num_classes=len(manifest.label_names), **config.model.params)
    if job.init_from:
        state, _ = load_state(job.init_from)
        model.load_state_dict(state)
    return model


def _train(strategy: Strategy, job: TrainJob, ctx: RankContext, choice: DeviceChoice) -> dict[str, Any]:
    """One rank's run: set up the model, resume from the newest checkpoint, train the remaining
    epochs, then (rank 0) write the artifact; returns this rank's result."""
    tc = job.config.train
    manifest = job.data.manifest
    normalize = Normalizer.from_stats(manifest.normalization, manifest.feature_shape)
    # the linear scaling rule: lr grows with the batch a step averages (ranks x accumulated batches;
    # elastic: the maximum world size, whose global batch every size keeps)
    workers = tc.num_workers if tc.elastic else ctx.size
    lr = tc.lr * (workers * tc.grad_accumulation if tc.scale_lr_by_workers and strategy.data_parallel else 1)
    strategy.setup(build_model(job).to(strategy.device), lambda params: _optimizer(tc, params, lr))
    devices = strategy.allgather_object({"rank": ctx.rank, **choice.describe()})
    ctx.emit(events.DeviceChosen(device=choice.device, gpu=choice.gpu, reason=choice.reason, precision=tc.precision))
    resume = _resume(strategy, job, ctx)
    start_epoch = resume.epoch if resume is not None else 0
    steps = _plan_steps(strategy, job, ctx, start_epoch)
    checkpoints = _Checkpoints(strategy, job, ctx, history=list(resume.history) if resume is not None else [],
                               writer=CheckpointWriter(job.checkpoints) if ctx.rank == 0 else None)
    _train_epochs(strategy, job, ctx, checkpoints, resume, steps, normalize)
    return _result(strategy, job, ctx, checkpoints, devices)


def _resume(strategy: Strategy, job: TrainJob, ctx: RankContext) -> TrainCheckpoint | None:
    """The checkpoint to resume from, if any: rank 0 reads the newest and broadcasts it; every rank
    checks it fits this run and restores its own part of it."""
    resume: TrainCheckpoint | None = strategy.broadcast_object(_newest_checkpoint(job, ctx) if ctx.rank == 0 else None)
    if resume is None:
        return None
    _check_resumable(resume, job, ctx.size)
    strategy.load(resume.model, resume.optimizer)
    inside = f", {resume.step} steps into epoch {resume.epoch + 1}" if resume.step else ""
    ctx.log(f"resuming from checkpoint after epoch {resume.epoch}{inside}")
    if ctx.rank == 0:
        ctx.emit(events.Resumed(epochs_done=resume.epoch, step=resume.step, history=list(resume.history)))
    return resume


def _newest_checkpoint(job: TrainJob, ctx: RankContext) -> TrainCheckpoint | None:
    """Rank 0's read of the newest checkpoint that decodes; the ones that do not are skipped, and logged."""
    unusable: list[str] = []

    def skipped(location: str, error: Exception) -> None:
        unusable.append(storage.redact(location))
        ctx.log(f"checkpoint {storage.redact(location)} was read but does not decode ({error}): skipping it")

    found = latest_checkpoint(job.checkpoints, job.data.identity, skipped)
    if found is None and unusable:
        ctx.log(f"none of the {len(unusable)} checkpoint(s) in {storage.redact(job.checkpoints)} decodes: "
                "training starts from scratch (epoch 1)")
    return found


def _check_resumable(resume: TrainCheckpoint, job: TrainJob, ranks: int) -> None:
    """Refuse (a ConfigError naming the key) a checkpoint this run's settings cannot continue."""
    tc, step, where = job.config.train, resume.step, storage.redact(job.checkpoints)
    if resume.strategy != tc.strategy:
        raise ConfigError(f"the checkpoint in {where} was made with train.strategy={resume.strategy}; resume with "
                          "that strategy, or use a new run_id", key="train.strategy")
    if not step:  # made at an epoch's end: nothing of an epoch to continue
        return
    if bool(resume.remaining) != tc.elastic:  # the two kinds of run order an epoch differently
        made_by = "an elastic run (train.num_workers=MIN..MAX)" if resume.remaining else \
            f"a fixed-size run (train.num_workers={len(resume.ranks)})"
        raise ConfigError(f"the checkpoint in {where} was made {step} steps into an epoch by {made_by}; resume the "
                          "same way, or use a new run_id", key="train.num_workers")
    if resume.remaining:  # elastic: continues at any world size
        return
    if len(resume.ranks) != ranks:  # checked before any state is loaded
        raise ConfigError(f"the checkpoint in {where} was made {step} steps into an epoch by {len(resume.ranks)} "
                          f"ranks; resume with train.num_workers={len(resume.ranks)}, or use a new run_id to start "
                          "over", key="train.num_workers")
    # read only here, where it matters: a config without train.grad_accumulation (older checkpoints) means 1
    made_with = config_from_dict(resume.config).train.grad_accumulation
    if made_with != tc.grad_accumulation:  # its step count is in steps of made_with batches
        raise ConfigError(f"the checkpoint in {where} was made {step} steps into an epoch with "
                          f"train.grad_accumulation={made_with}; resume with that setting, or use a new run_id",
                          key="train.grad_accumulation")


def _plan_steps(strategy: Strategy, job: TrainJob, ctx: RankContext, start_epoch: int) -> int:
    """Optimizer steps per epoch, alike on every rank (refused when a step needs more rows than a
    shard holds), announced with the plan."""
    tc, sizes = job.config.train, job.train.sizes
    shard, shards = strategy.shard()
    if tc.elastic:  # the same steps at any world size (the last one may be short)
        steps, rows = epoch_steps(sum(sizes), global_batch(tc.batch_size, tc.num_workers)), sum(sizes) // shards
    else:
        steps = steps_per_epoch(sizes, shards, tc.batch_size * tc.grad_accumulation)
        rows = shard_rows(sizes, shard, shards)
    if steps == 0:
        raise ConfigError(f"train.batch_size={tc.batch_size} x train.grad_accumulation={tc.grad_accumulation} rows "
                          f"a step is more than every rank's shard "
                          f"({min(shard_rows(sizes, r, shards) for r in range(shards))} rows): lower them",
                          key="train.batch_size")
    ctx.emit(events.Planned(steps_per_epoch=steps, shard_rows=rows, epochs=tc.epochs,
                            start_epoch=start_epoch, strategy=tc.strategy, held_parameters=strategy.held_parameters()))
    return steps


@dataclass
class _Checkpoints:
    """The run's checkpoints: every rank takes part in each (the state is a collective); rank 0
    (the one with a ``writer``) writes them, off the step loop."""

    strategy: Strategy
    job: TrainJob
    ctx: RankContext
    history: list[EpochRecord]  # the run's epochs so far (resumed ones included): each checkpoint holds a copy
    writer: CheckpointWriter | None

    def save(self, epoch: int, step: int, ranks: list[RankState], remaining: Remaining | None = None) -> None:
        """Checkpoint ``step`` steps into ``epoch`` (0: at its start), with ``ranks``' states (and, elastic,
        the epoch's positions still to use)."""
        model_state, optimizer_state = self.strategy.state()
        if self.writer is not None:
            job = self.job
            self.writer.submit(epoch, step, TrainCheckpoint(
                model=model_state, optimizer=optimizer_state, epoch=epoch, step=step, ranks=ranks,
                strategy=job.config.train.strategy, history=list(self.history), config=job.config.to_dict(),
                manifest_hash=job.data.identity, dataset_version=job.data.version,
                remaining=remaining.to_plain() if remaining is not None else []).to_dict())

    def save_position(self, epoch: int, step: int, sums: dict[str, float], remaining: Remaining | None) -> None:
        """Checkpoint ``step`` steps into ``epoch``, with every rank's RNG state and sums so far; elastic
        (``remaining`` given): one state for any world size, the sums averaged over the ranks."""
        if remaining is not None:
            combined = self.strategy.combine(dict(sums), mean=True, name=f"checkpoint.{epoch}.{step}")
            self.save(epoch, step, [RankState(rng=torch.get_rng_state(), sums=combined)], remaining)
        else:
            mine = RankState(rng=torch.get_rng_state(), sums=dict(sums), cuda_rng=_cuda_rng())
            self.save(epoch, step, self.strategy.allgather_object(mine))
        if self.ctx.rank == 0:
            self.ctx.emit(events.CheckpointSaved(epoch=epoch + 1, step=step))


def _train_epochs(strategy: Strategy, job: TrainJob, ctx: RankContext, checkpoints: _Checkpoints,
                  resume: TrainCheckpoint | None, steps: int, normalize: Normalizer) -> None:
    """The epochs not done yet, each validated, recorded (``metrics.jsonl``) and checkpointed at its end."""
    tc, history = job.config.train, checkpoints.history
    start_epoch = resume.epoch if resume is not None else 0
    for epoch in range(start_epoch, tc.epochs):
        position = _epoch_start(strategy, ctx.rank, resume, epoch, tc.seed)
        feed = (_elastic_feed(ctx, position, job, normalize) if tc.elastic
                else _fixed_feed(strategy, position, steps, tc, job.train, normalize))
        train_stats = _train_epoch(strategy, ctx, position, feed, tc, checkpoints.save_position)
        val_stats = (_evaluate(strategy, ctx, job.validation, tc, normalize, epoch)
                     if job.validation is not None else {})
        record = epoch_record(epoch + 1, train_stats, val_stats)
        history.append(record)
        ctx.heartbeat()
        ctx.emit(events.EpochEnded(record=record))
        checkpoints.save(epoch + 1, 0, [])
        if ctx.rank == 0:
            _write_metrics(job, history)
    if ctx.rank == 0 and start_epoch == tc.epochs and history:
        # resumed a run whose last checkpoint was written but not its metrics (it failed between the two)
        _write_metrics(job, history)


def _epoch_start(strategy: Strategy, rank: int, resume: TrainCheckpoint | None, epoch: int, seed: int) -> Position:
    """Seed this rank for ``epoch``; the epoch a resumed checkpoint was taken inside of continues from there."""
    # Seeded per (seed, epoch, rank): a resumed run draws exactly what an uninterrupted one would.
    torch.manual_seed(seed * 1_000_003 + epoch * 1009 + rank)
    if resume is None or epoch != resume.epoch or not resume.step:
        return Position(epoch)
    if resume.remaining:  # elastic: the ranks' averaged sums, whatever the world size was
        return Position(epoch, resume.step, dict(resume.ranks[0].sums), Remaining.from_plain(resume.remaining))
    mine = resume.ranks[rank]  # this rank's RNG and sums as they were
    torch.set_rng_state(mine.rng)
    if mine.cuda_rng is not None and strategy.device.type == "cuda":  # dropout, VAE noise on the GPU
        torch.cuda.set_rng_state(mine.cuda_rng)
    return Position(epoch, resume.step, dict(mine.sums))


def _result(strategy: Strategy, job: TrainJob, ctx: RankContext, checkpoints: _Checkpoints,
            devices: list[dict[str, Any]]) -> dict[str, Any]:
    """This rank's :class:`TrainResult`, as the dict the launcher carries; rank 0's (with the
    artifact, written here) is the run's."""
    ctx.emit(events.MemoryUse(parameters=strategy.held_parameters(), optimizer_bytes=strategy.optimizer_bytes()))
    model_state, _ = strategy.state()
    writer = checkpoints.writer
    artifact, times = "", {}
    if writer is not None:
        writer.wait()  # the last checkpoint is in the store before the run reports success
        _save_artifact(job, model_state)
        artifact, times = job.artifact, vars(writer.times)
    return TrainResult(epochs_completed=len(checkpoints.history), history=list(checkpoints.history),
                       artifact=artifact, devices=[RankDevice.from_dict(d) for d in devices],
                       precision=job.config.train.precision, dataset_version=job.data.version,
                       init_from=job.init_from, checkpoint_times=times).to_dict()


def _save_artifact(job: TrainJob, model_state: dict[str, Any]) -> None:
    """The trained model as the run's artifact (rank 0), with what it was trained on."""
    model = build_model(job)
    model.load_state_dict(model_state)
    save_artifact(job.artifact, model, artifact_meta(model, job.data, job.config, init_from=job.init_from))


def epoch_record(epoch: int, train: dict[str, float], val: dict[str, float]) -> EpochRecord:
    """One epoch's record from the combined train figures and the validation figures."""
    fixed = {k: train.pop(k) for k in ("loss", "samples", "samples_per_s", "seconds", "data_wait_fraction")}
    return EpochRecord(epoch=epoch, loss=fixed["loss"], samples=int(fixed["samples"]),
                       samples_per_s=fixed["samples_per_s"], seconds=fixed["seconds"],
                       data_wait_fraction=fixed["data_wait_fraction"], metrics=train, val=val)


def _cuda_rng() -> torch.Tensor | None:
    """This rank's GPU random state (None on CPU), so a run resumed mid-epoch draws the same noise."""
    return torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _optimizer(tc: Any, params: Any, lr: float) -> torch.optim.Optimizer:
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=tc.weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=tuple(tc.adam_betas), weight_decay=tc.weight_decay)


def _write_metrics(job: TrainJob, history: list[EpochRecord]) -> None:
    """``metrics.jsonl``: the run's whole history, a line per epoch (rank 0 writes it)."""
    storage.write_text(job.metrics_file, "".join(json.dumps(h.to_dict()) + "\n" for h in history))


@dataclass
class _Feed:
    """One epoch's batches for this rank, and what the step loop needs to know of them."""

    batches: Iterator[dict[str, torch.Tensor]]
    steps: int  # the epoch's optimizer steps
    accumulate: int  # batches per step
    samples: int  # the epoch's rows, all ranks
    launch_rows: int  # the rows this launch trains on, all ranks
    plan: EpochPlan | None = None  # elastic: each step's loss weight, and what a checkpoint keeps


def _fixed_feed(strategy: Strategy, position: Position, steps: int, tc: TrainConfig, split: SplitFiles,
                normalize: Normalizer) -> _Feed:
    """A fixed-size run's epoch: this rank's shard in the loader's order."""
    shard, shards = strategy.shard()
    # The loader's order depends only on (seed, epoch, shard, shards): skipping the first batches
    # resumes exactly where a checkpoint taken inside the epoch left off.
    accumulate = tc.grad_accumulation  # loader batches per optimizer step
    order = loader.BatchOrder(batch_size=tc.batch_size, steps=steps * accumulate,
                              seed=tc.seed * 1000 + position.epoch, skip=position.step * accumulate)
    batches = loader.epoch_batches(split, order, rank=shard, size=shards, normalize=normalize, loader=tc.loader,
                                   workers=tc.reader_workers, pin=strategy.device.type == "cuda")
    rows_per_step = tc.batch_size * accumulate * shards  # the whole job's rows per optimizer step
    return _Feed(batches, steps, accumulate, samples=steps * rows_per_step,
                 launch_rows=(steps - position.step) * rows_per_step)


def _elastic_feed(ctx: RankContext, position: Position, job: TrainJob, normalize: Normalizer) -> _Feed:
    """An elastic run's epoch: this rank's piece of what is left of the epoch's global order."""
    tc = job.config.train
    plan = EpochPlan.make(job.train.sizes, tc.seed, position.epoch, global_batch(tc.batch_size, tc.num_workers),
                          ctx.size, position.remaining, position.step)
    batches = plan.batches(job.train, ctx.rank, normalize, tuple(job.data.manifest.feature_shape))
    return _Feed(batches, plan.total_steps, 1, samples=plan.order.total, launch_rows=plan.remaining.count, plan=plan)


def _train_epoch(strategy: Strategy, ctx: RankContext, position: Position, feed: _Feed, tc: TrainConfig,
                 save_position: Callable[[int, int, dict[str, float], Remaining | None], None]) -> dict[str, float]:
    strategy.set_training(True)
    epoch, steps, plan = position.epoch, feed.steps, feed.plan
    clock = loader.Stopwatch()
    sums = dict(position.sums)
    every = max(1, steps // PROGRESS_EVENTS_PER_EPOCH)
    for step in range(position.step, steps):
        ctx.heartbeat()
        micro = [b for b in (clock.timed_next(feed.batches) for _ in range(feed.accumulate)) if b is not None]
        if len(micro) < feed.accumulate:
            raise RuntimeError(f"rank {ctx.rank}: the loader ended after {step} of {steps} steps")
        if plan is not None:  # this rank's share of the step's rows (0: a placeholder batch)
            strategy.loss_weight = plan.weight(ctx.rank, step)
        figures = strategy.train_step(*(to_device(batch, strategy.device) for batch in micro))
        if plan is None or plan.rows(ctx.rank, step):
            for k, v in figures.items():
                sums[k] = sums.get(k, 0.0) + v
        done = step + 1
        if ctx.rank == strategy.reporting_rank and (done % every == 0 or done == steps):
            ctx.emit(events.StepProgress(epoch=epoch + 1, step=done, steps=steps, loss=sums["loss"] / done,
                                         samples_per_s=_rate(feed, position.step, done, clock.elapsed)))
        if tc.checkpoint_every_steps and done % tc.checkpoint_every_steps == 0 and done < steps:
            save_position(epoch, done, sums, plan.left_after(done) if plan is not None else None)
    strategy.loss_weight = 1.0
    elapsed = clock.elapsed
    local = {k: v / steps for k, v in sums.items()}
    local["data_wait_fraction"] = clock.wait / elapsed
    averaged = strategy.combine(local, mean=True, name=f"train.{epoch}")
    averaged["samples"] = feed.samples
    averaged["samples_per_s"] = feed.launch_rows / elapsed
    averaged["seconds"] = elapsed
    if plan is not None:
        averaged["world_size"] = float(ctx.size)  # the report's world size over time
    return averaged


def _rate(feed: _Feed, start: int, done: int, elapsed: float) -> float:
    """Rows a second, all ranks, over the steps this launch has run."""
    return feed.launch_rows * (done - start) / max(feed.steps - start, 1) / elapsed


def _evaluate(strategy: Strategy, ctx: RankContext, split: SplitFiles, tc: TrainConfig, normalize: Normalizer,
              epoch: int) -> dict[str, float]:
    """Loss and metrics over the whole split, each rank reading its part, averaged by sample count."""
    strategy.set_training(False)
    shard, shards = strategy.shard()
    batches = loader.read_all(split, rank=shard, size=shards, batch_size=tc.batch_size, normalize=normalize,
                              loader=tc.loader)
    sums: dict[str, float] = {}
    for i in itertools.count():
        batch = next(batches, None)
        if strategy.lockstep_eval:  # forwards are collectives: run until every rank is done
            others = strategy.allreduce_sum(torch.tensor([float(batch is not None)]), name=f"eval.{epoch}.{i}")
            if others.item() == 0:
                break
            if batch is None:  # this rank's part ended first: keep the others company
                strategy.eval_step(to_device({"features": torch.zeros(1, *normalize.feature_shape),
                                              "label": torch.zeros(1, dtype=torch.int64)}, strategy.device))
                continue
        elif batch is None:
            break
        ctx.heartbeat()
        n = len(batch["label"])
        figures = strategy.eval_step(to_device(batch, strategy.device))
        for k, v in figures.items():
            sums[k] = sums.get(k, 0.0) + v * n
        if figures:
            sums["rows"] = sums.get("rows", 0.0) + n
    totals = strategy.combine(sums, mean=False, name=f"eval.{epoch}")
    rows = max(totals.pop("rows", 0.0), 1.0)
    return {k: v / rows for k, v in totals.items()}
