"""What every benchmark shares: repeats, median and spread, targets, the table, the JSON, the data.

A benchmark module builds a :class:`Report`: each contender's repeated figures (median and spread
of the raw values), the ratios the issue defines, the target each ratio must meet, and, when a
contender cannot run here, the reason instead of a figure. :func:`finish` prints the table and
writes ``<workdir>/bench/<name>.json``; ``pipelines.bench.docs`` turns those files into
``docs/benchmarks.md``.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from pipelines.config import PipelineConfig
from pipelines.publish import is_published, write_text_atomic
from pipelines.session import REPO_ROOT

SIZES = ("tiny", "small", "large")

# ratio -> (comparison, bound); the docs table prints them next to the measured figure.
TARGETS: dict[str, tuple[str, float]] = {
    "ratio_vs_pyarrow": (">=", 0.8),
    "scaling_efficiency": (">=", 0.8),
    "ratio_vs_ddp": (">=", 1.0),
    "ratio_vs_torch": (">=", 0.8),
    "ratio_vs_predict_batch_udf": (">=", 1.0),
    "ratio_vs_plain_spark": (">=", 0.7),
    "rss_growth": ("<=", 0.1),
}


class BenchError(RuntimeError):
    """A benchmark could not produce its figures; the message says which step failed and why."""


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


def interleaved(measures: dict[str, Callable[[], float]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Measure every contender once per round, ``repeats`` rounds (after ``warmup`` discarded rounds).

    Round-robin rather than one contender after another, so a change in machine load during the
    benchmark hits every contender alike instead of one of them.
    """
    figures: dict[str, list[float]] = {name: [] for name in measures}
    for round_no in range(warmup + repeats):
        for name, measure in measures.items():
            value = float(measure())
            if round_no >= warmup:
                figures[name].append(value)
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
    if name not in TARGETS:
        return ""
    op, bound = TARGETS[name]
    return f"{op} {bound:g}"


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

    def median(self, contender: str) -> float | None:
        entry = self.contenders.get(contender)
        return entry["median"] if entry else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.name,
            "size": self.size,
            "command": f"dlpipe bench {self.name} --size {self.size}",
            "invoked_as": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
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
        }


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
    return Path(config.workdir) / "bench"


def format_table(result: dict[str, Any]) -> str:
    """The console table of one benchmark's JSON: contenders, then ratios against their targets."""
    lines = [f"dlpipe bench {result['benchmark']} (size {result['size']}, {result['seconds']} s)"]
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
    write_text_atomic(bench_dir(config) / f"{report.name}.json", json.dumps(result, indent=2, default=str) + "\n")
    print(format_table(result), flush=True)
    return result


def log(name: str, message: str) -> None:
    print(f"[bench {name}] {message}", flush=True)


# --- data ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DataSpec:
    """A generated-digits dataset, run through dlpipe's ETL."""

    num_samples: int
    image_size: int
    rows_per_row_group: int
    splits: tuple[tuple[str, float], ...] = (("train", 0.8), ("val", 0.1), ("test", 0.1))
    output_files: int = 2

    @property
    def key(self) -> str:
        return f"digits{self.image_size}_{self.num_samples}_rg{self.rows_per_row_group}"


def generated(spark: Any, config: PipelineConfig, num_samples: int, image_size: int) -> Path:
    """Generated digits (``pipelines.generate``) under ``<workdir>/bench/data``, made once."""
    from pipelines import generate

    out = bench_dir(config) / "data" / f"generated{image_size}_{num_samples}"
    info = out / generate.INFO_FILE
    if is_published(out) and info.is_file():
        made = json.loads(info.read_text())
        if made.get("n") == num_samples and made.get("image_size") == image_size:
            return out
    partitions = max(1, min(os.cpu_count() or 1, math.ceil(num_samples / generate.BLOCK)))
    generate.main(spark, derive(config, f"generate.num_samples={num_samples}", f"generate.image_size={image_size}",
                                f"generate.partitions={partitions}", f"generate.output={out}"))
    return out


def etl_config(config: PipelineConfig, source: Path, spec: DataSpec, dataset: str) -> PipelineConfig:
    """The ETL config that turns generated Parquet (a tabular source) into a dlpipe dataset."""
    splits = "{" + ", ".join(f"{k}: {v}" for k, v in spec.splits) + "}"
    return derive(config, f"workdir={bench_dir(config)}", f"dataset={dataset}", "etl.source.kind=parquet",
                  f"etl.source.path={source.resolve()}", "etl.source.feature_columns=[features]",
                  "etl.source.id_column=id", f"etl.source.image_shape=[{spec.image_size}, {spec.image_size}]",
                  "etl.source.label_names=[]", f"etl.rows_per_row_group={spec.rows_per_row_group}",
                  f"etl.output_files={spec.output_files}", f"etl.splits={splits}")


def dataset(spark: Any, config: PipelineConfig, spec: DataSpec) -> Path:
    """The ETL output of ``spec`` under ``<workdir>/bench/datasets``, made once (reused when it matches)."""
    from pipelines import etl

    cfg = etl_config(config, generated(spark, config, spec.num_samples, spec.image_size), spec, spec.key)
    manifest = cfg.dataset_dir / "manifest.json"
    if is_published(cfg.dataset_dir) and manifest.is_file():
        m = json.loads(manifest.read_text())
        if m.get("records_in") == spec.num_samples and m.get("rows_per_row_group") == spec.rows_per_row_group:
            return cfg.dataset_dir
    etl.main(spark, cfg)
    return cfg.dataset_dir


def derive(config: PipelineConfig, *overrides: str) -> PipelineConfig:
    """``config`` with ``key=value`` overrides applied, validated like the command line's."""
    from pipelines.config import _apply_override, from_dict

    raw = config.to_dict()
    for item in overrides:
        _apply_override(raw, item)
    return from_dict(raw)


# --- contenders in their own processes ---------------------------------------------------------

def python_env(threads: int) -> dict[str, str]:
    """Environment of a contender process: this interpreter's imports, ``threads`` compute threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *[p for p in sys.path if p]])
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_worker(module: str, args: dict[str, Any], *, threads: int, timeout_s: float,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``python -m module JSON`` (a contender); its last stdout line is its JSON result."""
    proc = subprocess.run([sys.executable, "-m", module, json.dumps(args)], capture_output=True, text=True,
                          timeout=timeout_s, env=env or python_env(threads), cwd=str(REPO_ROOT))
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise BenchError(f"{module} exited with code {proc.returncode}; last lines:\n{tail}")
    return json.loads(lines[-1])
