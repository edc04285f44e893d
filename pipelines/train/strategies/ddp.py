"""PyTorch DistributedDataParallel: every rank holds the whole model; gradient buckets are
all-reduced (averaged) straight from autograd hooks, overlapping the backward pass."""
from __future__ import annotations

import torch
from torch import nn

from models import DlpipeModel
from pipelines.train.strategies.base import Batch, OptimizerFactory
from pipelines.train.strategies.torch_dist import TorchDistributedStrategy


class _Loss(nn.Module):
    """The model's own ``loss`` as a ``forward``: DDP synchronizes gradients only for what runs
    through its wrapper's forward, and ``model.loss`` is where the model runs."""

    def __init__(self, model: DlpipeModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.model.loss(batch)


class DDPStrategy(TorchDistributedStrategy):
    name = "ddp"
    multi_phase = True

    def setup(self, model: DlpipeModel, make_optimizer: OptimizerFactory) -> None:
        from torch.nn.parallel import DistributedDataParallel

        # Several optimizers: no DDP wrapper (it reduces every parameter a backward reaches, once
        # per backward); each phase's gradients are averaged explicitly instead.
        if self.setup_phases(model, make_optimizer):
            self.ddp = None
            return
        self.model = model
        # broadcasts rank 0's parameters; on a GPU, device_ids names the one this rank drives
        device_ids = [self.device] if self.device.type == "cuda" else None
        self.ddp = DistributedDataParallel(_Loss(model), device_ids=device_ids)
        self.optimizer = make_optimizer(model.parameters())

    def set_training(self, training: bool) -> None:
        (self.ddp or self.model).train(training)

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.ddp(batch)  # (eval_step calls the model itself: nothing to synchronize)
