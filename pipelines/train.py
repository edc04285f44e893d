"""Training job (driver side): ``spark-submit pipelines/train.py --config FILE [key=value ...]``.

Reads only the ETL's manifest and Parquet; launches one barrier stage of ``train.num_workers``
Horovod ranks (see ``pipelines.launcher``) running ``pipelines.trainer.train_rank``; retries a
failed stage up to ``train.max_attempts`` times, each attempt resuming from the last checkpoint.
"""
from __future__ import annotations

import sys
from typing import Any, Callable

from pyspark.sql import SparkSession

from pipelines import dataset
from pipelines.config import PipelineConfig, to_yaml
from pipelines.launcher import LaunchError, run_horovod
from pipelines.loader import row_group_sizes
from pipelines.progress import EpochProgress
from pipelines.publish import write_text_atomic
from pipelines.session import describe

EventHandler = Callable[[int, dict[str, Any]], None]


class TrainError(RuntimeError):
    """Training cannot start or did not finish; the message says what to change."""


def main(spark: SparkSession, config: PipelineConfig, on_event: EventHandler | None = None) -> dict[str, Any]:
    """Train ``config.model`` on the ETL output; return rank 0's summary (history, artifact path)."""
    tc = config.train
    manifest = dataset.load_manifest(config.dataset_dir)
    splits = dataset.split_paths(config.dataset_dir)
    check_layout(splits["train"], tc.num_workers)
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    payload = {"config": config.to_dict(), "manifest": manifest, "manifest_hash": dataset.manifest_hash(manifest),
               "splits": splits, "run_dir": str(run_dir.resolve())}
    progress = EpochProgress(tc.epochs)

    def handle(rank: int, event: dict[str, Any]) -> None:
        progress(rank, event)
        if on_event is not None:
            on_event(rank, event)

    describe(spark, f"train {config.model.name} on {tc.num_workers} Horovod ranks")
    env = {"HOROVOD_CYCLE_TIME": str(tc.horovod_cycle_time_ms),
           "HOROVOD_FUSION_THRESHOLD": str(tc.horovod_fusion_threshold_mb * 1024 * 1024)}
    for attempt in range(tc.max_attempts):
        try:
            return run_horovod(spark, "pipelines.trainer:train_rank", payload, num_workers=tc.num_workers,
                               start_timeout_s=tc.start_timeout_s, failure_timeout_s=tc.failure_timeout_s,
                               gloo_iface=tc.gloo_iface, extra_env=env, on_event=handle, attempt=attempt,
                               description=f"dlpipe train {config.model.name} (attempt {attempt + 1})")
        except LaunchError as e:
            if attempt + 1 >= tc.max_attempts:
                raise TrainError(f"training failed after {tc.max_attempts} attempt(s) "
                                 f"(train.max_attempts={tc.max_attempts}): {e}") from e
            print(f"dlpipe train: attempt {attempt + 1} of {tc.max_attempts} failed; relaunching from the last "
                  f"checkpoint. Cause: {str(e).splitlines()[0]}", flush=True)
    raise AssertionError("unreachable")


def check_layout(train_path: str, num_workers: int) -> None:
    """Every rank needs at least one row group of its own: catch it before launching."""
    groups = len(row_group_sizes(train_path))
    if groups < num_workers:
        raise TrainError(f"the train split {train_path} has {groups} row group(s) but train.num_workers="
                         f"{num_workers}: lower train.num_workers, or re-run the ETL with a smaller "
                         f"etl.rows_per_row_group or more etl.output_files")


if __name__ == "__main__":
    from pipelines.cli import main as cli_main

    sys.exit(cli_main(["train", *sys.argv[1:]]))
