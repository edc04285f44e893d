"""Horovod data parallelism (the default): every rank holds the whole model; gradients are averaged
by Horovod's allreduce, fused in its background thread: over Gloo on CPU, over NCCL on GPUs (a
Horovod built with NCCL: ``make setup`` on a machine with nvcc and a CUDA build of torch)."""
from __future__ import annotations

import os
from contextlib import AbstractContextManager
from typing import Any

import torch

from models import DlpipeModel
from pipelines.events import Joined
from pipelines.train import step
from pipelines.train.rendezvous import HorovodRendezvous
from pipelines.train.strategies.base import Batch, OptimizerFactory, Strategy


class HorovodStrategy(Strategy):
    name = "horovod"
    optimizer: Any  # horovod's DistributedOptimizer (horovod has no type information)
    rendezvous = HorovodRendezvous
    multi_phase = True
    # Horovod's torch all-reduce takes float16, not bfloat16 (horovod/torch/mpi_ops.py's type table)
    compressions = ("none", "fp16")
    accumulates = True  # DistributedOptimizer(backward_passes_per_step=N)

    def settings_env(self) -> dict[str, str]:
        """What ``train.*`` asks of Horovod, in the variables ``hvd.init()`` reads."""
        tc, timeout = self.tc, int(self.tc.failure_timeout_s)
        return {
            "HOROVOD_CYCLE_TIME": str(tc.horovod_cycle_time_ms),
            "HOROVOD_FUSION_THRESHOLD": str(tc.horovod_fusion_threshold_mb * 1024 * 1024),
            # A collective whose peer died must end, not wait forever.
            "HOROVOD_GLOO_TIMEOUT_SECONDS": str(timeout),
            "HOROVOD_STALL_CHECK_TIME_SECONDS": str(max(5, timeout // 2)),
            "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": str(timeout),
        }

    def start(self) -> None:
        import horovod.torch as hvd

        self.hvd = hvd
        if self.device.type == "cuda" and not hvd.nccl_built():
            raise RuntimeError(f"rank {self.rank} trains on {self.device} but this Horovod was built without "
                               "NCCL, so it cannot average GPU gradients: run `make setup` on a machine with nvcc "
                               "and the CUDA build of torch (it builds a Horovod with NCCL), or set "
                               "train.strategy=ddp, or train.device=cpu")
        os.environ.update(self.settings_env())
        hvd.init()
        self.ctx.emit(Joined())

    def stop(self) -> None:
        self.hvd.shutdown()

    def setup(self, model: DlpipeModel, make_optimizer: OptimizerFactory) -> None:
        hvd = self.hvd
        # Several optimizers: plain ones, each phase's gradients averaged explicitly (two
        # DistributedOptimizers would both hook every parameter the phase's backward reaches).
        if self.setup_phases(model, make_optimizer):
            return
        self.model = model
        # Wrap before loading any state: DistributedOptimizer rebuilds the optimizer from its param
        # groups, so state loaded into the unwrapped one would be silently dropped.
        compressed = self.compress_dtype is not None
        self.optimizer = hvd.DistributedOptimizer(
            make_optimizer(model.parameters()), named_parameters=model.named_parameters(), op=hvd.Average,
            compression=hvd.Compression.fp16 if compressed else hvd.Compression.none,
            # fp16 sums could overflow: divide by the ranks before the sum rather than after it
            gradient_predivide_factor=float(self.size) if compressed else 1.0,
            # the all-reduce fires on the last of a step's N backward passes; the others accumulate
            backward_passes_per_step=self.tc.grad_accumulation)
        hvd.broadcast_parameters(model.state_dict(), root_rank=0)
        hvd.broadcast_optimizer_state(self.optimizer, root_rank=0)

    def broadcast_parameters(self, model: DlpipeModel) -> None:
        self.hvd.broadcast_parameters(model.state_dict(), root_rank=0)

    def average_gradients(self, params: list[torch.nn.Parameter], name: str) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if self.compress_dtype is None:
            self.hvd.grouped_allreduce_(grads, op=self.hvd.Average, name=name)
            return
        averaged = self.hvd.grouped_allreduce([g.to(self.compress_dtype) for g in grads], op=self.hvd.Average,
                                              name=name, prescale_factor=1.0 / self.size, postscale_factor=self.size)
        for g, mean in zip(grads, averaged):
            g.copy_(mean)

    def train_step(self, *batches: Batch) -> dict[str, float]:
        if self.phases:
            return self._phased_step(*batches)
        return step.train_step(self.forward_loss, self.optimizer, self.precision, batches,
                               synchronize=self._synchronize, weight=self.loss_weight)

    def _synchronize(self) -> AbstractContextManager[object]:
        """Average the gradients now (fp16: before the scaler checks them for overflow, so every rank
        decides alike); ``step`` must then not average them again."""
        self.optimizer.synchronize()
        skipping: AbstractContextManager[object] = self.optimizer.skip_synchronize()  # Horovod's contextmanager
        return skipping

    # Horovod matches collectives by name and names an object collective after the object's type
    # by default: a dict on rank 0 and None elsewhere would never meet. Name them explicitly.
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        return self.hvd.broadcast_object(obj, root_rank=src, name="dlpipe.broadcast_object")

    def allgather_object(self, obj: Any) -> list[Any]:
        gathered: list[Any] = self.hvd.allgather_object(obj, name="dlpipe.allgather_object")  # one per rank
        return gathered

    def allreduce_sum(self, values: torch.Tensor, name: str) -> torch.Tensor:
        total: torch.Tensor = self.hvd.allreduce(values, op=self.hvd.Sum, name=name)
        return total
