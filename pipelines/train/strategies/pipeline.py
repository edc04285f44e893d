"""Pipeline (model) parallelism: the model is cut into one stage per rank at the split points it
declares (``model.pipeline_stages``); each batch is cut into ``train.pipeline.microbatches``
micro-batches that flow through the stages on a GPipe or 1F1B schedule (``torch.distributed.pipelining``).

How the batch reaches the stages: every rank reads the same batches (the whole split, same seeded
order); stage 0 feeds the features in, the last stage compares the output with
``batch[model.pipeline_target]`` (labels, or the features for reconstructions), and the stages
in between only pass activations. Each rank keeps only its stage's parameters and optimizer state.

Under bf16 each stage runs its forward under autocast and hands float32 activations on, so the
activations sent between stages keep one dtype whatever the precision. fp16 is refused for this
strategy (config check): its loss scaler would have to skip a step on every stage at once.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from models import DlpipeModel
from pipelines.train.strategies.base import Batch, OptimizerFactory
from pipelines.train.strategies.torch_dist import TorchDistributedStrategy


class PipelineStrategy(TorchDistributedStrategy):
    name = "pipeline"
    precisions = ("fp32", "bf16")  # each rank holds part of the gradients: one fp16 loss scaler per rank could disagree
    data_parallel = False

    @property
    def last(self) -> int:
        return self.size - 1

    @property
    def reporting_rank(self) -> int:
        return self.last  # only the last stage sees the loss

    def setup(self, model: DlpipeModel, make_optimizer: OptimizerFactory) -> None:
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        stages = model.pipeline_stages(self.size)
        self.model = model  # for output_loss (no parameters of its own are used there)
        self.module = stages[self.rank]
        # Checkpoints and the artifact use the model's own parameter names: map this stage's to them.
        names = {id(t): n for n, t in model.state_dict(keep_vars=True).items()}
        self.names = {k: names[id(t)] for k, t in self.module.state_dict(keep_vars=True).items()}
        for i, other in enumerate(stages):
            if i != self.rank:
                other.to("meta")  # this rank never runs them: free their memory
        self.stage = PipelineStage(_Autocast(self.module, self.precision.autocast), self.rank, self.size, self.device)
        key = model.pipeline_target

        def loss_fn(output: Any, target: torch.Tensor) -> torch.Tensor:
            return model.output_loss(output, {key: target})[0]

        schedule = ScheduleGPipe if self.tc.pipeline.schedule == "gpipe" else Schedule1F1B
        self.schedule = schedule(self.stage, n_microbatches=self.tc.pipeline.microbatches, loss_fn=loss_fn)
        self.optimizer = make_optimizer(self.module.parameters())

    def set_training(self, training: bool) -> None:
        self.module.train(training)

    def train_step(self, *batches: Batch) -> dict[str, float]:
        (batch,) = batches  # one batch a step: the schedule's micro-batches are its accumulation
        self.optimizer.zero_grad()
        target = batch[self.model.pipeline_target]
        losses: list[torch.Tensor] = []
        if self.rank == 0 and self.rank == self.last:
            output = self.schedule.step(batch["features"], target=target, losses=losses)
        elif self.rank == 0:
            output = self.schedule.step(batch["features"])
        elif self.rank == self.last:
            output = self.schedule.step(target=target, losses=losses)
        else:
            output = self.schedule.step()
        self.optimizer.step()  # gradients are already the mean over micro-batches (scale_grads)
        if self.rank != self.last:
            return {}
        with torch.no_grad():
            _, metrics = self.model.output_loss(output, batch)
        loss = torch.stack([x.detach() for x in losses]).mean()
        return {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}

    @torch.no_grad()
    def eval_step(self, batch: Batch) -> dict[str, float]:
        # A plain forward along the stages (validation batches vary in size; the schedule's
        # buffers are sized for training batches).
        x: Any = batch["features"] if self.rank == 0 else _recv(self.rank - 1, self.device)
        with self.precision.autocast():
            output = self.module(*x) if isinstance(x, tuple) else self.module(x)
        if self.rank != self.last:
            _send(output, self.rank + 1)
            return {}
        loss, metrics = self.model.output_loss(_float(output), batch)
        return {"loss": loss.item(), **{k: float(v) for k, v in metrics.items()}}

    def combine(self, values: dict[str, float], mean: bool, name: str) -> dict[str, float]:
        combined: dict[str, float] = self.broadcast_object(values, src=self.last)  # only the last stage has them
        return combined

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        mine = {self.names[k]: v.detach().cpu() for k, v in self.module.state_dict().items()}
        gathered = self.allgather_object((mine, _cpu(self.optimizer.state_dict())))  # no GPU tensors in pickles
        model_state = {k: v for part, _ in gathered for k, v in part.items()}
        return model_state, [optim for _, optim in gathered]  # one optimizer state per stage

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: Any) -> None:
        if len(optimizer_state) != self.size:
            raise ValueError(f"this checkpoint holds {len(optimizer_state)} pipeline stages; resume it with "
                             f"train.num_workers={len(optimizer_state)}, or use a new run_id")
        self.module.load_state_dict({k: model_state[self.names[k]] for k in self.names})
        self.optimizer.load_state_dict(optimizer_state[self.rank])

    def held_parameters(self) -> int:
        return sum(p.numel() for p in self.module.parameters())


class _Autocast(nn.Module):
    """A stage's forward under the run's autocast, its outputs back in float32 (what the next stage receives)."""

    def __init__(self, module: nn.Module, autocast: Callable[[], AbstractContextManager[object]]) -> None:
        super().__init__()
        self.module, self.autocast = module, autocast

    def forward(self, *args: Any) -> Any:
        with self.autocast():
            return _float(self.module(*args))


def _cpu(state: Any) -> Any:
    """An optimizer state dict with its tensors on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.cpu()
    if isinstance(state, dict):
        return {k: _cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_cpu(v) for v in state)
    return state


def _float(output: Any) -> Any:
    """Floating tensors (one, or a tuple) as float32; a no-op in fp32."""
    if isinstance(output, tuple):
        return tuple(_float(t) for t in output)
    return output.float() if output.is_floating_point() else output


def _send(output: Any, dst: int) -> None:
    """Send a tensor or a tuple of float tensors, shapes first (the receiver cannot know them);
    the small headers go from the tensors' device (NCCL sends only GPU tensors)."""
    import torch.distributed as dist

    tensors = output if isinstance(output, tuple) else (output,)
    device = tensors[0].device
    dist.send(torch.tensor([len(tensors)], device=device), dst)
    for t in tensors:
        header = torch.tensor([t.dim(), *t.shape, *([0] * (8 - t.dim()))], device=device)  # ndim + shape, fixed length
        dist.send(header, dst)
        dist.send(t.detach().float().contiguous(), dst)


def _recv(src: int, device: torch.device) -> Any:
    import torch.distributed as dist

    count = torch.zeros(1, dtype=torch.int64, device=device)
    dist.recv(count, src)
    tensors = []
    for _ in range(int(count)):
        header = torch.zeros(9, dtype=torch.int64, device=device)
        dist.recv(header, src)
        shape = header[1:1 + int(header[0])].tolist()
        t = torch.empty(shape, dtype=torch.float32, device=device)
        dist.recv(t, src)
        tensors.append(t)
    return tuple(tensors) if len(tensors) > 1 else tensors[0]
