"""Rank side of training: one rank's loop (runs in the rank process, not in Spark).

The loop never branches on the model kind (it calls the strategy, which calls the model's own
``loss``) nor on the strategy (Horovod, DDP, FSDP or pipeline: ``pipelines.train.strategies``).
Rank 0 writes checkpoints, ``metrics.jsonl`` and the final model artifact. Everything a rank
knows arrives as one :class:`~pipelines.train.job.TrainJob`. Its device (a GPU or the CPU) is
resolved once at start (``pipelines.device``); batches move there in one place (``to_device``).
"""
from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import models
from pipelines import dataset
from pipelines.artifact import Normalizer, save_artifact
from pipelines.device import DeviceChoice, activate, resolve_device, task_gpus, to_device, visible_gpus
from pipelines.launcher import RankContext
from pipelines.publish import write_text_atomic
from pipelines.train import loader
from pipelines.train.checkpoint import latest_checkpoint, save_checkpoint
from pipelines.train.job import TrainJob
from pipelines.train.strategies import Strategy, make_strategy

PROGRESS_EVENTS_PER_EPOCH = 20


def train_rank(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Train on this rank's part; rank 0 returns the run's summary."""
    job = TrainJob.from_payload(payload)
    tc = job.config.train
    choice = resolve_device(tc.device, task_gpus(), visible_gpus(), ctx.local_rank)
    # The driver prints it as "[rank N] training on cuda:0 (Spark task GPU 3), ...".
    ctx.log(f"training on {choice.device} ({choice.reason}), train.precision={tc.precision}")
    strategy = make_strategy(ctx, tc, activate(choice))
    strategy.start()
    ctx.heartbeat()  # arm the stall watchdog: set-up and resuming are collectives too
    try:
        return _train(strategy, job, ctx, choice)
    finally:
        strategy.stop()


@dataclass
class Position:
    """Where an epoch starts: at its first step, or (resumed) ``step`` steps in with the sums so far."""

    epoch: int
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)


def build_model(job: TrainJob) -> models.DlpipeModel:
    """The configured model, initialized from ``train.seed`` (identical on every rank)."""
    config, manifest = job.config, job.manifest
    torch.manual_seed(config.train.seed)
    return models.build(config.model.name, feature_shape=tuple(manifest["feature_shape"]),
                        num_classes=len(manifest["label_names"]), **config.model.params)


def _train(strategy: Strategy, job: TrainJob, ctx: RankContext, choice: DeviceChoice) -> dict[str, Any]:
    config = job.config
    tc = config.train
    rank = ctx.rank
    normalize = Normalizer.from_stats(job.manifest["normalization"], job.manifest["feature_shape"])
    lr = tc.lr * (ctx.size if tc.scale_lr_by_workers and strategy.data_parallel else 1)
    strategy.setup(build_model(job).to(strategy.device),
                   lambda params: _optimizer(tc, params, lr))
    devices = strategy.allgather_object({"rank": rank, **choice.describe()})
    ctx.emit("device", **choice.describe(), precision=tc.precision)

    # Rank 0 reads the newest checkpoint and broadcasts it; every rank restores its own part of it.
    found = latest_checkpoint(job.checkpoints, job.manifest_hash) if rank == 0 else None
    resume = strategy.broadcast_object(found)
    start_epoch, start_step, history = 0, 0, []
    if resume is not None:
        made_with = resume.get("strategy", "horovod")  # checkpoints from before strategies existed: Horovod
        if made_with != tc.strategy:
            raise ValueError(f"the checkpoint in {job.checkpoints} was made with train.strategy={made_with}; "
                             f"resume with that strategy, or use a new run_id")
        start_epoch, start_step, history = resume["epoch"], resume.get("step", 0), resume["history"]
        if start_step and len(resume["ranks"]) != ctx.size:  # checked before any state is loaded
            raise ValueError(f"the checkpoint in {job.checkpoints} was made {start_step} steps into an epoch by "
                             f"{len(resume['ranks'])} ranks; resume with train.num_workers={len(resume['ranks'])}, "
                             f"or use a new run_id to start over")
        strategy.load(resume["model"], resume["optimizer"])
        inside = f", {start_step} steps into epoch {start_epoch + 1}" if start_step else ""
        ctx.log(f"resuming from checkpoint after epoch {start_epoch}{inside}")
        if rank == 0:
            ctx.emit("resume", epochs_done=start_epoch, step=start_step, history=history)

    shard, shards = strategy.shard()
    train_url = dataset.dataset_url(job.train_path)
    sizes = dataset.row_group_sizes(job.train_path)
    steps = dataset.steps_per_epoch(sizes, shards, tc.batch_size)
    if steps == 0:
        raise ValueError(f"train.batch_size={tc.batch_size} is larger than every rank's shard "
                         f"({min(dataset.shard_rows(sizes, r, shards) for r in range(shards))} rows): lower it")
    ctx.emit("plan", steps_per_epoch=steps, shard_rows=dataset.shard_rows(sizes, shard, shards), epochs=tc.epochs,
             start_epoch=start_epoch, strategy=tc.strategy, held_parameters=strategy.held_parameters())

    def checkpoint(epoch: int, step: int, ranks: list[Any]) -> None:
        """Every rank calls it (the state is a collective); rank 0 writes it."""
        model_state, optimizer_state = strategy.state()
        if rank == 0:
            save_checkpoint(job.checkpoints, {
                "model": model_state, "optimizer": optimizer_state, "epoch": epoch, "step": step, "ranks": ranks,
                "strategy": tc.strategy, "history": history, "config": config.to_dict(),
                "manifest_hash": job.manifest_hash})

    def save_position(epoch: int, step: int, sums: dict[str, float]) -> None:
        """Checkpoint ``step`` steps into ``epoch``, with every rank's RNG state and sums so far."""
        checkpoint(epoch, step, strategy.allgather_object({"rng": torch.get_rng_state(), "cuda_rng": _cuda_rng(),
                                                           "sums": dict(sums)}))
        if rank == 0:
            ctx.emit("checkpoint", epoch=epoch + 1, step=step)

    for epoch in range(start_epoch, tc.epochs):
        # Seeded per (seed, epoch, rank): a resumed run draws exactly what an uninterrupted one would.
        torch.manual_seed(tc.seed * 1_000_003 + epoch * 1009 + rank)
        position = Position(epoch)
        if epoch == start_epoch and start_step:  # inside an epoch: this rank's RNG and sums as they were
            mine = resume["ranks"][rank]
            torch.set_rng_state(mine["rng"])
            if mine.get("cuda_rng") is not None and strategy.device.type == "cuda":  # dropout, VAE noise on the GPU
                torch.cuda.set_rng_state(mine["cuda_rng"])
            position = Position(epoch, start_step, dict(mine["sums"]))
        train_stats = _train_epoch(strategy, ctx, position, steps, tc, train_url, normalize, save_position)
        val_stats = (_evaluate(strategy, ctx, job.validation_path, tc.batch_size, normalize, epoch)
                     if job.validation_path else {})
        record = {"epoch": epoch + 1, **train_stats, **{f"val_{k}": v for k, v in val_stats.items()}}
        history.append(record)
        ctx.heartbeat()
        ctx.emit("epoch", **record)
        checkpoint(epoch + 1, 0, [])
        if rank == 0:
            write_text_atomic(job.metrics_file, "".join(json.dumps(h) + "\n" for h in history))

    ctx.emit("memory", parameters=strategy.held_parameters(), optimizer_bytes=strategy.optimizer_bytes())
    model_state, _ = strategy.state()
    result: dict[str, Any] = {"epochs_completed": len(history), "history": history, "devices": devices,
                              "precision": tc.precision}
    if rank == 0:
        model = build_model(job)
        model.load_state_dict(model_state)
        save_artifact(job.artifact, model, job.manifest, job.manifest_hash, config)
        result["artifact"] = str(job.artifact)
    return result


def _cuda_rng() -> torch.Tensor | None:
    """This rank's GPU random state (None on CPU), so a run resumed mid-epoch draws the same noise."""
    return torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None


def _optimizer(tc: Any, params: Any, lr: float) -> torch.optim.Optimizer:
    if tc.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=tuple(tc.adam_betas), weight_decay=tc.weight_decay)
    if tc.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=tc.weight_decay)
    raise ValueError(f"train.optimizer={tc.optimizer!r} is not supported: use 'adam' or 'sgd'")


def _train_epoch(strategy: Strategy, ctx: RankContext, position: Position, steps: int, tc: Any, url: str,
                 normalize: Normalizer, save_position: Callable[[int, int, dict[str, float]], None]) -> dict[str, float]:
    strategy.set_training(True)
    epoch = position.epoch
    shard, shards = strategy.shard()
    # The loader's order depends only on (seed, epoch, shard, shards): skipping the first batches
    # resumes exactly where a checkpoint taken inside the epoch left off.
    batches = loader.epoch_batches(url, rank=shard, size=shards, batch_size=tc.batch_size, steps=steps,
                                   seed=tc.seed * 1000 + epoch, normalize=normalize, workers=tc.reader_workers,
                                   skip=position.step, pin=strategy.device.type == "cuda")
    clock = loader.Stopwatch()
    sums = dict(position.sums)
    every = max(1, steps // PROGRESS_EVENTS_PER_EPOCH)
    rows_per_step = tc.batch_size * shards  # the whole job's rows per step
    for step in range(position.step, steps):
        ctx.heartbeat()
        batch = clock.timed_next(batches)
        if batch is None:
            raise RuntimeError(f"rank {ctx.rank}: the loader ended after {step} of {steps} steps")
        for k, v in strategy.train_step(to_device(batch, strategy.device)).items():
            sums[k] = sums.get(k, 0.0) + v
        done = step + 1
        if ctx.rank == strategy.reporting_rank and (done % every == 0 or done == steps):
            ctx.emit("progress", epoch=epoch + 1, step=done, steps=steps, loss=sums["loss"] / done,
                     samples_per_s=(done - position.step) * rows_per_step / clock.elapsed)
        if tc.checkpoint_every_steps and done % tc.checkpoint_every_steps == 0 and done < steps:
            save_position(epoch, done, sums)
    elapsed = clock.elapsed
    local = {k: v / steps for k, v in sums.items()}
    local["data_wait_fraction"] = clock.wait / elapsed
    averaged = strategy.combine(local, mean=True, name=f"train.{epoch}")
    averaged["samples"] = steps * rows_per_step
    averaged["samples_per_s"] = (steps - position.step) * rows_per_step / elapsed
    averaged["seconds"] = elapsed
    return averaged


def _evaluate(strategy: Strategy, ctx: RankContext, path: str, batch_size: int, normalize: Normalizer,
              epoch: int) -> dict[str, float]:
    """Loss and metrics over the whole split at ``path``, each rank reading its part, averaged by sample count."""
    strategy.set_training(False)
    shard, shards = strategy.shard()
    batches = loader.read_all(dataset.dataset_url(path), rank=shard, size=shards, batch_size=batch_size,
                              normalize=normalize, num_row_groups=len(dataset.row_group_sizes(path)))
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
