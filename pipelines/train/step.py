"""One training or evaluation step of a model (torch only: the GPU check runs it without Spark).

The strategies call these with their own forward (a DDP wrapper, an FSDP-sharded model, ...);
``scripts/gpu_check.py`` calls them with a plain model. Batches are already on the model's device.
"""
from __future__ import annotations

from typing import Callable, ContextManager

import torch

from pipelines.train.precision import Precision

Batch = dict[str, torch.Tensor]
LossFn = Callable[[Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def train_step(forward_loss: LossFn, optimizer: torch.optim.Optimizer, precision: Precision, batch: Batch,
               synchronize: Callable[[], ContextManager] | None = None) -> dict[str, float]:
    """Zero the gradients, forward under the run's autocast, backward (scaled for fp16), step.

    ``synchronize``: see :meth:`Precision.step` (Horovod's gradient averaging under fp16).
    """
    optimizer.zero_grad()
    with precision.autocast():
        loss, metrics = forward_loss(batch)
    precision.backward(loss)
    precision.step(optimizer, synchronize)
    return step_metrics(loss, metrics)


@torch.no_grad()
def eval_step(loss_fn: LossFn, precision: Precision, batch: Batch) -> dict[str, float]:
    """Loss and metrics of ``batch`` without training, under the run's autocast."""
    with precision.autocast():
        return step_metrics(*loss_fn(batch))


def step_metrics(loss: torch.Tensor, metrics: dict[str, torch.Tensor]) -> dict[str, float]:
    """A step's loss and metrics as plain floats (one device-to-host sync for all of them)."""
    values = torch.stack([loss.detach().float(), *(v.detach().float() for v in metrics.values())]).tolist()
    return {"loss": values[0], **dict(zip(metrics, values[1:]))}
