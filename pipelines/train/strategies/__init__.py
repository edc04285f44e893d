"""Training strategies: how one step runs across ranks (``train.strategy``).

``horovod`` (default) and ``ddp``: data parallel, the whole model on every rank, gradients averaged;
``fsdp``: data parallel with parameters, gradients and optimizer state sharded over the ranks;
``pipeline``: model parallel, one stage of the model per rank, micro-batches flowing through.
All run in the same barrier stage, read the same Petastorm shards (the pipeline: the same batches
on every rank), and write the same checkpoints and model artifact.
"""
from __future__ import annotations

import torch

from pipelines.choices import STRATEGY_NAMES, check_registry
from pipelines.config import TrainConfig
from pipelines.launcher.rank import RankContext
from pipelines.train.strategies.base import Strategy
from pipelines.train.strategies.ddp import DDPStrategy
from pipelines.train.strategies.fsdp import FSDPStrategy
from pipelines.train.strategies.horovod import HorovodStrategy
from pipelines.train.strategies.pipeline import PipelineStrategy

STRATEGIES: dict[str, type[Strategy]] = {s.name: s for s in (HorovodStrategy, DDPStrategy, FSDPStrategy,
                                                              PipelineStrategy)}
check_registry("train.strategy", STRATEGY_NAMES, tuple(STRATEGIES))

__all__ = ["STRATEGIES", "Strategy", "make_strategy"]


def make_strategy(ctx: RankContext, tc: TrainConfig, device: torch.device | None = None) -> Strategy:
    """The strategy ``train.strategy`` names, for this rank, on ``device`` (default: the CPU)."""
    return STRATEGIES[tc.strategy](ctx, tc, device)

