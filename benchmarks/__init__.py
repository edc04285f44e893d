"""``dlpipe bench NAME --size tiny|small|large``: each stage side by side with its peers and its limit.

Each benchmark runs its contenders one after the other in this process tree, on the same data and
cores, repeats every measurement, prints a table and writes ``<workdir>/bench/NAME.json``; the
docs page (``docs/benchmarks.md``, or ``<workdir>/bench/benchmarks.md`` for ``--size tiny``) is
regenerated from those files after every run.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from pipelines.bench.common import SIZES
from pipelines.config import ConfigError, PipelineConfig

NAMES = ("loader", "train", "infer", "etl", "memory")

__all__ = ["NAMES", "SIZES", "main"]


def main(spark: Any, config: PipelineConfig, name: str, size: str = "small",
         docs_path: str | Path | None = None) -> dict[str, Any]:
    """Run benchmark ``name`` (or ``all``) at ``size``; return {name: its JSON}.

    ``docs_path``: where the docs page goes; default ``docs/benchmarks.md`` in the repository,
    except for ``size=tiny`` (a smoke run), which writes ``<workdir>/bench/benchmarks.md``.
    """
    from pipelines.bench import common, docs

    if size not in SIZES:
        raise ConfigError(f"bench size {size!r} is not one of {', '.join(SIZES)}")
    names = NAMES if name == "all" else (name,)
    if any(n not in NAMES for n in names):
        raise ConfigError(f"bench {name!r} is not one of all, {', '.join(NAMES)}")
    results = {}
    for n in names:
        results[n] = importlib.import_module(f"pipelines.bench.{n}").run(spark, config, size)
    if docs_path is None:
        docs_path = common.bench_dir(config) / "benchmarks.md" if size == "tiny" else docs.DEFAULT_PATH
    written = docs.write(common.bench_dir(config), Path(docs_path), size)
    print(f"dlpipe bench: figures in {common.bench_dir(config)}/<name>.json; table in {written}", flush=True)
    return results
