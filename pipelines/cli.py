"""``dlpipe VERB --config FILE [key.sub=value ...]``: one entry point for every job.

Verbs: etl, generate, train, infer, run (etl + train + infer under one run id), check (launcher
smoke test), rl (PPO with Spark rollouts), rl-eval (a classifier artifact as a policy in an
environment). The same arguments work with ``python -m pipelines VERB ...`` and
``spark-submit pipelines/__main__.py VERB ...``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from pipelines.config import ConfigError, PipelineConfig, check_environment, load_config, to_yaml

# verb -> module whose ``main(spark, config)`` runs it
JOBS = {
    "etl": "pipelines.etl.job",
    "generate": "pipelines.etl.generate",
    "train": "pipelines.train.driver",
    "infer": "pipelines.infer.job",
    "run": "pipelines.run",
    "check": "pipelines.launcher.smoke",
    "rl": "pipelines.rl.job",
    "rl-eval": "pipelines.rl.evaluate",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dlpipe", description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=list(JOBS))
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--run-id", help="run id (default: a timestamp); re-use it to resume or re-run")
    parser.add_argument("--check", action="store_true",
                        help="validate the config, print it resolved, and exit (no Spark)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return parser.parse_intermixed_args(argv)


def resolve_config(args: argparse.Namespace) -> PipelineConfig:
    overrides = list(args.overrides)
    if args.run_id:
        overrides.append(f"run_id={args.run_id}")
    config = load_config(args.config, overrides)
    if not config.run_id:
        config.run_id = time.strftime("%Y%m%d-%H%M%S")
    return config


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = resolve_config(args)
        check_environment(config)
    except ConfigError as e:
        print(f"dlpipe: config error: {e}", file=sys.stderr)
        return 2
    if args.check:
        print(f"# dlpipe {args.verb}: config is valid\n" + to_yaml(config), end="")
        return 0
    job = importlib.import_module(JOBS[args.verb])
    from pipelines.session import get_spark

    from pipelines.progress import spark_progress

    spark = get_spark(f"dlpipe-{args.verb}", master=config.master, conf=config.spark)
    try:
        # Training draws its own bar, rl a line per iteration; `run` shows each of its stages itself.
        with spark_progress(spark, args.verb, shown=args.verb not in ("train", "run", "rl", "rl-eval")):
            result = job.main(spark, config)
    except ConfigError as e:
        print(f"dlpipe {args.verb}: config error: {e}", file=sys.stderr)
        return 2
    except (RuntimeError, FileNotFoundError, ValueError) as e:
        if not type(e).__module__.startswith("pipelines."):  # not ours: keep the traceback
            raise
        print(f"dlpipe {args.verb}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        spark.stop()
    if args.verb == "run":
        print(f"dlpipe: run {config.run_id} finished; report: {result['report']}")
    if args.verb in ("rl", "rl-eval"):
        print(f"dlpipe: {args.verb} {config.run_id} finished; mean return {result['eval']['mean_return']:.1f}")
    return 0
