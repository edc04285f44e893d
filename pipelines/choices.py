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
AUTO_LOADER = "auto"  # train.loader's default: resolve_loader picks one of LOADER_NAMES
PETASTORM_PYARROW_BELOW = 15  # Petastorm 0.12.1 imports pyarrow.filesystem, which pyarrow 15 dropped


def check_registry(key: str, names: tuple[str, ...], registered: tuple[str, ...]) -> None:
    """A registry (called at its import) holds exactly the values ``key`` allows, in their order."""
    if registered != names:
        raise ImportError(f"{key}: the registry holds {registered}, pipelines.choices lists {names}")


def resolve_loader(name: str) -> str:
    """``train.loader`` as the loader that reads: ``auto`` is ``petastorm`` where Petastorm can run
    (installed, on pyarrow < 15: the classic and Spark 4 lines) and ``arrow`` elsewhere (the current
    line); any other name is itself."""
    if name != AUTO_LOADER:
        return name
    from importlib import metadata

    try:
        metadata.version("petastorm")
        pyarrow_major = int(metadata.version("pyarrow").split(".")[0])
    except metadata.PackageNotFoundError:
        return "arrow"
    return "petastorm" if pyarrow_major < PETASTORM_PYARROW_BELOW else "arrow"
