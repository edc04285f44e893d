"""The report draws what each model declares, never branching on the model kind (no Spark)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import models
from pipelines.artifact import save_artifact
from pipelines.config import PipelineConfig
from pipelines.report import FIGURES, model_figures, write_report

NORMALIZATION = {"mode": "global", "mean": [0.5], "std": [0.25]}


def _artifact(tmp_path, name: str):
    torch.manual_seed(0)
    model = models.build(name, feature_shape=(1, 8, 8), num_classes=3)
    manifest = {"normalization": NORMALIZATION, "label_names": ["a", "b", "c"]}
    path = tmp_path / "model.pt"
    save_artifact(path, model, manifest, "hash", PipelineConfig())
    return path


def _scored_split(tmp_path):
    split = tmp_path / "holdout"
    split.mkdir()
    rows = np.random.default_rng(0).random((10, 64), dtype=np.float32)
    pq.write_table(pa.table({"features": pa.array(list(rows), type=pa.list_(pa.float32()))}),
                   split / "part-00000.parquet")
    return split


def test_every_figure_a_model_declares_can_be_drawn():
    for name in models.names():
        model = models.build(name, feature_shape=(1, 8, 8), num_classes=3)
        assert set(model.figures) <= set(FIGURES), name


@pytest.mark.parametrize("name, files", [("cnn", ["confusion_matrix.png"]), ("autoencoder", ["reconstructions.png"]),
                                         ("vae", ["reconstructions.png", "samples.png"])])
def test_model_figures_draw_exactly_the_declared_figures(tmp_path, name, files):
    evaluation = {"confusion_matrix": [[2, 0, 0], [0, 1, 1], [0, 0, 3]], "label_names": ["a", "b", "c"]}
    report_dir = tmp_path / "report"
    report_dir.mkdir()
    drawn = model_figures(_artifact(tmp_path, name), evaluation, str(_scored_split(tmp_path)), report_dir)
    assert [f for _, f in drawn] == files
    assert sorted(p.name for p in report_dir.iterdir()) == sorted(files)
    assert all((report_dir / f).stat().st_size > 1000 for f in files)


def test_report_without_validation_or_test_split_names_what_was_scored(tmp_path):
    summary = {"run_id": "r1", "model": "autoencoder", "dataset": "d", "stages": {"train": {"status": "ok", "seconds": 1.0}}}
    history = [{"epoch": e, "loss": 1.0 / e, "samples_per_s": 100.0, "data_wait_fraction": 0.1} for e in (1, 2)]
    evaluation = {"reconstruction_error": 0.2, "baseline_reconstruction_error": 0.5}
    path = write_report(tmp_path, summary, history, _artifact(tmp_path, "autoencoder"), evaluation,
                        "the holdout split", str(_scored_split(tmp_path)))
    text = path.read_text()
    assert "## Evaluation on the holdout split" in text
    assert "(no validation split)" in text and "val loss" not in text
    assert "- reconstruction error: 0.2000" in text and "![Reconstructions of scored images](reconstructions.png)" in text
    assert (tmp_path / "report" / "loss_curves.png").stat().st_size > 1000
