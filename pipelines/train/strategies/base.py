"""What a training strategy is: how one step runs across ranks, and how state is gathered and restored.

The trainer (``pipelines.train.rank``) calls only these methods, so it never asks which strategy
runs, and never what model it trains. A strategy owns its process group, the wrapped model and
the optimizer; the loader, checkpoints and the artifact are shared. It runs on one device (a GPU
or the CPU, chosen by ``pipelines.device``) at one precision (``train.precision``), both fixed
when it is made: its steps never ask which.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, ClassVar, Iterable

import torch

from models import DlpipeModel
from pipelines.config import TrainConfig
from pipelines.launcher.rank import RankContext
from pipelines.train import step
from pipelines.train.precision import Precision

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
Batch = dict[str, torch.Tensor]


class Strategy(abc.ABC):
    """One distributed training method on ``ctx.size`` ranks."""

    name: ClassVar[str]
    rendezvous: ClassVar[str]  # what the launcher hands out: "horovod" or "torch"
    data_parallel: ClassVar[bool] = True  # False: every rank reads the same batches (model parallel)
    lockstep_eval: ClassVar[bool] = False  # True: an eval forward is a collective (ranks must run as many)

    def __init__(self, ctx: RankContext, tc: TrainConfig, device: torch.device | None = None) -> None:
        self.ctx, self.tc = ctx, tc
        self.rank, self.size = ctx.rank, ctx.size
        self.device = device or torch.device("cpu")
        self.precision = Precision(tc.precision, self.device)

    # --- process group ---------------------------------------------------------------------------

    @abc.abstractmethod
    def start(self) -> None:
        """Join the other ranks."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Leave the process group."""

    @property
    def reporting_rank(self) -> int:
        """The rank whose step figures (loss, metrics) stand for the job's: it sends the progress."""
        return 0

    def shard(self) -> tuple[int, int]:
        """(this rank's shard, number of shards) of every split it reads."""
        return (self.rank, self.size) if self.data_parallel else (0, 1)

    # --- model ---------------------------------------------------------------------------------------

    @abc.abstractmethod
    def setup(self, model: DlpipeModel, make_optimizer: OptimizerFactory) -> None:
        """Wrap ``model`` (identical on every rank, already on ``self.device``) and build its optimizer."""

    # The defaults below suit a strategy whose rank runs the whole model as ``self.model`` with
    # ``self.optimizer`` (set by ``setup``): the data-parallel ones override only what differs.

    def set_training(self, training: bool) -> None:
        """Train or eval mode for what this rank runs."""
        self.model.train(training)

    def forward_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The model's loss for a training step (through whatever wrapper synchronizes gradients)."""
        return self.model.loss(batch)

    def train_step(self, batch: Batch) -> dict[str, float]:
        """One optimizer step on ``batch`` (on ``self.device``); ``loss`` and the model's metrics
        where this rank has them."""
        return step.train_step(self.forward_loss, self.optimizer, self.precision, batch)

    def eval_step(self, batch: Batch) -> dict[str, float]:
        """``loss`` and metrics of ``batch`` without training (empty on ranks that do not see them)."""
        return step.eval_step(self.model.loss, self.precision, batch)

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        """(full model state dict under the model's own names, optimizer state). A collective:
        every rank calls it; rank 0's copy is complete and is what checkpoints hold."""
        return self.model.state_dict(), self.optimizer.state_dict()

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: Any) -> None:
        """Restore what :meth:`state` returned (every rank calls it with the same values)."""
        self.model.load_state_dict(model_state)
        self.optimizer.load_state_dict(optimizer_state)

    def held_parameters(self) -> int:
        """Parameter elements this rank keeps in memory (sharding and pipelining lower it)."""
        return sum(_local(p).numel() for p in self.model.parameters())

    def optimizer_bytes(self) -> int:
        """Bytes of optimizer state (e.g. Adam's moments) this rank keeps (its shard, under FSDP)."""
        total = 0
        for state in self.optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    local = _local(value)
                    total += local.numel() * local.element_size()
        return total

    # --- collectives ---------------------------------------------------------------------------

    @abc.abstractmethod
    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """``obj`` from rank ``src`` on every rank."""

    @abc.abstractmethod
    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order."""

    @abc.abstractmethod
    def allreduce_sum(self, values: torch.Tensor, name: str) -> torch.Tensor:
        """Element-wise sum of ``values`` over ranks."""

    def combine(self, values: dict[str, float], mean: bool, name: str) -> dict[str, float]:
        """Per-rank figures -> the job's: data parallel ranks each hold a part (mean or sum over
        ranks); a model-parallel strategy overrides this to take them from the rank that has them."""
        keys = self.broadcast_object(sorted(values))  # a rank that saw no rows still joins the sum
        total = self.allreduce_sum(torch.tensor([values.get(k, 0.0) for k in keys], dtype=torch.float64), name)
        scale = self.size if mean else 1
        return {k: total[i].item() / scale for i, k in enumerate(keys)}


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (a sharded DTensor's local shard, else the tensor itself)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
