"""PyTorch DistributedDataParallel: every rank holds the whole model; gradient buckets are
all-reduced (averaged) straight from autograd hooks, overlapping the backward pass."""
from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch
from torch import nn

from models import DlpipeModel
from pipelines.choices import COMPRESSION_NAMES
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


def _compressed_all_reduce(dtype: torch.dtype, bucket):  # type: ignore[no-untyped-def]  # see the docstring
    """DDP communication hook: a gradient bucket (``dist.GradBucket``) cast to ``dtype`` (fp16 or bf16)
    and divided by the ranks, all-reduced, and cast back; returns the future of the bucket. As torch's
    own fp16/bf16 compress hooks do, but theirs refuses bf16 on anything but NCCL, while Gloo reduces
    bfloat16 too. (No annotations on ``bucket`` and the result: DDP compares them with its own types,
    and postponed annotations are strings.)"""
    import torch.distributed as dist

    buffer: torch.Tensor = bucket.buffer()  # the bucket's gradients, flattened
    compressed = buffer.to(dtype).div_(dist.get_world_size())
    future = dist.all_reduce(compressed, async_op=True).get_future()

    def cast_back(done: torch.futures.Future[list[torch.Tensor]]) -> torch.Tensor:
        buffer.copy_(done.value()[0])
        return buffer

    return future.then(cast_back)


class DDPStrategy(TorchDistributedStrategy):
    name = "ddp"
    multi_phase = True
    compressions = COMPRESSION_NAMES  # all, by a communication hook (below); Gloo and NCCL reduce both
    accumulates = True  # no_sync() for all but the last batch of a step

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
        self.ddp = DistributedDataParallel(_Loss(model), device_ids=device_ids, bucket_cap_mb=self.tc.ddp_bucket_mb)
        if self.compress_dtype is not None:
            self.ddp.register_comm_hook(self.compress_dtype, _compressed_all_reduce)
        self.optimizer = make_optimizer(model.parameters())

    def no_sync(self) -> AbstractContextManager[object]:
        return self.ddp.no_sync() if self.ddp is not None else contextlib.nullcontext()

    def set_training(self, training: bool) -> None:
        (self.ddp or self.model).train(training)

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.ddp is None:  # a model with several optimizers steps by phases, never through here
            raise RuntimeError("ddp: forward_loss needs the DDP wrapper of a one-optimizer model")
        loss: tuple[torch.Tensor, dict[str, torch.Tensor]] = self.ddp(batch)  # _Loss.forward, gradients synchronized
        return loss  # (eval_step calls the model itself: nothing to synchronize)
