"""The run report: ``report.md`` with loss curves, the evaluation, and the figures the model asks for.

A model declares its figures by name (``model.figures``, e.g. ``("reconstructions", "samples")``);
:data:`FIGURES` maps each name to the function that draws it. The report never asks what kind of
model it shows; a section with nothing to say (no evaluation for a generator) is left out. The
figures and the page are written through ``pipelines.storage`` (the page last), in any store.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, cast

import numpy as np
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray

import models
from pipelines import storage
from pipelines.artifact import Normalizer, load_artifact
from pipelines.drift import drift_chart
from pipelines.events import EpochRecord
from pipelines.runfolder import RunFolder

GRID = 8  # images per row in the figures
CONFUSION_FILE = "confusion_matrix.png"
DRIFT_CHART = "drift.png"


def pyplot() -> ModuleType:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any) -> bytes:
    """The figure as PNG bytes (closed afterwards)."""
    plt = pyplot()
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, dpi=100, format="png")
    plt.close(fig)
    return buffer.getvalue()


def plot_loss_curves(curves: dict[str, list[EpochRecord]]) -> bytes:
    """Train loss per epoch, and validation loss when the run had a validation split; one pair of
    curves per named history (a warm-started run beside its cold baseline)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, history in curves.items():
        prefix = f"{name}: " if len(curves) > 1 else ""
        epochs = [h.epoch for h in history]
        ax.plot(epochs, [h.loss for h in history], marker="o", label=f"{prefix}train loss")
        if history and all(h.val_loss is not None for h in history):
            ax.plot(epochs, [h.val_loss for h in history], marker="o", label=f"{prefix}val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    return png_bytes(fig)


def plot_confusion(confusion: NDArray[np.int64], label_names: list[str]) -> bytes:
    """A (true x predicted) count matrix as a heat map with the counts written in."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(confusion, cmap="Blues")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=7,
                color="white" if v > confusion.max() / 2 else "black")
    ax.set_xticks(range(len(label_names)), label_names)
    ax.set_yticks(range(len(label_names)), label_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix")
    return png_bytes(fig)


def image_grid(rows: list[NDArray[np.float32]], titles: list[str]) -> bytes:
    """One figure row per array of images (N, C, H, W) in [0, 1]."""
    plt = pyplot()
    n = max(len(r) for r in rows)
    fig, axes = plt.subplots(len(rows), n, figsize=(n * 0.9, len(rows) * 1.05), squeeze=False)
    for r, (images, title) in enumerate(zip(rows, titles)):
        for c in range(n):
            ax = axes[r][c]
            ax.axis("off")
            if c < len(images):
                img = images[c]
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
        axes[r][0].set_title(title, fontsize=8, loc="left")
    return png_bytes(fig)


# --- the figures a model can ask for ----------------------------------------------------------

@dataclass(frozen=True)
class FigureInputs:
    """What a figure may draw from: the trained model, its evaluation, the split it was scored on."""

    model: models.DlpipeModel
    normalize: Normalizer
    evaluation: Any  # pipelines.infer.evaluate.Evaluation, or None
    scored_files: list[str]  # Parquet files that were scored ([] = none: raw records)
    report_dir: str

    @property
    def is_image(self) -> bool:
        return len(self.model.feature_shape) == 3

    def first_rows(self, n: int) -> torch.Tensor:
        """The first ``n`` scored rows, normalized as the model sees them."""
        with storage.open_input(self.scored_files[0]) as f:
            table = pq.read_table(f, columns=["features"]).slice(0, n)
        flat = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
        return self.normalize(flat)

    def to_pixels(self, x: torch.Tensor) -> NDArray[np.float32]:
        return self.normalize.denormalize(x).clamp(0, 1).numpy()


Figure = Callable[[FigureInputs], tuple[str, str] | None]  # -> (title, file name), or None when not drawable


def _confusion_matrix(f: FigureInputs) -> tuple[str, str] | None:
    if f.evaluation is None or f.evaluation.confusion_matrix is None:
        return None
    storage.write_bytes(storage.join(f.report_dir, CONFUSION_FILE),
                        plot_confusion(np.asarray(f.evaluation.confusion_matrix), f.evaluation.label_names))
    return "Confusion matrix", CONFUSION_FILE


def _reconstructions(f: FigureInputs) -> tuple[str, str] | None:
    if not f.is_image or not f.scored_files:
        return None
    model = cast(models.Reconstructs, f.model)  # a model asks for this figure only when it reconstructs
    x = f.first_rows(GRID)
    png = image_grid([f.to_pixels(x), f.to_pixels(model.reconstruct(x))], ["inputs", "reconstructions"])
    storage.write_bytes(storage.join(f.report_dir, "reconstructions.png"), png)
    return "Reconstructions of scored images", "reconstructions.png"


def _samples(f: FigureInputs) -> tuple[str, str] | None:
    if not f.is_image:
        return None
    model = cast(models.Samples, f.model)  # a model asks for this figure only when it samples
    samples = model.sample(2 * GRID, generator=torch.Generator().manual_seed(0))
    png = image_grid([f.to_pixels(samples[:GRID]), f.to_pixels(samples[GRID:])], ["samples from the prior", ""])
    storage.write_bytes(storage.join(f.report_dir, "samples.png"), png)
    return f"New images sampled from the {f.model.name} model's prior", "samples.png"


FIGURES: dict[str, Figure] = {
    "confusion_matrix": _confusion_matrix,
    "reconstructions": _reconstructions,
    "samples": _samples,
}


def model_figures(artifact: str, evaluation: Any, scored_files: list[str], report_dir: str) -> list[tuple[str, str]]:
    """Draw the figures the artifact's model declares; returns (title, file) pairs."""
    model, meta = load_artifact(artifact)
    unknown = [name for name in model.figures if name not in FIGURES]
    if unknown:
        raise ValueError(f"model {model.name!r} asks for figures {unknown} that the report cannot draw "
                         f"(known: {', '.join(FIGURES)})")
    inputs = FigureInputs(model, meta.normalizer(), evaluation, scored_files, report_dir)
    with torch.inference_mode():
        drawn = [FIGURES[name](inputs) for name in model.figures]
    return [d for d in drawn if d is not None]


# --- the page ---------------------------------------------------------------------------------

def _world_sizes(history: list[EpochRecord]) -> str:
    """' Ranks (elastic): epochs 1-4 on 2, 5 on 1, 6-15 on 2.' (the world size each epoch ended on);
    '' for a fixed-size run."""
    sizes = [int(h.metrics["world_size"]) for h in history if "world_size" in h.metrics]
    if len(sizes) != len(history):
        return ""
    spans: list[list[int]] = []  # [first epoch, last epoch, ranks]
    for epoch, size in zip((h.epoch for h in history), sizes):
        if spans and spans[-1][2] == size:
            spans[-1][1] = epoch
        else:
            spans.append([epoch, epoch, size])
    return " Ranks (elastic): " + ", ".join(f"epoch{'s' if a != b else ''} {a}{f'-{b}' if a != b else ''} on {n}"
                                            for a, b, n in spans) + "."


def _drift_section(summary: Any, report_dir: str) -> list[str]:
    """The drift of the version this run's ETL appended (its chart beside the page); [] when none was measured."""
    drift = summary.drift
    if drift is None or summary.etl is None:
        return []
    version = summary.etl.version
    storage.write_bytes(storage.join(report_dir, DRIFT_CHART),
                        drift_chart(drift, f"dataset version {version} against versions 1..{version - 1}"))
    gates = [f"- **gate above threshold**: {p}" for p in summary.drift_problems] or ["- no drift gate above its "
                                                                                    "threshold"]
    return ["", "## Data drift", "", f"Version {version} ({drift.current_rows} records) against versions "
            f"1..{version - 1} ({drift.reference_rows}): {drift.describe()}.", "", *gates, "",
            f"![drift]({DRIFT_CHART})"]


def _promotion_section(outcome: Any) -> list[str]:
    """The challenge's scores and decision ([] when ``promotion.alias`` is off)."""
    if outcome is None:
        return []
    champion = (f"champion `{outcome.champion_run}` {outcome.champion_score:.4f}" if outcome.champion_score is not None
                else "no champion yet")
    return ["", "## Promotion", "", f"Alias `{outcome.alias}`: **{'promoted' if outcome.promoted else 'not promoted'}**"
            f" ({outcome.metric} on {outcome.evaluated_on}: this model {outcome.challenger_score:.4f}, {champion}).",
            "", outcome.reason]


def write_report(run_dir: str, summary: Any, curves: dict[str, list[EpochRecord]], artifact: str,
                 evaluation: Any, scored: str, scored_files: list[str]) -> str:
    """Write ``report.md`` and its figures into ``<run_dir>/report`` (the page last); its location.

    ``summary``: the run's ``pipelines.summary.RunSummary``; ``curves``: the run's history by name
    (``{"this run": ...}``, plus a baseline's when there is one); ``evaluation``: the
    ``pipelines.infer.evaluate.Evaluation`` (None: the model's task has none); ``scored``: what
    inference scored (a split name or a path); ``scored_files``: its Parquet files.
    """
    report_dir = RunFolder(run_dir).report
    lines = [f"# dlpipe run `{summary.run_id}`", "",
             f"Model **{summary.model}** on dataset **{summary.dataset}** (version {summary.dataset_version}).", "",
             "## Stages", "", "| stage | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {name} | {s.status} | {s.seconds:.1f} |" for name, s in summary.stages.items()]
    etl = summary.etl
    if etl is not None:
        lines += ["", f"ETL: {etl.records_in} records in = {etl.accepted} accepted + {etl.quarantined} quarantined."]
    lines += _drift_section(summary, report_dir) + _promotion_section(summary.promotion)
    history = next(iter(curves.values()), [])
    if history:
        storage.write_bytes(storage.join(report_dir, "loss_curves.png"), plot_loss_curves(curves))
        last = history[-1]
        val = f", val loss {last.val_loss:.4f}" if last.val_loss is not None else " (no validation split)"
        started = (f" Warm-started from `{summary.train.init_from}`."
                   if summary.train and summary.train.init_from else "")
        lines += ["", "## Training", "", f"{len(history)} epochs; final train loss {last.loss:.4f}{val}; "
                  f"{last.samples_per_s:.0f} samples/s; "
                  f"{last.data_wait_fraction:.0%} of step time waiting for data.{started}{_world_sizes(history)}",
                  "", "![loss curves](loss_curves.png)"]
    if evaluation is not None:
        lines += ["", f"## Evaluation on {scored}", ""]
        lines += [f"- {k.replace('_', ' ')}: {v:.4f}" for k, v in evaluation.figures().items()
                  if k != "error_vs_baseline"]
        if evaluation.per_class:
            lines += ["", "| class | precision | recall | support |", "| --- | --- | --- | --- |"]
            lines += [f"| {k} | {v.precision:.3f} | {v.recall:.3f} | {v.support} |"
                      for k, v in evaluation.per_class.items()]
    quality = summary.sample_quality
    if quality is not None:
        lines += ["", "## Sample quality", "",
                  f"Fréchet distance in the feature space of a digits classifier ({quality.samples} samples "
                  f"against the {quality.reference_split} split; lower is better):", "",
                  "| samples from | Fréchet distance |", "| --- | --- |",
                  f"| this {summary.model} | {quality.frechet_distance:.2f} |",
                  f"| real train images (the floor) | {quality.real_vs_real:.2f} |",
                  f"| the untrained {summary.model} (the ceiling) | {quality.untrained_generator:.2f} |"]
    for title, name in model_figures(artifact, evaluation, scored_files, report_dir):
        lines += ["", f"### {title}", "", f"![{title}]({name})"]
    path = storage.join(report_dir, "report.md")
    storage.write_text(path, "\n".join(lines) + "\n")
    return path
