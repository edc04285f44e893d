"""What every benchmark shares: repeats, median and spread, targets, the table, the JSON, the machine.

A benchmark module builds a :class:`Report`: each contender's repeated figures (median and spread
of the raw values), the ratios the issue defines, the target each ratio must meet, and, when a
contender cannot run here, the reason instead of a figure. :func:`finish` prints the table and
writes ``<workdir>/bench/<name>.json``; ``benchmarks.docs`` turns those files into
``docs/benchmarks.md``. Nothing here measures anything by itself.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines import storage
from pipelines.config import PipelineConfig

# benchmarks/ is not installed: the repository root is what executors, rank processes and
# contender processes need on their path to import it.
REPO_ROOT = Path(__file__).resolve().parents[1]

# ratio -> (comparison, bound); the docs table prints them next to the measured figure.
TARGETS: dict[str, tuple[str, float]] = {
    "ratio_vs_pyarrow": (">=", 0.9),
    "ratio_s3_vs_local": (">=", 0.8),
    "ratio_etl_default_vs_pyarrow": (">=", 0.8),
    "ratio_arrow_vs_petastorm": (">=", 1.0),  # issue 35: the loader without Petastorm at least as fast
    "scaling_efficiency": (">=", 0.8),
    "best_scaling_efficiency": (">=", 0.8),
    "ratio_vs_ddp_accumulate4": (">=", 0.95),
    "accuracy_points_fp16_allreduce_vs_plain": (">=", -0.5),
    "accuracy_points_ddp_bf16_allreduce_vs_plain": (">=", -0.5),
    "ratio_vs_ddp": (">=", 1.0),
    "ddp_strategy_vs_ddp": (">=", 0.95),
    "ratio_vs_torch": (">=", 0.8),
    "ratio_vs_predict_batch_udf": (">=", 1.0),
    "ratio_vs_plain_spark": (">=", 0.7),
    "drift_summary_share_of_etl": ("<=", 0.1),
    "drift_summary_cost": (">=", 0.95),
    "rss_growth": ("<=", 0.1),
    "ratio_vs_async_vector_env": (">=", 0.8),
    "append_vs_full": ("<=", 0.05),
    "etl_throughput_min_over_max": (">=", 0.8),
    "train_throughput_min_over_max": (">=", 0.8),
    "driver_rss_growth": ("<=", 0.2),
    "elastic_redone_over_interval": ("<=", 1.0),  # issue 32: nothing redone beyond the last checkpoint interval
    "elastic_checkpoint_step_wait_fraction": ("<=", 0.02),  # issue 32: frequent checkpoints stay cheap
    "checkpoint_step_wait_at_interval_s3": ("<=", 0.02),  # issue 32: ... on S3 too, at the docs' interval
}


class BenchError(RuntimeError):
    """A benchmark could not produce its figures; the message says which step failed and why."""


def command(name: str, size: str) -> str:
    """The command that reproduces one benchmark (what the docs page shows)."""
    return f"python -m benchmarks {name} --size {size}"


# --- figures ------------------------------------------------------------------------------------

def summarize(values: list[float]) -> dict[str, Any]:
    """Median, min, max and spread ((max - min) / median) of repeated figures, plus the raw values."""
    if not values:
        raise ValueError("no values to summarize")
    median = statistics.median(values)
    return {
        "values": [float(v) for v in values],
        "median": float(median),
        "min": float(min(values)),
        "max": float(max(values)),
        "spread": float((max(values) - min(values)) / median) if median else 0.0,
    }


def repeat(measure: Callable[[], float], repeats: int, warmup: int = 1) -> list[float]:
    """Call ``measure`` ``warmup`` times (discarded) then ``repeats`` times; return the figures."""
    for _ in range(warmup):
        measure()
    return [float(measure()) for _ in range(repeats)]


def interleaved(measures: dict[str, Callable[[], float]], repeats: int, warmup: int = 1,
                torch_threads: int | None = None) -> dict[str, list[float]]:
    """Measure every contender once per round, ``repeats`` rounds (after ``warmup`` discarded rounds).

    Round-robin rather than one contender after another, so a change in machine load during the
    benchmark hits every contender alike instead of one of them. ``torch_threads``: torch's intra-op
    threads while measuring (1 = what a rank with one core gets), restored afterwards.
    """
    import torch

    threads = torch.get_num_threads()
    if torch_threads:
        torch.set_num_threads(torch_threads)
    figures: dict[str, list[float]] = {name: [] for name in measures}
    try:
        for round_no in range(warmup + repeats):
            for name, measure in measures.items():
                value = float(measure())
                if round_no >= warmup:
                    figures[name].append(value)
    finally:
        torch.set_num_threads(threads)
    return figures


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator``, or None when either side is missing or not positive."""
    if numerator is None or denominator is None or not denominator > 0 or not math.isfinite(numerator):
        return None
    return float(numerator / denominator)


def meets(name: str, value: float | None) -> bool | None:
    """Whether ``value`` meets the target of ratio ``name`` (None: no target or no value)."""
    if name not in TARGETS or value is None:
        return None
    op, bound = TARGETS[name]
    return value >= bound if op == ">=" else value <= bound


def target_text(name: str) -> str:
    """The target of ratio ``name`` as the table shows it (``>= 0.8``), or "" when it has none."""
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    return f"{op} {bound:g}"


def mean(values: list[float]) -> float:
    """Plain mean, rounded for the JSON (per-epoch fractions such as the data wait)."""
    return round(sum(values) / len(values), 3)


@dataclass
class Report:
    """One benchmark's figures; ``to_dict`` is what ``<name>.json`` holds."""

    name: str
    size: str
    params: dict[str, Any] = field(default_factory=dict)
    contenders: dict[str, dict[str, Any]] = field(default_factory=dict)
    ratios: dict[str, float | None] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)  # contender -> why it has no figure
    limits: dict[str, str] = field(default_factory=dict)  # ratio -> what limits it (when missed)
    notes: list[str] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)  # image files in the bench folder the docs page shows
    started: float = field(default_factory=time.time)
    load_before: list[float] = field(default_factory=lambda: list(os.getloadavg()))

    def add(self, contender: str, values: list[float], unit: str, description: str, **extra: Any) -> dict[str, Any]:
        """Record a contender's repeated figures; returns the summary (``["median"]`` etc.)."""
        entry = {"unit": unit, "description": description, **summarize(values), **extra}
        self.contenders[contender] = entry
        return entry

    def skip(self, contender: str, reason: str) -> None:
        """Record that ``contender`` could not run here, and why (instead of a figure)."""
        self.unavailable[contender] = reason

    def skip_error(self, contender: str, error: BaseException) -> None:
        """:meth:`skip` with the first line of an exception as the reason."""
        self.skip(contender, f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}")

    def median(self, contender: str) -> float | None:
        entry = self.contenders.get(contender)
        return entry["median"] if entry else None

    def measured(self, contender: str) -> float:
        """The median of a contender this benchmark always records (:meth:`median` for one that may be
        missing); a KeyError if it was not recorded."""
        return float(self.contenders[contender]["median"])

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "size": self.size,
            "command": command(self.name, self.size),
            "invoked_as": _invoked_as(),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": round(time.time() - self.started, 1),
            "machine": machine(),
            "load_average": {"before": self.load_before, "after": list(os.getloadavg())},
            "params": self.params,
            "contenders": self.contenders,
            "ratios": self.ratios,
            "targets": {k: target_text(k) for k in self.ratios if k in TARGETS},
            "met": {k: meets(k, v) for k, v in self.ratios.items() if k in TARGETS},
            "unavailable": self.unavailable,
            "limits": {k: v for k, v in self.limits.items() if k in self.ratios},
            "notes": self.notes,
            "figures": self.figures,
        }


def _invoked_as() -> str:
    """This process's command line; ``python -m benchmarks`` rather than ``__main__.py``."""
    program = Path(sys.argv[0]).name
    if program == "__main__.py":
        program = f"python -m {Path(sys.argv[0]).resolve().parent.name}"
    return " ".join([program, *sys.argv[1:]])


def machine() -> dict[str, Any]:
    """What the figures were measured on: cores, CPU model, memory and the stack's versions."""
    import pyarrow
    import pyspark
    import torch

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    versions = {"python": platform.python_version(), "pyspark": pyspark.__version__,
                "pyarrow": pyarrow.__version__, "torch": torch.__version__}
    for module in ("petastorm", "horovod"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "not installed"
    return {"cores": os.cpu_count(), "cpu": cpu, "memory_gib": mem_gib, "os": platform.platform(), **versions}


# --- output -------------------------------------------------------------------------------------

def bench_dir(config: PipelineConfig) -> Path:
    """Where the benchmarks keep their JSON, data and runs: ``<workdir>/bench``."""
    return Path(config.workdir) / "bench"


def format_table(result: dict[str, Any]) -> str:
    """The console table of one benchmark's JSON: contenders, then ratios against their targets."""
    lines = [f"bench {result['benchmark']} (size {result['size']}, {result['seconds']} s)"]
    rows = [("contender", "median", "spread", "runs", "unit")]
    for name, c in result["contenders"].items():
        rows.append((name, f"{c['median']:.4g}", f"{c['spread']:.1%}", str(len(c["values"])), c["unit"]))
    for name, why in result["unavailable"].items():
        rows.append((name, "n/a", "", "0", why[:60]))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines += ["  " + "  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    for name, value in result["ratios"].items():
        shown = "n/a" if value is None else f"{value:.3g}"
        target = result["targets"].get(name, "")
        met = result["met"].get(name)
        verdict = "" if met is None else ("  met" if met else "  MISSED")
        lines.append(f"  {name} = {shown}" + (f"  (target {target}){verdict}" if target else ""))
    return "\n".join(lines)


def finish(report: Report, config: PipelineConfig) -> dict[str, Any]:
    """Print the table and write ``<workdir>/bench/<name>.json``; return the JSON dict."""
    result = report.to_dict()
    # Not sorted: contenders and ratios keep the order the benchmark gave them (dlpipe first, targets first).
    storage.write_text(str(bench_dir(config) / f"{report.name}.json"),
                       json.dumps(result, indent=2, default=str) + "\n")
    print(format_table(result), flush=True)
    return result


def log(name: str, message: str) -> None:
    """A progress line of benchmark ``name`` (benchmarks run for minutes)."""
    print(f"[bench {name}] {message}", flush=True)
