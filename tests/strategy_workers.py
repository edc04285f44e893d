"""Rank bodies for tests/unit/train/test_strategies.py: one training step of a strategy, no Spark.

Spawned processes import this module by name (``tests/`` is on the path), so it lives outside the
test module.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

BATCH = 16  # rows of the whole step; data-parallel ranks take half each


def make_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    return {"features": torch.randn(BATCH, 1, 8, 8, generator=g), "label": torch.randint(0, 10, (BATCH,), generator=g)}


def make_model():
    import models

    torch.manual_seed(0)
    return models.build("cnn", feature_shape=(1, 8, 8), num_classes=10, dropout=0.0)


def one_step(rank: int, world: int, port: int, strategy_name: str, microbatches: int, out: str,
             precision: str = "fp32") -> None:
    """Join the group through the parent's TCPStore, run one step, save figures, gradients, held parameters."""
    from pipelines.config import PipelineParallelConfig, TrainConfig
    from pipelines.launcher.rank import RankContext
    from pipelines.train.strategies import STRATEGIES

    os.environ.update({"DLPIPE_STORE_ADDR": "127.0.0.1", "DLPIPE_STORE_PORT": str(port),
                       "DLPIPE_STALL_TIMEOUT_S": "60", "GLOO_SOCKET_IFNAME": "lo"})
    torch.set_num_threads(1)
    tc = TrainConfig(strategy=strategy_name, batch_size=BATCH, pipeline=PipelineParallelConfig(microbatches=microbatches),
                     precision=precision)
    strategy = STRATEGIES[strategy_name](RankContext(rank, world, rank, 1, 0), tc)
    strategy.start()
    try:
        model = make_model()
        strategy.setup(model, lambda params: torch.optim.SGD(params, lr=0.0))  # lr 0: compare gradients only
        batch = make_batch()
        if strategy.data_parallel:
            half = BATCH // world
            batch = {k: v[rank * half:(rank + 1) * half] for k, v in batch.items()}
        figures = strategy.train_step(batch)
        grads = _gradients(strategy)
        full_state, _ = strategy.state()
        torch.save({"figures": figures, "grads": grads, "held": strategy.held_parameters(),
                    "state_keys": sorted(full_state)}, Path(out) / f"rank{rank}.pt")
    finally:
        strategy.stop()


def _gradients(strategy) -> dict[str, torch.Tensor]:
    """This rank's gradients under the model's own parameter names (FSDP: gathered to full tensors)."""
    if strategy.name == "pipeline":
        return {strategy.names[k]: p.grad.clone() for k, p in strategy.module.named_parameters()}
    grads = {}
    for name, p in strategy.model.named_parameters():
        grad = p.grad
        grads[name] = (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).clone()
    return grads
