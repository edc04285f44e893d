"""``dlpipe VERB --config FILE [key.sub=value ...]``: one entry point for every job.

Verbs: etl, generate, train, infer, run (etl + train + infer under one run id), check (launcher
smoke test), bench. Each job is also a spark-submit script (``pipelines/<job>.py``) taking the
same arguments.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pipelines.config import ConfigError, PipelineConfig, load_config

VERBS = ("etl", "generate", "train", "infer", "run", "check", "bench")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dlpipe", description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=VERBS)
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--run-id", help="run id (default: a timestamp); re-use it to resume or re-run")
    parser.add_argument("--size", default="small", choices=("tiny", "small", "large"),
                        help="bench only: data size (`dlpipe bench NAME --size tiny`, NAME: all or one benchmark)")
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
    bench_name = ""
    if args.verb == "bench":  # `dlpipe bench NAME`: NAME arrives as the first positional after the verb
        from pipelines.bench import NAMES

        bench_name = args.overrides.pop(0) if args.overrides else ""
        if bench_name not in ("all", *NAMES):
            print(f"dlpipe bench: name a benchmark: all, {', '.join(NAMES)} (got {bench_name!r})", file=sys.stderr)
            return 2
    try:
        config = resolve_config(args)
    except ConfigError as e:
        print(f"dlpipe: config error: {e}", file=sys.stderr)
        return 2
    from pipelines.session import get_spark

    spark = get_spark(f"dlpipe-{args.verb}", master=config.master, conf=config.spark)
    try:
        if bench_name:
            from pipelines import bench

            result = bench.main(spark, config, bench_name, args.size)
        else:
            result = run_verb(args.verb, spark, config)
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
    return 0


def run_verb(verb: str, spark: Any, config: PipelineConfig) -> Any:
    if verb == "etl":
        from pipelines import etl
        return etl.main(spark, config)
    if verb == "generate":
        from pipelines import generate
        return generate.main(spark, config)
    if verb == "train":
        from pipelines import train
        return train.main(spark, config)
    if verb == "infer":
        from pipelines import infer
        return infer.main(spark, config)
    if verb == "run":
        from pipelines import run
        return run.main(spark, config)
    if verb == "check":
        from pipelines.launcher import run_horovod
        result = run_horovod(spark, "pipelines.launcher.smoke:allreduce_sum", {}, num_workers=config.train.num_workers)
        print(f"dlpipe check: {config.train.num_workers} Horovod ranks allreduced {result['sum']}")
        return result
    raise ValueError(verb)


if __name__ == "__main__":
    sys.exit(main())
