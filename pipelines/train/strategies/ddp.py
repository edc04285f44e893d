"""PyTorch DistributedDataParallel: every rank holds the whole model; gradient buckets are
all-reduced (averaged) straight from autograd hooks, overlapping the backward pass."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from models import DlpipeModel
from pipelines.train.strategies.base import Batch, OptimizerFactory, step_metrics
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

    def setup(self, model: DlpipeModel, make_optimizer: OptimizerFactory) -> None:
        from torch.nn.parallel import DistributedDataParallel

        self.model = model
        self.ddp = DistributedDataParallel(_Loss(model))  # broadcasts rank 0's parameters
        self.optimizer = make_optimizer(model.parameters())

    def set_training(self, training: bool) -> None:
        self.ddp.train(training)

    def train_step(self, batch: Batch) -> dict[str, float]:
        self.optimizer.zero_grad()
        loss, metrics = self.ddp(batch)
        loss.backward()
        self.optimizer.step()
        return step_metrics(loss, metrics)

    @torch.inference_mode()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        return step_metrics(*self.model.loss(batch))  # no gradients: no DDP wrapper needed

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return self.model.state_dict(), self.optimizer.state_dict()

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: Any) -> None:
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)

    def held_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
