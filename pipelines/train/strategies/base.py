"""What a training strategy is: how one step runs across ranks, and how state is gathered and restored.

The trainer (``pipelines.train.rank``) calls only these methods, so it never asks which strategy
runs, and never what model it trains. A strategy owns its process group, the wrapped model and
the optimizer; the loader, checkpoints and the artifact are shared. It runs on one device (a GPU
or the CPU, chosen by ``pipelines.device``) at one precision (``train.precision``), both fixed
when it is made: its steps never ask which.
"""
from __future__ import annotations

import abc
import contextlib
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from typing import Any, ClassVar

import torch

from models import DlpipeModel
from models.base import TrainingPhase
from pipelines.choices import COMPRESSION_NAMES, PRECISION_NAMES, check_registry
from pipelines.config import TrainConfig
from pipelines.launcher.rank import RankContext
from pipelines.train import step
from pipelines.train.precision import Precision

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
COMPRESSIONS = {"none": None, "fp16": torch.float16, "bf16": torch.bfloat16}  # train.grad_compression
check_registry("train.grad_compression", COMPRESSION_NAMES, tuple(COMPRESSIONS))
Batch = dict[str, torch.Tensor]


class Strategy(abc.ABC):
    """One distributed training method on ``ctx.size`` ranks."""

    name: ClassVar[str]
    rendezvous: ClassVar[type]  # the driver-side rendezvous its ranks meet through (pipelines.train.rendezvous)
    data_parallel: ClassVar[bool] = True  # False: every rank reads the same batches (model parallel)
    precisions: ClassVar[tuple[str, ...]] = PRECISION_NAMES  # train.precision values it supports (default: all)
    lockstep_eval: ClassVar[bool] = False  # True: an eval forward is a collective (ranks must run as many)
    # True: trains models with several optimizers (``model.training_phases()``, a GAN) by
    # averaging each phase's gradients itself (:meth:`average_gradients`).
    multi_phase: ClassVar[bool] = False
    # train.grad_compression values it supports: the dtype gradients travel in when all-reduced
    compressions: ClassVar[tuple[str, ...]] = ("none",)
    accumulates: ClassVar[bool] = False  # supports train.grad_accumulation > 1 (no_sync between batches)
    optimizer: torch.optim.Optimizer  # set by setup() (a one-optimizer model)
    # the factor on this rank's loss before backward: elastic training weights each rank by its share
    # of the step's rows (pipelines.train.elastic), so the averaged gradient is the step's mean
    loss_weight: float = 1.0

    def __init__(self, ctx: RankContext, tc: TrainConfig, device: torch.device | None = None) -> None:
        self.ctx, self.tc = ctx, tc
        self.rank, self.size = ctx.rank, ctx.size
        self.device = device or torch.device("cpu")
        self.precision = Precision(tc.precision, self.device)
        self.compress_dtype = COMPRESSIONS[tc.grad_compression]  # None: gradients travel as they are
        self.phases: list[TrainingPhase] = []  # set by setup_phases for a model with several optimizers
        self.optimizers: dict[str, torch.optim.Optimizer] = {}  # by phase name, with phases

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

    def setup_phases(self, model: DlpipeModel, make_optimizer: OptimizerFactory) -> bool:
        """For a model with several training phases: one plain optimizer per phase, rank 0's weights
        everywhere, and True (the strategy's own wrapping is skipped). False for a one-phase model."""
        phases = model.training_phases()
        if len(phases) == 1:
            return False
        if not self.multi_phase:
            raise ValueError(f"model {model.name!r} trains with {len(phases)} optimizers "
                             f"({', '.join(p.name for p in phases)}); train.strategy={self.name} supports one: "
                             f"use horovod or ddp")
        if self.precision.scaler is not None:  # one loss scaler would have to serve every optimizer
            raise ValueError(f"model {model.name!r} trains with {len(phases)} optimizers; train.precision=fp16 "
                             "scales one loss: use train.precision=bf16 or fp32")
        self.model, self.phases = model, phases
        self.optimizers = {p.name: make_optimizer(p.parameters()) for p in phases}
        self.broadcast_parameters(model)
        return True

    def broadcast_parameters(self, model: DlpipeModel) -> None:
        """Rank 0's parameters and buffers on every rank (multi-phase models; others are wrapped)."""
        raise NotImplementedError(f"train.strategy={self.name} does not train multi-phase models")

    def average_gradients(self, params: list[torch.nn.Parameter], name: str) -> None:
        """Replace each gradient by its mean over the ranks (one collective for the list)."""
        raise NotImplementedError(f"train.strategy={self.name} does not train multi-phase models")

    def train_step(self, *batches: Batch) -> dict[str, float]:
        """One optimizer step on ``batches`` (on ``self.device``; several: ``train.grad_accumulation``,
        gradients all-reduced once); ``loss`` and the model's metrics where this rank has them."""
        if self.phases:
            return self._phased_step(*batches)
        return step.train_step(self.forward_loss, self.optimizer, self.precision, batches, no_sync=self.no_sync,
                               weight=self.loss_weight)

    def no_sync(self) -> AbstractContextManager[object]:
        """A context in which a backward accumulates gradients without all-reducing them."""
        return contextlib.nullcontext()


    def _phased_step(self, batch: Batch) -> dict[str, float]:  # one batch: validation refuses accumulation
        """Each phase in order: its loss, its gradients (averaged once over the ranks), its step.
        ``loss`` is the sum of the phases' losses, ``<phase>_loss`` each one's."""
        figures: dict[str, float] = {"loss": 0.0}
        for phase in self.phases:
            params = phase.parameters()
            optimizer = self.optimizers[phase.name]
            optimizer.zero_grad()
            with _only_trainable(self.model, params):
                with self.precision.autocast():
                    loss, metrics = phase.loss(batch)
                (loss * self.loss_weight if self.loss_weight != 1.0 else loss).backward()
            self.average_gradients(params, name=f"dlpipe.grad.{phase.name}")
            optimizer.step()
            value = loss.item()
            figures["loss"] += value
            figures[f"{phase.name}_loss"] = value
            figures.update({k: float(v) for k, v in metrics.items()})
        return figures

    def eval_step(self, batch: Batch) -> dict[str, float]:
        """``loss`` and metrics of ``batch`` without training (empty on ranks that do not see them)."""
        return step.eval_step(self.model.loss, self.precision, batch)

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        """(full model state dict under the model's own names, optimizer state). A collective:
        every rank calls it; rank 0's copy is complete and is what checkpoints hold."""
        if self.phases:
            return self.model.state_dict(), {name: o.state_dict() for name, o in self.optimizers.items()}
        return self.model.state_dict(), self.optimizer.state_dict()

    def load(self, model_state: dict[str, torch.Tensor], optimizer_state: Any) -> None:
        """Restore what :meth:`state` returned (every rank calls it with the same values)."""
        self.model.load_state_dict(model_state)
        if self.phases:
            for name, optimizer in self.optimizers.items():
                optimizer.load_state_dict(optimizer_state[name])
            return
        self.optimizer.load_state_dict(optimizer_state)

    def held_parameters(self) -> int:
        """Parameter elements this rank keeps in memory (sharding and pipelining lower it)."""
        return sum(_local(p).numel() for p in self.model.parameters())

    def optimizer_bytes(self) -> int:
        """Bytes of optimizer state (e.g. Adam's moments) this rank keeps (its shard, under FSDP)."""
        total = 0
        optimizers = self.optimizers.values() if self.phases else [self.optimizer]
        for state in (s for o in optimizers for s in o.state.values()):
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


@contextlib.contextmanager
def _only_trainable(model: torch.nn.Module, params: list[torch.nn.Parameter]) -> Iterator[None]:
    """Inside, only ``params`` require gradients: a phase's backward computes (and its average
    reduces) nothing for the other phases' parameters, e.g. the discriminator's during the
    generator's step."""
    mine = {id(p) for p in params}
    frozen = [p for p in model.parameters() if id(p) not in mine and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a tensor (a sharded DTensor's local shard, else the tensor itself)."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor
