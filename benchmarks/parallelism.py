"""Data vs model parallelism, measured side by side: ``python -m benchmarks.parallelism --size small``.

The same model is trained under each strategy (Horovod, DDP, FSDP, pipeline) on 2 ranks, through
dlpipe's own launcher, loader, checkpoints and artifact, on two datasets: the bundled 8x8 digits
with the default CNN, and generated 28x28 digits with a wider CNN. Per strategy: test accuracy
(the unchanged inference job on the artifact), samples/s, each rank's peak memory, the parameters
and optimizer state each rank holds, and the bytes each rank sends per step (from the model's
sizes: ring all-reduce, FSDP's all-gathers and reduce-scatter, the pipeline's activations).
A second part measures the pipeline's idle (bubble) time against the GPipe formula
(K-1)/(M+K-1) for K stages and M micro-batches. Writes ``<workdir>/bench/parallelism.json`` and
``docs/parallelism.md`` (``<workdir>/bench/parallelism.md`` for ``--size tiny``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import bubble
from benchmarks.data import DataSpec, dataset, derive, on_dataset, view
from benchmarks.harness import REPO_ROOT, bench_dir, log, machine
from benchmarks.training import RANKS, train_once
from pipelines import storage
from pipelines.config import PipelineConfig, load_config
from pipelines.dataset import Manifest
from pipelines.tracking import TRACKING_OFF

NAME = "parallelism"
STRATEGIES = ("horovod", "ddp", "fsdp", "pipeline")
WIDE_CNN = "{channels: [64, 128], hidden: 256}"
SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"digits_epochs": 1, "generated": DataSpec(2048, 28, 256), "generated_epochs": 1,
             "microbatches": [1, 2, 4], "bubble_steps": 3},
    "small": {"digits_epochs": 15, "generated": DataSpec(10000, 28, 256), "generated_epochs": 3,
              "microbatches": [1, 2, 4, 8], "bubble_steps": 10},
}
DEFAULT_DOCS = REPO_ROOT / "docs" / "parallelism.md"


def digits_dataset(spark: Any, config: PipelineConfig) -> Path:
    """The bundled digits through dlpipe's ETL, under ``<workdir>/bench/datasets/digits8`` (made once)."""
    from pipelines.dataset import read_head
    from pipelines.etl import job as etl

    cfg = derive(config, f"workdir={bench_dir(config)}", "dataset=digits8")
    head = read_head(cfg.dataset_dir)
    if head is None or not head.versions:
        etl.main(spark, cfg)
    return Path(cfg.dataset_dir)


def communicated_bytes(strategy: str, parameters: int, boundary_elements: int, batch: int) -> int:
    """Bytes one rank sends per step on 2 ranks (float32), from the model's sizes.

    Ring all-reduce sends 2(N-1)/N of the gradients; FSDP all-gathers the parameters for the
    forward and again for the backward and reduce-scatters the gradients, 3(N-1)/N; a pipeline
    stage sends its output activations forward or their gradients backward across the cut.
    """
    share = (RANKS - 1) / RANKS
    if strategy in ("horovod", "ddp"):
        return int(2 * share * parameters * 4)
    if strategy == "fsdp":
        return int(3 * share * parameters * 4)
    return batch * boundary_elements * 4


def boundary_elements(config: PipelineConfig, manifest: Manifest) -> int:
    """Elements per example crossing the cut between the 2 pipeline stages."""
    import models

    model = models.build(config.model.name, feature_shape=tuple(manifest.feature_shape),
                         num_classes=len(manifest.label_names), **config.model.params).eval()
    first, _ = model.pipeline_stages(RANKS)
    with torch.no_grad():
        out = first(torch.zeros(1, *manifest.feature_shape))
    return sum(t.numel() for t in (out if isinstance(out, tuple) else (out,)))


def measure_case(spark: Any, config: PipelineConfig, ds: Path, epochs: int, label: str) -> dict[str, Any]:
    """Every strategy on one dataset and model; accuracy from the unchanged inference job."""
    from pipelines.infer import job as infer

    data = view(ds)
    manifest = data.manifest
    parameters = sum(_model_parameters(config, manifest))
    rows: dict[str, Any] = {}
    for strategy in STRATEGIES:
        log(NAME, f"{label}: {strategy}, {epochs} epoch(s)")
        cfg = on_dataset(config, ds, f"train.strategy={strategy}", f"train.epochs={epochs}")
        out = train_once(spark, cfg, ds, epochs, run_name=f"{NAME}-{label}-{strategy}")
        scored = infer.main(spark, derive(cfg, f"run_id={NAME}-{label}-{strategy}", f"infer.artifact={out['artifact']}",
                                          f"infer.output="
                                          f"{bench_dir(config) / 'runs' / f'{NAME}-{label}-{strategy}-pred'}"))
        memory = out["memory_by_rank"]
        rows[strategy] = {
            "test_accuracy": scored.eval.accuracy if scored.eval is not None else None,
            "samples_per_s": out["samples_per_s"][-1],
            "peak_rss_mib_by_rank": {r: round(b / 2**20, 1) for r, b in sorted(out["peak_rss_by_rank"].items())},
            "parameters_by_rank": {r: m["parameters"] for r, m in sorted(memory.items())},
            "optimizer_kib_by_rank": {r: round(m["optimizer_bytes"] / 1024, 1) for r, m in sorted(memory.items())},
            "sent_kib_per_step": round(communicated_bytes(strategy, parameters, boundary_elements(cfg, manifest),
                                                          cfg.train.batch_size) / 1024, 1),
        }
    return {"label": label, "model": config.model.name, "model_params": _params_of(config, ds),
            "feature_shape": manifest.feature_shape, "train_rows": data.counts["train"],
            "epochs": epochs, "parameters": parameters, "strategies": rows}


def _model_parameters(config: PipelineConfig, manifest: Manifest) -> list[int]:
    import models

    model = models.build(config.model.name, feature_shape=tuple(manifest.feature_shape),
                         num_classes=len(manifest.label_names), **config.model.params)
    return [p.numel() for p in model.parameters()]


def _params_of(config: PipelineConfig, ds: Path) -> dict[str, Any]:
    return dict(on_dataset(config, ds).model.params)


def run(spark: Any, config: PipelineConfig, size: str = "small", docs_path: Path | None = None) -> dict[str, Any]:
    """Measure both cases and the pipeline bubble; write the JSON and the docs page."""
    s = SIZES[size]
    started = time.monotonic()
    base = derive(config, "model.name=cnn", "model.params={}", "train.batch_size=32")
    cases = [measure_case(spark, base, digits_dataset(spark, base), s["digits_epochs"], "digits8")]
    wide = derive(base, f"model.params={WIDE_CNN}")
    cases.append(measure_case(spark, wide, dataset(spark, wide, s["generated"]), s["generated_epochs"], "generated28"))
    log(NAME, "pipeline bubble: 2 stages, micro-batches " + ", ".join(map(str, s["microbatches"])))
    bubbles = bubble.measure(s["microbatches"], steps=s["bubble_steps"])
    result = {"benchmark": NAME, "size": size, "seconds": round(time.monotonic() - started, 1), "machine": machine(),
              "cases": cases, "bubble": bubbles}
    out = bench_dir(config)
    storage.write_text(str(out / f"{NAME}.json"), json.dumps(result, indent=2, default=str) + "\n")
    path = docs_path or (out / f"{NAME}.md" if size == "tiny" else DEFAULT_DOCS)
    storage.write_text(str(path), render(result))
    log(NAME, f"figures in {out / f'{NAME}.json'}; page {path}")
    return result


# --- the page -----------------------------------------------------------------------------------

def _by_rank(values: dict[Any, Any]) -> str:
    return " / ".join(f"{v:,}" if isinstance(v, int) else f"{v:g}" for _, v in sorted(values.items()))


def render(result: dict[str, Any]) -> str:
    """``docs/parallelism.md`` from the JSON (never edited by hand)."""
    m = result["machine"]
    lines = [
        "# Data vs model parallelism: a case study",
        "",
        f"Measured by `python -m benchmarks.parallelism --size {result['size']}` ({result['seconds']:.0f} s) on "
        f"{m['cores']} cores ({m['cpu']}), torch {m.get('torch', '?')}; do not edit by hand. Every strategy runs "
        f"on {RANKS} ranks in one barrier-mode Spark stage (`train.strategy=...`), reads the same Petastorm "
        "shards (the pipeline: the same batches on both ranks), and writes the same checkpoints and model "
        "artifact, scored by the unchanged inference job.",
        "",
    ]
    for case in result["cases"]:
        lines += [f"## {case['label']}: {case['model']} {case['model_params'] or '(defaults)'}, features "
                  f"{case['feature_shape']}, {case['train_rows']:,} training rows, {case['epochs']} epoch(s)", "",
                  f"{case['parameters']:,} parameters ({case['parameters'] * 4 / 1024:,.0f} KiB in float32).", "",
                  "| strategy | test accuracy | samples/s | peak RSS per rank (MiB) | parameters held per rank "
                  "| optimizer state per rank (KiB) | sent per rank per step (KiB) |",
                  "| --- | --- | --- | --- | --- | --- | --- |"]
        for name, row in case["strategies"].items():
            acc = row["test_accuracy"]
            lines.append(f"| {name} | {acc:.3f} | {row['samples_per_s']:,.0f} "
                         f"| {_by_rank(row['peak_rss_mib_by_rank'])} "
                         f"| {_by_rank(row['parameters_by_rank'])} | {_by_rank(row['optimizer_kib_by_rank'])} "
                         f"| {row['sent_kib_per_step']:,.1f} |" if acc is not None else f"| {name} | n/a |")
        lines.append("")
    b = result["bubble"]
    lines += ["## The pipeline's bubble", "",
              f"{b['stages']} stages of an MLP cut into equal halves ({b['parameters']:,} parameters), a batch of "
              f"{b['batch']} rows cut into M micro-batches, GPipe schedule, {b['steps']} timed steps per M. Idle "
              "fraction = 1 - (time a stage spends in its own forward and backward) / (step time), averaged over "
              "the stages; the formula counts only the schedule's fill and drain, not communication.", "",
              "| micro-batches M | measured idle fraction | GPipe formula (K-1)/(M+K-1) | step time (ms) |",
              "| --- | --- | --- | --- |"]
    for row in b["rows"]:
        lines.append(f"| {row['microbatches']} | {row['idle_fraction']:.2f} | {row['formula']:.2f} | "
                     f"{row['step_ms']:.1f} |")
    lines += ["", "Where the measured idle fraction stays above the formula, the difference is what the formula "
              "leaves out: every micro-batch adds a fixed cost (a Gloo send and receive of its activations and "
              "gradients, the schedule's Python bookkeeping), and smaller micro-batches compute less "
              "efficiently, so past a few micro-batches per stage the step time grows again."]
    lines += ["", "## When each strategy pays off", "",
              "- **Data parallelism (Horovod, DDP)** is the default choice whenever the model fits one device: every "
              "rank holds the whole model and optimizer state, and each step all-reduces one copy of the gradients. "
              "It scales the batch, not the model. DDP overlaps the all-reduce with the backward pass from autograd "
              "hooks; Horovod goes through its background thread (`train.horovod_cycle_time_ms`).",
              "- **FSDP** keeps 1/N of the parameters, gradients and optimizer state per rank (see the columns above) "
              "for about 1.5x the traffic of an all-reduce, since parameters are gathered before each forward and "
              "backward. It pays off when the model's training state (weights + Adam's two moments + gradients, "
              "about 16 bytes per parameter) does not fit one device, while each layer still does.",
              "- **Pipeline (model) parallelism** keeps one stage per rank and sends only activations across the cut, "
              "which is little for narrow cuts and large batches. It pays off when the model itself does not fit one "
              "device, or when the interconnect is too slow for all-reducing the whole gradient. The price is the "
              "bubble: with K stages and M micro-batches a stage idles about (K-1)/(M+K-1) of the time, so M must "
              "be several times K; micro-batches that are too small then waste the hardware instead.",
              "- On these two CPU cores and these small models, communication and Python overheads dominate: the "
              "figures show the mechanics (memory held, bytes sent, bubble) more than the speed-ups a cluster of "
              "GPUs would see.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.parallelism", description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="small", choices=list(SIZES))
    parser.add_argument("--config", default=str(REPO_ROOT / "pipelines" / "configs" / "digits_cnn.yaml"))
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    from benchmarks.__main__ import use_repo_on_pythonpath
    from pipelines.session import get_spark

    config = load_config(args.config, [*TRACKING_OFF, *args.overrides])
    use_repo_on_pythonpath()
    spark = get_spark("dlpipe-parallelism", master=config.master, conf=config.spark)
    try:
        run(spark, config, args.size)
    finally:
        spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
