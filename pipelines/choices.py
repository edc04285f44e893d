"""Allowed values of settings whose code lives in registries of higher layers, listed once.

The config validates against these before Spark starts (it cannot import the torch-bound
registries); each registry is built for exactly these names and says so at import
(``pipelines.train.strategies.STRATEGIES``, ``pipelines.train.precision.PRECISIONS``,
``pipelines.train.strategies.base.COMPRESSIONS``). No imports: torch-only modules use it too.
"""
from __future__ import annotations

STRATEGY_NAMES = ("horovod", "ddp", "fsdp", "pipeline")  # train.strategy
PRECISION_NAMES = ("fp32", "bf16", "fp16")  # train.precision
COMPRESSION_NAMES = ("none", "fp16", "bf16")  # train.grad_compression
LOADER_NAMES = ("petastorm", "arrow")  # train.loader (pipelines.train.loader.LOADERS)


def check_registry(key: str, names: tuple[str, ...], registered: tuple[str, ...]) -> None:
    """A registry (called at its import) holds exactly the values ``key`` allows, in their order."""
    if registered != names:
        raise ImportError(f"{key}: the registry holds {registered}, pipelines.choices lists {names}")
