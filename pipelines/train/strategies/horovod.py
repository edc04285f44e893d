"""Horovod data parallelism (the default): every rank holds the whole model; gradients are averaged
by Horovod's allreduce over Gloo, fused in its background thread."""
from __future__ import annotations

from typing import Any

import torch

from models import DlpipeModel
from pipelines.train.strategies.base import Batch, OptimizerFactory, Strategy, step_metrics


class HorovodStrategy(Strategy):
    name = "horovod"
    rendezvous = "horovod"

    def start(self) -> None:
        import horovod.torch as hvd

        self.hvd = hvd
        hvd.init()

    def stop(self) -> None:
        self.hvd.shutdown()

    def setup(self, model: DlpipeModel, make_optimizer: OptimizerFactory) -> None:
        hvd = self.hvd
        self.model = model
        # Wrap before loading any state: DistributedOptimizer rebuilds the optimizer from its param
        # groups, so state loaded into the unwrapped one would be silently dropped.
        self.optimizer = hvd.DistributedOptimizer(make_optimizer(model.parameters()),
                                                  named_parameters=model.named_parameters(), op=hvd.Average)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(self.optimizer, root_rank=0)

    def set_training(self, training: bool) -> None:
        self.model.train(training)

    def train_step(self, batch: Batch) -> dict[str, float]:
        self.optimizer.zero_grad()
        loss, metrics = self.model.loss(batch)
        loss.backward()
        self.optimizer.step()
        return step_metrics(loss, metrics)

    @torch.inference_mode()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        return step_metrics(*self.model.loss(batch))

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        return self.model.state_dict(), self.optimizer.state_dict()

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: Any) -> None:
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)

    def held_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    # Horovod matches collectives by name and names an object collective after the object's type
    # by default: a dict on rank 0 and None elsewhere would never meet. Name them explicitly.
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=src, name="dlpipe.broadcast_object")

    def allgather_object(self, obj: Any) -> list[Any]:
        return self.hvd.allgather_object(obj, name="dlpipe.allgather_object")

    def allreduce_sum(self, values: torch.Tensor, name: str) -> torch.Tensor:
        return self.hvd.allreduce(values, op=self.hvd.Sum, name=name)
