"""The run report: ``report.md`` with loss curves, and the figures each model's outputs allow
(confusion matrix for classifiers; reconstructions, and samples for generative models)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.artifact import load_artifact
from pipelines.loader import Normalizer

GRID = 8  # images per row in the figures


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_loss_curves(history: list[dict[str, Any]], path: Path) -> None:
    plt = _plt()
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(epochs, [h["loss"] for h in history], marker="o", label="train loss")
    ax.plot(epochs, [h["val_loss"] for h in history], marker="o", label="val loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
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


def model_figures(artifact: Path, test_split: str, report_dir: Path) -> list[tuple[str, str]]:
    """Reconstruction / sample grids for models that can make them; returns (title, file) pairs."""
    model, meta = load_artifact(artifact)
    shape = tuple(meta["feature_shape"])
    if len(shape) != 3 or model.task != "reconstruction":
        return []
    normalize = Normalizer.from_stats(meta["normalization"], shape)
    first = sorted(Path(test_split).glob("*.parquet"))[0]
    table = pq.read_table(first, columns=["features"]).slice(0, GRID)
    flat = np.stack(table.column("features").to_numpy(zero_copy_only=False)).astype(np.float32)
    x = normalize(flat)

    def to_pixels(z: torch.Tensor) -> np.ndarray:
        return (z * normalize.std + normalize.mean).clamp(0, 1).numpy()

    figures = []
    with torch.inference_mode():
        image_grid([to_pixels(x), to_pixels(model.reconstruct(x))], ["test images", "reconstructions"],
                   report_dir / "reconstructions.png")
        figures.append(("Reconstructions of test images", "reconstructions.png"))
        if hasattr(model, "sample"):
            samples = model.sample(2 * GRID, generator=torch.Generator().manual_seed(0))
            image_grid([to_pixels(samples[:GRID]), to_pixels(samples[GRID:])], ["samples from the prior", ""],
                       report_dir / "samples.png")
            figures.append(("New images sampled from the VAE's prior", "samples.png"))
    return figures


def write_report(run_dir: Path, summary: dict[str, Any], history: list[dict[str, Any]], artifact: str | Path,
                 test_split: str) -> Path:
    """Write ``report.md`` and its figures into ``<run_dir>/report``; return the report's path."""
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
        lines += ["", "## Training", "", f"{len(history)} epochs; final train loss {last['loss']:.4f}, "
                  f"val loss {last['val_loss']:.4f}; {last['samples_per_s']:.0f} samples/s; "
                  f"{last['data_wait_fraction']:.0%} of step time waiting for data.", "",
                  "![loss curves](loss_curves.png)"]
    evaluation = summary.get("eval", {})
    lines += ["", "## Evaluation on the test split", ""]
    for key in ("accuracy", "reconstruction_error", "baseline_reconstruction_error"):
        if key in evaluation:
            lines.append(f"- {key.replace('_', ' ')}: {evaluation[key]:.4f}")
    if "per_class" in evaluation:
        lines += ["", "| class | precision | recall | support |", "| --- | --- | --- | --- |"]
        lines += [f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['support']} |"
                  for k, v in evaluation["per_class"].items()]
        lines += ["", "![confusion matrix](confusion_matrix.png)"]
    for title, name in model_figures(Path(artifact), test_split, report_dir):
        lines += ["", f"### {title}", "", f"![{title}]({name})"]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
