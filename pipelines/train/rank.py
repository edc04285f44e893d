"""Rank side of training: one Horovod rank's loop (runs in the rank process, not in Spark).

The loop calls the model's own ``loss`` and never branches on model kind. Rank 0 writes
checkpoints, ``metrics.jsonl`` and the final model artifact; all other state is broadcast from it.
Everything a rank knows arrives as one :class:`~pipelines.train.job.TrainJob`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

import models
from pipelines import dataset
from pipelines.artifact import Normalizer, save_artifact
from pipelines.launcher import RankContext
from pipelines.publish import write_text_atomic
from pipelines.train import loader
from pipelines.train.checkpoint import latest_checkpoint, save_checkpoint
from pipelines.train.job import TrainJob

PROGRESS_EVENTS_PER_EPOCH = 20


def train_rank(payload: dict[str, Any], ctx: RankContext) -> dict[str, Any]:
    """Train on this rank's shard; rank 0 returns the run's summary."""
    import horovod.torch as hvd

    job = TrainJob.from_payload(payload)
    hvd.init()
    try:
        return _train(hvd, job, ctx)
    finally:
        hvd.shutdown()


def _train(hvd: Any, job: TrainJob, ctx: RankContext) -> dict[str, Any]:
    config = job.config
    tc = config.train
    manifest = job.manifest
    rank, size = hvd.rank(), hvd.size()
    feature_shape = tuple(manifest["feature_shape"])
    normalize = Normalizer.from_stats(manifest["normalization"], feature_shape)

    torch.manual_seed(tc.seed)
    model = models.build(config.model.name, feature_shape=feature_shape,
                         num_classes=len(manifest["label_names"]), **config.model.params)
    lr = tc.lr * (size if tc.scale_lr_by_workers else 1)
    # Wrap before loading any state: DistributedOptimizer rebuilds the optimizer from its param
    # groups, so state loaded into the unwrapped one would be silently dropped.
    optimizer = hvd.DistributedOptimizer(_optimizer(tc.optimizer, model, lr, tc.weight_decay),
                                         named_parameters=model.named_parameters(), op=hvd.Average)

    # Rank 0 resumes from the latest checkpoint; everything it knows is broadcast.
    resume: dict[str, Any] = {"epoch": 0, "step": 0, "history": [], "ranks": []}
    if rank == 0:
        ckpt = latest_checkpoint(job.checkpoints, job.manifest_hash)
        if ckpt is not None:
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            resume = {k: ckpt.get(k, resume[k]) for k in resume}
            inside = f", {resume['step']} steps into epoch {resume['epoch'] + 1}" if resume["step"] else ""
            ctx.log(f"resuming from checkpoint after epoch {resume['epoch']}{inside}")
            ctx.emit("resume", epochs_done=resume["epoch"], step=resume["step"])
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    resume = hvd.broadcast_object(resume, root_rank=0)
    start_epoch, history = resume["epoch"], resume["history"]
    if resume["step"] and len(resume["ranks"]) != size:
        raise ValueError(f"the checkpoint in {job.checkpoints} was made {resume['step']} steps into an epoch by "
                         f"{len(resume['ranks'])} ranks; resume with train.num_workers={len(resume['ranks'])}, "
                         f"or use a new run_id to start over")

    train_url = dataset.dataset_url(job.train_path)
    sizes = dataset.row_group_sizes(job.train_path)
    steps = dataset.steps_per_epoch(sizes, size, tc.batch_size)
    if steps == 0:
        raise ValueError(f"train.batch_size={tc.batch_size} is larger than every rank's shard "
                         f"({min(dataset.shard_rows(sizes, r, size) for r in range(size))} rows): lower it")
    ctx.emit("plan", steps_per_epoch=steps, shard_rows=dataset.shard_rows(sizes, rank, size), epochs=tc.epochs,
             start_epoch=start_epoch)

    def save_position(epoch: int, step: int, sums: dict[str, float]) -> None:
        """Checkpoint ``step`` steps into ``epoch`` (a collective: every rank calls it at the same step)."""
        ranks = hvd.allgather_object({"rng": torch.get_rng_state(), "sums": dict(sums)})
        if rank == 0:
            save_checkpoint(job.checkpoints, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                "ranks": ranks, "history": history, "config": config.to_dict(), "manifest_hash": job.manifest_hash})
            ctx.emit("checkpoint", epoch=epoch + 1, step=step)

    for epoch in range(start_epoch, tc.epochs):
        # Seeded per (seed, epoch, rank): a resumed run draws exactly what an uninterrupted one would.
        torch.manual_seed(tc.seed * 1_000_003 + epoch * 1009 + rank)
        position = Position(epoch)
        if epoch == start_epoch and resume["step"]:  # inside an epoch: this rank's RNG and sums as they were
            mine = resume["ranks"][rank]
            torch.set_rng_state(mine["rng"])
            position = Position(epoch, resume["step"], dict(mine["sums"]))
        train_stats = _train_epoch(hvd, model, optimizer, ctx, position, steps, tc, train_url, normalize, size,
                                   save_position)
        val_stats = (_evaluate(hvd, model, ctx, job.validation_path, tc.batch_size, normalize, epoch)
                     if job.validation_path else {})
        record = {"epoch": epoch + 1, **train_stats, **{f"val_{k}": v for k, v in val_stats.items()}}
        history.append(record)
        ctx.heartbeat()
        ctx.emit("epoch", **record)
        if rank == 0:
            save_checkpoint(job.checkpoints, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch + 1,
                "history": history, "config": config.to_dict(), "manifest_hash": job.manifest_hash})
            write_text_atomic(job.metrics_file, "".join(json.dumps(h) + "\n" for h in history))

    result: dict[str, Any] = {"epochs_completed": len(history), "history": history}
    if rank == 0:
        save_artifact(job.artifact, model, manifest, job.manifest_hash, config)
        result["artifact"] = str(job.artifact)
    return result


def _optimizer(name: str, model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"train.optimizer={name!r} is not supported: use 'adam' or 'sgd'")


@dataclass
class Position:
    """Where an epoch starts: at its first step, or (resumed) ``step`` steps in with the sums so far."""

    epoch: int
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)


def _train_epoch(hvd: Any, model: Any, optimizer: Any, ctx: RankContext, position: Position, steps: int, tc: Any,
                 url: str, normalize: Normalizer, size: int,
                 save_position: Callable[[int, int, dict[str, float]], None]) -> dict[str, float]:
    model.train()
    epoch = position.epoch
    # The loader's order depends only on (seed, epoch, rank, size): skipping the first batches
    # resumes exactly where a checkpoint taken inside the epoch left off.
    batches = loader.epoch_batches(url, rank=ctx.rank, size=size, batch_size=tc.batch_size, steps=steps,
                                   seed=tc.seed * 1000 + epoch, normalize=normalize, workers=tc.reader_workers,
                                   skip=position.step)
    clock = loader.Stopwatch()
    sums = dict(position.sums)
    every = max(1, steps // PROGRESS_EVENTS_PER_EPOCH)
    for step in range(position.step, steps):
        ctx.heartbeat()
        batch = clock.timed_next(batches)
        if batch is None:
            raise RuntimeError(f"rank {ctx.rank}: the loader ended after {step} of {steps} steps")
        optimizer.zero_grad()
        loss, metrics = model.loss(batch)
        loss.backward()
        optimizer.step()
        sums["loss"] = sums.get("loss", 0.0) + loss.item()
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        done = step + 1
        if ctx.rank == 0 and (done % every == 0 or done == steps):
            ctx.emit("progress", epoch=epoch + 1, step=done, steps=steps, loss=sums["loss"] / done,
                     samples_per_s=(done - position.step) * tc.batch_size * size / clock.elapsed)
        if tc.checkpoint_every_steps and done % tc.checkpoint_every_steps == 0 and done < steps:
            save_position(epoch, done, sums)
    elapsed = clock.elapsed
    local = {k: v / steps for k, v in sums.items()}
    local["data_wait_fraction"] = clock.wait / elapsed
    averaged = _average(hvd, local, f"train.{epoch}")
    averaged["samples"] = steps * tc.batch_size * size
    averaged["samples_per_s"] = (steps - position.step) * tc.batch_size * size / elapsed
    averaged["seconds"] = elapsed
    return averaged


@torch.inference_mode()
def _evaluate(hvd: Any, model: Any, ctx: RankContext, path: str, batch_size: int, normalize: Normalizer,
              epoch: int) -> dict[str, float]:
    """Loss and metrics over the whole split at ``path``, each rank reading its part, averaged by sample count."""
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    for batch in loader.read_all(dataset.dataset_url(path), rank=hvd.rank(), size=hvd.size(), batch_size=batch_size,
                                 normalize=normalize, num_row_groups=len(dataset.row_group_sizes(path))):
        ctx.heartbeat()
        n = len(batch["label"])
        loss, metrics = model.loss(batch)
        sums["loss"] = sums.get("loss", 0.0) + loss.item() * n
        for k, v in metrics.items():
            sums[k] = sums.get(k, 0.0) + float(v) * n
        count += n
    names = ["loss", *sorted(k for k in sums if k != "loss")] if sums else []
    names = hvd.broadcast_object(names, root_rank=0)  # ranks with no rows still join the sum
    totals = hvd.allreduce(torch.tensor([sums.get(k, 0.0) for k in names] + [float(count)], dtype=torch.float64),
                           op=hvd.Sum, name=f"eval.{epoch}")
    n_total = max(totals[-1].item(), 1.0)
    return {k: totals[i].item() / n_total for i, k in enumerate(names)}


def _average(hvd: Any, values: dict[str, float], name: str) -> dict[str, float]:
    keys = sorted(values)
    avg = hvd.allreduce(torch.tensor([values[k] for k in keys], dtype=torch.float64), op=hvd.Average, name=name)
    return {k: avg[i].item() for i, k in enumerate(keys)}

