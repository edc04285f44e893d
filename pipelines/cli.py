"""``dlpipe VERB --config FILE [key.sub=value ...]``: one entry point for every job.

Verbs: etl, generate, train, infer, run (etl + train + infer under one run id), check (launcher
smoke test), rl (PPO with Spark rollouts), rl-eval (a classifier artifact as a policy in an
environment); ``dlpipe env`` (or ``--version``) prints the stack it runs on. Two verbs read the work
folder without Spark: ``dlpipe lineage RUN_ID [--prediction ID] [--record ID]`` prints the chain from a
prediction or record down to its raw file, and ``dlpipe promote ALIAS [RUN_ID]`` moves a model alias
by hand (a rollback) or, without a run, prints the alias's history. The same arguments
work with ``python -m pipelines VERB ...`` and ``spark-submit pipelines/__main__.py VERB ...``.

Before Spark starts: the config is loaded and validated for the verb (``pipelines.preflight``), the
store options resolved, and the job takes the lease of the run (and dataset) it writes
(``pipelines.lease``), so a second job on the same run id stops instead of training beside it.
``--check`` stops there, after probing every location the verb uses.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from pipelines import storage
from pipelines.config import PipelineConfig, load_config, to_yaml
from pipelines.errors import ConfigError
from pipelines.lease import Lease

# verb -> module whose ``main(spark, config)`` runs it
JOBS = {
    "etl": "pipelines.etl.job",
    "generate": "pipelines.etl.generate",
    "train": "pipelines.train.driver",
    "infer": "pipelines.infer.job",
    "run": "pipelines.run",
    "check": "pipelines.train.smoke",
    "rl": "pipelines.rl.job",
    "rl-eval": "pipelines.rl.evaluate",
}
RUN_WRITERS = ("train", "infer", "run", "rl", "rl-eval")  # verbs that write <workdir>/runs/<run_id>
DATASET_WRITERS = ("etl", "run")  # verbs that write <workdir>/datasets/<dataset>


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="dlpipe", description=__doc__.splitlines()[0])
    parser.add_argument("verb", choices=list(JOBS))
    parser.add_argument("--config", help="YAML config file (default: built-in defaults)")
    parser.add_argument("--run-id", help="run id (default: a timestamp); re-use it to resume or re-run")
    parser.add_argument("--check", action="store_true",
                        help="validate the config for the verb, probe every location it uses (list, write and "
                             "delete a marker), print the config resolved, and exit (no Spark)")
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


def known_master(config: PipelineConfig) -> str:
    """The master the job will run on, as far as it is known before Spark starts ("" = unknown)."""
    from pipelines.session import read_spark_defaults, under_spark_submit

    if under_spark_submit():
        return ""
    return read_spark_defaults().get("spark.master") or config.master or "local[*]"


def prepare(config: PipelineConfig, verb: str) -> None:
    """Everything before Spark: the store options (resolved once, here), then the one validation."""
    from pipelines.preflight import validate

    sc = config.storage
    storage.set_driver_options(storage.StorageOptions(sc.s3_endpoint, sc.s3_region, sc.azure_account).resolved())
    validate(config, verb, known_master(config))


@contextlib.contextmanager
def leases(config: PipelineConfig, verb: str) -> Iterator[None]:
    """Hold the leases of what ``verb`` writes (the run folder, the dataset) while it runs."""
    with contextlib.ExitStack() as stack:
        job = f"dlpipe {verb} (run {config.run_id})"
        if verb in DATASET_WRITERS:
            stack.enter_context(Lease(config.dataset_dir, job, config.lease.ttl_s, config.lease.wait_s, key="dataset"))
        if verb in RUN_WRITERS:
            stack.enter_context(Lease(config.run_dir(), job, config.lease.ttl_s, config.lease.wait_s, key="run_id"))
        yield


def parse_tool_args(argv: list[str]) -> argparse.Namespace:
    """The arguments of the work-folder verbs (lineage, promote): no Spark, the config only for
    ``workdir`` and the store options."""
    parser = argparse.ArgumentParser(prog=f"dlpipe {argv[0]}")
    if argv[0] == "lineage":
        parser.add_argument("run_id", help="the run whose model (or, with --prediction, whose predictions) to follow")
        parser.add_argument("--prediction", default="", help="a prediction id of that run's scoring")
        parser.add_argument("--record", default="", help="a dataset record id")
    else:
        parser.add_argument("alias", help="the model alias, e.g. current (<workdir>/models/<alias>)")
        parser.add_argument("run_id", nargs="?", default="", help="the run whose model the alias names from now "
                                                                  "on; none: print the alias's history")
        parser.add_argument("--reason", default="", help="why (kept in the alias's history)")
    parser.add_argument("--config", help="YAML config file (for workdir and the store settings)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return parser.parse_intermixed_args(argv[1:])


def run_tool(argv: list[str]) -> int:
    """``dlpipe lineage`` / ``dlpipe promote``: read (and for promote, move an alias in) the work folder."""
    from pipelines.lineage import LineageError, lineage
    from pipelines.promotion import PromotionError, alias_history, promote_by_hand

    args = parse_tool_args(argv)
    if "=" in getattr(args, "run_id", ""):  # `dlpipe promote ALIAS key=value`: an override, not a run id
        args.overrides.insert(0, args.run_id)
        args.run_id = ""
    try:
        config = load_config(args.config, list(args.overrides))
        sc = config.storage
        storage.set_driver_options(storage.StorageOptions(sc.s3_endpoint, sc.s3_region, sc.azure_account).resolved())
        workdir = config.workdir_location
        if argv[0] == "lineage":
            print("\n".join(lineage(workdir, args.run_id, args.record, args.prediction)))
        elif args.run_id:
            entry = promote_by_hand(workdir, args.alias, args.run_id, args.reason)
            print(f"dlpipe promote: alias {args.alias} names run {entry.run_id}'s model now (entry {entry.number}, "
                  f"was {entry.champion_run or 'none'})")
        else:
            history = alias_history(workdir, args.alias)
            if not history:
                raise PromotionError(f"alias {args.alias!r} was never set in {storage.redact(workdir)}: a run with "
                                     f"promotion.alias={args.alias} sets it, or `dlpipe promote {args.alias} RUN_ID`")
            for e in history:
                print(f"{e.number:>4}  {e.at}  run {e.run_id}  by {e.by}: {e.reason}")
    except (ConfigError, storage.StorageError, LineageError, PromotionError, FileNotFoundError) as e:
        print(f"dlpipe {argv[0]}: {storage.redact(str(e))}", file=sys.stderr)
        return 2 if isinstance(e, ConfigError) else 1
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["env"], ["--version"]):  # what dlpipe runs on, for a bug report; no config, no Spark
        from pipelines.stackinfo import describe_stack

        print(describe_stack())
        return 0
    if argv[:1] in (["lineage"], ["promote"]):
        return run_tool(argv)
    args = parse_args(argv)
    try:
        config = resolve_config(args)
        prepare(config, args.verb)
        if args.check:
            from pipelines.preflight import probe_locations

            for probe in probe_locations(config, args.verb):
                print(f"# {probe}")
            print(f"# dlpipe {args.verb}: config is valid\n" + to_yaml(config), end="")
            return 0
    except (ConfigError, storage.StorageError) as e:
        print(f"dlpipe: config error: {e}", file=sys.stderr)
        return 2
    job = importlib.import_module(JOBS[args.verb])
    from pipelines.progress import spark_progress
    from pipelines.session import get_spark

    try:
        with leases(config, args.verb):
            spark = get_spark(f"dlpipe-{args.verb}", master=config.master, conf=config.spark)
            try:
                # Training draws its own bar, rl a line per iteration; `run` shows each of its stages itself.
                with spark_progress(spark, args.verb, shown=args.verb not in ("train", "run", "rl", "rl-eval")):
                    result = job.main(spark, config)
            finally:
                spark.stop()
    except ConfigError as e:
        print(f"dlpipe {args.verb}: config error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # ours (or a Spark task's): one line; anything else: raised
        from pipelines.session import task_failure

        line: str | None
        if type(e).__module__.startswith("pipelines.") or isinstance(e, FileNotFoundError):
            line = f"{type(e).__name__}: {e}"
        else:
            line = task_failure(e)
            if line is None:
                raise  # not ours: keep the traceback
        print(f"dlpipe {args.verb}: {storage.redact(line)}\n(full traces: {_keep_traceback(e)})", file=sys.stderr)
        return 1
    _say_done(args.verb, config, result)
    return 0


def _keep_traceback(error: BaseException) -> str:
    """Append ``error``'s traceback to the job's Spark log file (beside the Java side); its path."""
    from pipelines.session import append_to_spark_log

    return append_to_spark_log(f"{time.strftime('%Y-%m-%d %H:%M:%S')} dlpipe: the job failed:\n"
                               + storage.redact("".join(traceback.format_exception(error))))


def _say_done(verb: str, config: PipelineConfig, result: Any) -> None:
    if verb == "run":
        print(f"dlpipe: run {config.run_id} finished; report: {storage.redact(result.report)}")
    elif verb in ("rl", "rl-eval"):
        print(f"dlpipe: {verb} {config.run_id} finished; mean return {result.eval.mean_return:.1f}")
