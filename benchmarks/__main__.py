"""``python -m benchmarks NAME|all [--size tiny|small|large] [--config FILE] [key=value ...]``.

Builds the config (default file ``pipelines/configs/digits_cnn.yaml``) and dlpipe's SparkSession,
then runs :func:`benchmarks.run`. ``make bench`` = ``python -m benchmarks all --size small``.
Measures whatever the named benchmark measures (see ``benchmarks``).
"""
from __future__ import annotations

import argparse
import os
import sys

from benchmarks import NAMES, SIZES, run
from benchmarks.harness import REPO_ROOT, BenchError
from pipelines.config import load_config
from pipelines.errors import ConfigError
from pipelines.tracking import TRACKING_OFF

DEFAULT_CONFIG = REPO_ROOT / "pipelines" / "configs" / "digits_cnn.yaml"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="Each dlpipe stage side by side with its peers and its limit.")
    parser.add_argument("name", choices=("all", *NAMES), help="the benchmark to run, or all of them in turn")
    parser.add_argument("--size", default="small", choices=SIZES,
                        help="data size: tiny (a smoke run, seconds), small (docs/benchmarks.md), large")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG),
                        help=f"YAML config file (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return parser.parse_intermixed_args(argv)


def use_repo_on_pythonpath() -> None:
    """Put the repository root first on ``PYTHONPATH`` before Spark starts: executors and the rank
    processes they start inherit it and must import ``benchmarks.ranks`` (benchmarks/ is not installed)."""
    current = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(REPO_ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *current])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config, [*TRACKING_OFF, *args.overrides])
    except ConfigError as e:
        print(f"benchmarks: config error: {e}", file=sys.stderr)
        return 2
    use_repo_on_pythonpath()
    from pipelines.session import get_spark

    spark = get_spark("dlpipe-bench", master=config.master, conf=config.spark)
    try:
        run(spark, config, args.name, args.size)
    except ConfigError as e:
        print(f"benchmarks {args.name}: config error: {e}", file=sys.stderr)
        return 2
    except BenchError as e:
        print(f"benchmarks {args.name}: {e}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
