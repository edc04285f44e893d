"""One training or evaluation step of a model (torch only: the GPU check runs it without Spark).

The strategies call these with their own forward (a DDP wrapper, an FSDP-sharded model, ...);
``scripts/gpu_check.py`` calls them with a plain model. Batches are already on the model's device.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager

import torch

from pipelines.train.precision import Precision

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def train_step(forward_loss: LossFn, optimizer: torch.optim.Optimizer, precision: Precision,
               batches: Batch | Sequence[Batch],
               synchronize: Callable[[], AbstractContextManager[object]] | None = None,
               no_sync: Callable[[], AbstractContextManager[object]] | None = None,
               weight: float = 1.0) -> dict[str, float]:
    """One optimizer step over one batch or several (gradient accumulation): zero the gradients;
    for each batch, forward under the run's autocast and backward (scaled for fp16); then step.

    With N batches each loss is divided by N, so the gradients are the mean over all of them, as
    one batch N times larger would give; the figures are the batches' mean. ``no_sync``: a context
    in which the strategy does not all-reduce gradients (every batch but the last). ``synchronize``:
    see :meth:`Precision.step` (Horovod's gradient averaging under fp16). ``weight``: a factor on the
    loss before backward (not on the figures): an elastic rank's share of the step's rows.
    """
    micro = [batches] if isinstance(batches, dict) else list(batches)
    optimizer.zero_grad()
    figures: list[dict[str, float]] = []
    for i, batch in enumerate(micro):
        holding = no_sync() if no_sync is not None and i < len(micro) - 1 else contextlib.nullcontext()
        with holding:
            with precision.autocast():
                loss, metrics = forward_loss(batch)
            scaled = loss / len(micro) if len(micro) > 1 else loss
            precision.backward(scaled * weight if weight != 1.0 else scaled)
        figures.append(step_metrics(loss, metrics))
    precision.step(optimizer, synchronize)
    return figures[0] if len(figures) == 1 else {k: sum(f[k] for f in figures) / len(figures) for k in figures[0]}


@torch.no_grad()
def eval_step(loss_fn: LossFn, precision: Precision, batch: Batch) -> dict[str, float]:
    """Loss and metrics of ``batch`` without training, under the run's autocast."""
    with precision.autocast():
        return step_metrics(*loss_fn(batch))


def step_metrics(loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """A step's loss and metrics as plain floats (one device-to-host sync for all of them)."""
    values = torch.stack([loss.detach().float(), *(v.detach().float() for v in metrics.values())]).tolist()
    return {"loss": values[0], **dict(zip(metrics, values[1:]))}
