"""``python -m benchmarks NAME|all --size tiny|small|large``: each dlpipe stage beside its peers and its limit.

One module per benchmark, each measuring one stage (``run(spark, config, size)``):

- ``loader``: a training rank's data path (samples/s) against a plain pyarrow read;
- ``storage``: the loader and checkpoints on S3 (a real S3 server on loopback) against local disk;
- ``train``: Horovod training launched by dlpipe (samples/s, launch time) against plain PyTorch,
  DDP and TorchDistributor;
- ``elastic``: a rank lost inside an epoch: elastic resume against a whole restart (time, samples redone);
- ``infer``: the inference job (rows/s) against one PyTorch process and ``predict_batch_udf``;
- ``etl``: the ETL (rows/s, time per phase) against a plain Spark read + Parquet write;
- ``append``: ``etl.mode=append`` of 1% new data against a full ETL; a warm-started training against a cold one;
- ``memory``: a training rank's peak RSS on a dataset 10x larger than the base one;
- ``scale``: the ETL and one training epoch at three sizes 10x apart (time, throughput, peak memory);
- ``rl``: ``dlpipe rl``'s Spark rollout actors (env steps/s) against Gymnasium's Sync/AsyncVectorEnv.

Shared pieces: ``harness`` (repeats, medians, ratios and targets, the table and JSON), ``data``
(the datasets, made once through dlpipe's own ETL), ``procs`` and ``workers`` (contenders in their
own processes), ``training`` and ``ranks`` (dlpipe's training launched and timed), ``docs`` (the
docs page). Each benchmark runs its contenders in this process tree, on the same data and cores,
repeats every measurement, prints a table and writes ``<workdir>/bench/NAME.json``; the docs page
(``docs/benchmarks.md``, or ``<workdir>/bench/benchmarks.md`` for ``--size tiny``) is regenerated
from those files after every run. Not installed with dlpipe: run it from the repository root.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from benchmarks.data import SIZES
from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError

NAMES = ("loader", "storage", "train", "elastic", "infer", "etl", "append", "memory", "scale", "rl")

__all__ = ["NAMES", "SIZES", "run"]


def run(spark: Any, config: PipelineConfig, name: str, size: str = "small",
        docs_path: str | Path | None = None) -> dict[str, Any]:
    """Run benchmark ``name`` (or ``all``) at ``size``; return {name: its JSON}.

    ``docs_path``: where the docs page goes; default ``docs/benchmarks.md`` in the repository,
    except for ``size=tiny`` (a smoke run), which writes ``<workdir>/bench/benchmarks.md``.
    """
    from benchmarks import docs, harness

    if size not in SIZES:
        raise ConfigError(f"bench size {size!r} is not one of {', '.join(SIZES)}")
    names = NAMES if name == "all" else (name,)
    if any(n not in NAMES for n in names):
        raise ConfigError(f"bench {name!r} is not one of all, {', '.join(NAMES)}")
    results = {}
    for n in names:
        results[n] = importlib.import_module(f"benchmarks.{n}").run(spark, config, size)
    out = harness.bench_dir(config)
    if docs_path is None:
        docs_path = out / "benchmarks.md" if size == "tiny" else docs.DEFAULT_PATH
    written = docs.write(out, Path(docs_path), size)
    print(f"benchmarks: figures in {out}/<name>.json; table in {written}", flush=True)
    return results
