"""The run report: ``report.md`` with loss curves, the evaluation, and the figures the model asks for.

A model declares its figures by name (``model.figures``, e.g. ``("reconstructions", "samples")``);
:data:`FIGURES` maps each name to the function that draws it. The report never asks what kind of
model it shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow.parquet as pq
import torch

import models
from pipelines.artifact import Normalizer, load_artifact, normalizer
from pipelines.dataset import part_files

GRID = 8  # images per row in the figures
CONFUSION_FILE = "confusion_matrix.png"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(history: list[dict[str, Any]], path: Path) -> None:
    """Train loss per epoch, and validation loss when the run had a validation split."""
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["loss"] for h in history], marker="o", label="train loss")
    if all("val_loss" in h for h in history):
        ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(confusion: np.ndarray, label_names: list[str], path: Path) -> None:
    """A (true x predicted) count matrix as a heat map with the counts written in."""
    plt = _plt()
    path.parent.mkdir(parents=True, exist_ok=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def image_grid(rows: list[np.ndarray], titles: list[str], path: Path) -> None:
    """One figure row per array of images (N, C, H, W) in [0, 1]."""
    plt = _plt()
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
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- the figures a model can ask for ----------------------------------------------------------

@dataclass(frozen=True)
class FigureInputs:
    """What a figure may draw from: the trained model, its evaluation, the split it was scored on."""

    model: models.DlpipeModel
    normalize: Normalizer
    evaluation: dict[str, Any]
    scored_path: str  # Parquet folder that was scored ("" = none)
    report_dir: Path

    @property
    def is_image(self) -> bool:
        return len(self.model.feature_shape) == 3

    def first_rows(self, n: int) -> torch.Tensor:
        """The first ``n`` scored rows, normalized as the model sees them."""
        table = pq.read_table(part_files(self.scored_path)[0], columns=["features"]).slice(0, n)
        flat = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
        return self.normalize(flat)

    def to_pixels(self, x: torch.Tensor) -> np.ndarray:
        return self.normalize.denormalize(x).clamp(0, 1).numpy()


Figure = Callable[[FigureInputs], tuple[str, str] | None]  # -> (title, file name), or None when not drawable


def _confusion_matrix(f: FigureInputs) -> tuple[str, str] | None:
    if "confusion_matrix" not in f.evaluation:
        return None
    plot_confusion(np.asarray(f.evaluation["confusion_matrix"]), f.evaluation["label_names"],
                   f.report_dir / CONFUSION_FILE)
    return "Confusion matrix", CONFUSION_FILE


def _reconstructions(f: FigureInputs) -> tuple[str, str] | None:
    if not f.is_image or not f.scored_path or not part_files(f.scored_path):
        return None
    x = f.first_rows(GRID)
    image_grid([f.to_pixels(x), f.to_pixels(f.model.reconstruct(x))], ["inputs", "reconstructions"],
               f.report_dir / "reconstructions.png")
    return "Reconstructions of scored images", "reconstructions.png"


def _samples(f: FigureInputs) -> tuple[str, str] | None:
    if not f.is_image:
        return None
    samples = f.model.sample(2 * GRID, generator=torch.Generator().manual_seed(0))
    image_grid([f.to_pixels(samples[:GRID]), f.to_pixels(samples[GRID:])], ["samples from the prior", ""],
               f.report_dir / "samples.png")
    return f"New images sampled from the {f.model.name} model's prior", "samples.png"


FIGURES: dict[str, Figure] = {
    "confusion_matrix": _confusion_matrix,
    "reconstructions": _reconstructions,
    "samples": _samples,
}


def model_figures(artifact: Path, evaluation: dict[str, Any], scored_path: str,
                  report_dir: Path) -> list[tuple[str, str]]:
    """Draw the figures the artifact's model declares; returns (title, file) pairs."""
    model, meta = load_artifact(artifact)
    unknown = [name for name in model.figures if name not in FIGURES]
    if unknown:
        raise ValueError(f"model {model.name!r} asks for figures {unknown} that the report cannot draw "
                         f"(known: {', '.join(FIGURES)})")
    inputs = FigureInputs(model, normalizer(meta), evaluation, scored_path, report_dir)
    with torch.inference_mode():
        drawn = [FIGURES[name](inputs) for name in model.figures]
    return [d for d in drawn if d is not None]


# --- the page ---------------------------------------------------------------------------------

def write_report(run_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]], artifact: str | Path,
                 evaluation: dict[str, Any], scored: str, scored_path: str) -> Path:
    """Write ``report.md`` and its figures into ``<run_dir>/report``; return the report's path.

    ``scored``: what inference scored (a split name or a path); ``scored_path``: its Parquet folder.
    """
    report_dir = run_dir / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# dlpipe run `{summary['run_id']}`", "",
             f"Model **{summary['model']}** on dataset **{summary['dataset']}**.", "", "## Stages", "",
             "| stage | status | seconds |", "| --- | --- | --- |"]
    lines += [f"| {name} | {s['status']} | {s['seconds']:.1f} |" for name, s in summary["stages"].items()]
    etl = summary.get("etl", {})
    if etl:
        lines += ["", f"ETL: {etl['records_in']} records in = {etl['accepted']} accepted + "
                      f"{etl['quarantined']} quarantined."]
    if history:
        plot_loss_curves(history, report_dir / "loss_curves.png")
        last = history[-1]
        val = f", val loss {last['val_loss']:.4f}" if "val_loss" in last else " (no validation split)"
        lines += ["", "## Training", "", f"{len(history)} epochs; final train loss {last['loss']:.4f}{val}; "
                  f"{last['samples_per_s']:.0f} samples/s; "
                  f"{last['data_wait_fraction']:.0%} of step time waiting for data.", "",
                  "![loss curves](loss_curves.png)"]
    lines += ["", f"## Evaluation on {scored}", ""]
    for key in ("accuracy", "reconstruction_error", "baseline_reconstruction_error"):
        if key in evaluation:
            lines.append(f"- {key.replace('_', ' ')}: {evaluation[key]:.4f}")
    if "per_class" in evaluation:
        lines += ["", "| class | precision | recall | support |", "| --- | --- | --- | --- |"]
        lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['support']} |"
                  for k, v in evaluation["per_class"].items()]
    quality = summary.get("sample_quality")
    if quality:
        lines += ["", "## Sample quality", "",
                  f"Fréchet distance in the feature space of a digits classifier ({quality['samples']} samples "
                  f"against the {quality['reference_split']} split; lower is better):", "",
                  "| samples from | Fréchet distance |", "| --- | --- |",
                  f"| this {summary['model']} | {quality['frechet_distance']:.2f} |",
                  f"| real train images (the floor) | {quality['real_vs_real']:.2f} |",
                  f"| the untrained {summary['model']} (the ceiling) | {quality['untrained_generator']:.2f} |"]
    for title, name in model_figures(Path(artifact), evaluation, scored_path, report_dir):
        lines += ["", f"### {title}", "", f"![{title}]({name})"]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
