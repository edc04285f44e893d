"""``python -m benchmarks etl``: the ETL on tabular input against a plain Spark read + Parquet write.

Measures rows/s, and the ETL's time per phase. The input is generated digits written as Parquet
(``id``, ``label``, ``features``: a tabular source, ``etl.source.kind=parquet``). Contenders, one
after the other in the same SparkSession:

- ``dlpipe_etl``: ``pipelines.etl.job.main`` (validate every record, quarantine, deduplicate, split,
  normalization statistics, publish atomically), rows in / s; its phases are timed through
  ``pipelines.session.STAGE_LISTENERS`` (the stage names the job gives Spark);
- ``plain_spark``: ``spark.read.parquet(input).write.parquet(out)``, rows / s.

One run of each is warm-up (JIT, first Python workers) and left out (except at size tiny).
"""
from __future__ import annotations

import shutil
import statistics
import time
from contextlib import contextmanager
from typing import Any, Iterator

from benchmarks import data, harness
from pipelines import session
from pipelines.config import PipelineConfig

NAME = "etl"
SIZES = {
    "tiny": {"data": data.DataSpec(4096, 8, 256), "repeats": 2, "warmup": False},
    "small": {"data": data.DataSpec(1000000, 8, 1024), "repeats": 3, "warmup": True},
    "large": {"data": data.DataSpec(5000000, 8, 1024), "repeats": 3, "warmup": True},
}
STAGE_PREFIX = "etl: "  # how the ETL names its stages (``describe(spark, "etl: write splits")``)


def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    """Run the etl benchmark at ``size``; print its table, write ``etl.json``, return its JSON."""
    from pipelines.etl import job as etl

    s = SIZES[size]
    spec: data.DataSpec = s["data"]
    report = harness.Report(NAME, size)
    source = data.generated(spark, config, spec.num_samples, spec.image_size)
    cfg = data.etl_config(config, source, spec, f"etl_bench_{spec.key}")
    copy = harness.bench_dir(config) / "etl_plain_copy"
    rows = spec.num_samples
    report.params = {"input": f"generated digits {spec.image_size}x{spec.image_size} as Parquet", "rows": rows,
                     "input_files": len(list(source.glob("*.parquet"))), "rows_per_row_group": spec.rows_per_row_group,
                     "output_files": spec.output_files, "splits": dict(spec.splits), "repeats": s["repeats"],
                     "spark_cores": spark.sparkContext.defaultParallelism}

    phases: list[dict[str, float]] = []

    def dlpipe_etl() -> float:
        started = time.perf_counter()
        with _phase_clock() as marks:
            manifest = etl.main(spark, cfg)
        seconds = time.perf_counter() - started
        marks.append(("end", time.perf_counter()))
        phases.append({a: round(tb - ta, 3) for (a, ta), (_, tb) in zip(marks, marks[1:])})
        if manifest["records_in"] != rows:
            raise harness.BenchError(f"the ETL read {manifest['records_in']} records, expected {rows}")
        return rows / seconds

    def plain() -> float:
        shutil.rmtree(copy, ignore_errors=True)
        started = time.perf_counter()
        spark.read.parquet(str(source)).write.mode("overwrite").parquet(str(copy))
        return rows / (time.perf_counter() - started)

    harness.log(NAME, f"dlpipe ETL and plain Spark, {rows} rows, alternating")
    if s["warmup"]:
        plain()
        dlpipe_etl()
    figures: dict[str, list[float]] = {"dlpipe_etl": [], "plain_spark": []}
    for _ in range(s["repeats"]):  # alternate, so a change in machine load hits both alike
        figures["dlpipe_etl"].append(dlpipe_etl())
        figures["plain_spark"].append(plain())
    measured = phases[-s["repeats"]:]
    phase_medians = {k: round(statistics.median(p[k] for p in measured), 3) for k in measured[0]}
    report.add("dlpipe_etl", figures["dlpipe_etl"], "rows/s", "pipelines.etl.job.main on the Parquet source",
               phase_seconds=phase_medians)
    report.add("plain_spark", figures["plain_spark"], "rows/s", "spark.read.parquet -> DataFrame.write.parquet")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.rmtree(cfg.dataset_dir, ignore_errors=True)

    report.ratios["ratio_vs_plain_spark"] = harness.ratio(report.median("dlpipe_etl"), report.median("plain_spark"))
    if harness.meets("ratio_vs_plain_spark", report.ratios["ratio_vs_plain_spark"]) is False:
        copy_s = rows / report.median("plain_spark")
        shown = ", ".join(f"{k} {v:.1f} s" for k, v in phase_medians.items())
        report.limits["ratio_vs_plain_spark"] = (
            f"A plain copy reads the input once and writes it once ({copy_s:.1f} s), with no shuffle. The ETL's "
            f"phases (median): {shown}. Validation reads the source, counts every quarantine reason and ranks "
            "duplicate ids with a window (a shuffle); the split write reads and validates the source again, "
            "hash-partitions and sorts by id so files do not depend on the input's partitioning (a second "
            "shuffle) and writes through Python (mapInArrow, for exact row groups). The normalization "
            "statistics no longer cost a pass: the writer tasks return each train file's moments and the "
            "driver merges them. Each remaining step is there for a guarantee (every record accounted for, "
            "stable output, exact row groups). What was tried for the second read: persisting the records "
            "(MEMORY_AND_DISK) so the split write reads them from Spark's cache; a source larger than memory "
            "then killed the driver JVM (512 MB, tests/spark/etl/test_generate.py), so tables are read twice "
            "and only decoded images are kept. What is left to try: fold validation into the split write "
            "(one pass that writes accepted rows and returns the quarantine), which needs the duplicate rule "
            "and the quarantine-fraction check to move after the write." + _budget_sentence(copy_s, phase_medians))
    return harness.finish(report, config)


def _budget_sentence(copy_s: float, phases: dict[str, float]) -> str:
    """How long the whole ETL may take at the target, against the phase that every design keeps."""
    budget = copy_s / harness.TARGETS["ratio_vs_plain_spark"][1]
    write = phases.get("write splits")
    if write is None or write <= budget:
        return ""
    return (f" At the target the whole ETL would have {budget:.1f} s; the split write alone (shuffle by id, sort, "
            f"Python writer) takes {write:.1f} s, and a single-pass ETL keeps exactly that phase, so folding the "
            "validation into it would not reach the target on this machine either.")


@contextmanager
def _phase_clock() -> Iterator[list[tuple[str, float]]]:
    """Record when the ETL enters each phase: it names them through ``describe``, which tells
    ``pipelines.session.STAGE_LISTENERS``; other stages (generate, train) are ignored."""
    marks: list[tuple[str, float]] = []

    def listen(stage: str) -> None:
        if stage.startswith(STAGE_PREFIX):
            marks.append((stage.removeprefix(STAGE_PREFIX), time.perf_counter()))

    session.STAGE_LISTENERS.append(listen)
    try:
        yield marks
    finally:
        session.STAGE_LISTENERS.remove(listen)
