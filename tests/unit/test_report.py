"""The report draws what each model declares, never branching on the model kind (no Spark)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import models
from pipelines.artifact import ArtifactMeta, save_artifact
from pipelines.dataset import Normalization
from pipelines.events import EpochRecord
from pipelines.infer.evaluate import Evaluation
from pipelines.report import FIGURES, model_figures, write_report
from pipelines.summary import RunSummary, StageStatus

NORMALIZATION = Normalization("global", [0.5], [0.25])


def _artifact(tmp_path, name: str) -> str:
    torch.manual_seed(0)
    model = models.build(name, feature_shape=(1, 8, 8), num_classes=3)
    plain = models.to_artifact_dict(model)
    meta = ArtifactMeta(plain["model_name"], plain["model_config"], plain["feature_shape"], plain["num_classes"],
                        NORMALIZATION, ["a", "b", "c"])
    path = str(tmp_path / "model.pt")
    save_artifact(path, model, meta)
    return path


def _scored_split(tmp_path) -> list[str]:
    split = tmp_path / "holdout"
    split.mkdir()
    rows = np.random.default_rng(0).random((10, 64), dtype=np.float32)
    pq.write_table(pa.table({"features": pa.array(list(rows), type=pa.list_(pa.float32()))}),
                   split / "part-00000.parquet")
    return [str(split / "part-00000.parquet")]


def _history(epochs=(1, 2)) -> list[EpochRecord]:
    return [EpochRecord(epoch=e, loss=1.0 / e, samples=10, samples_per_s=100.0, seconds=1.0, data_wait_fraction=0.1)
            for e in epochs]


def test_every_figure_a_model_declares_can_be_drawn():
    for name in models.names():
        assert set(models.spec(name).figures) <= set(FIGURES), name


@pytest.mark.parametrize("name, files", [("cnn", ["confusion_matrix.png"]), ("autoencoder", ["reconstructions.png"]),
                                         ("vae", ["reconstructions.png", "samples.png"])])
def test_model_figures_draw_exactly_the_declared_figures(tmp_path, name, files):
    evaluation = Evaluation(confusion_matrix=[[2, 0, 0], [0, 1, 1], [0, 0, 3]], label_names=["a", "b", "c"])
    report_dir = tmp_path / "report"
    drawn = model_figures(_artifact(tmp_path, name), evaluation, _scored_split(tmp_path), str(report_dir))
    assert [f for _, f in drawn] == files
    assert sorted(p.name for p in report_dir.iterdir()) == sorted(files)
    assert all((report_dir / f).stat().st_size > 1000 for f in files)


def test_report_without_validation_or_test_split_names_what_was_scored(tmp_path):
    summary = RunSummary("r1", "autoencoder", "d", "c", {"train": StageStatus("ok", 1.0)})
    evaluation = Evaluation(reconstruction_error=0.2, baseline_reconstruction_error=0.5)
    path = write_report(str(tmp_path), summary, {"this run": _history()}, _artifact(tmp_path, "autoencoder"),
                        evaluation, "the holdout split", _scored_split(tmp_path))
    text = Path(path).read_text()
    assert "## Evaluation on the holdout split" in text
    assert "(no validation split)" in text and "val loss" not in text
    assert "- reconstruction error: 0.2000" in text and "![Reconstructions of scored images](reconstructions.png)" in text
    assert (tmp_path / "report" / "loss_curves.png").stat().st_size > 1000


def test_a_model_without_an_evaluation_gets_no_empty_evaluation_section(tmp_path):
    summary = RunSummary("g1", "gan", "d", "c", {"train": StageStatus("ok", 1.0)})
    path = write_report(str(tmp_path), summary, {"this run": _history()}, _artifact(tmp_path, "gan"), None,
                        "the test split", _scored_split(tmp_path))
    text = Path(path).read_text()
    assert "## Evaluation" not in text and "![New images sampled from the gan model's prior](samples.png)" in text


def test_the_world_size_of_an_elastic_run_is_stated_per_span_of_epochs():
    from pipelines.report import _world_sizes

    def record(epoch: int, ranks: int | None) -> EpochRecord:
        return EpochRecord(epoch=epoch, loss=1.0, samples=10, samples_per_s=1.0, seconds=1.0, data_wait_fraction=0.0,
                           metrics={} if ranks is None else {"world_size": float(ranks)})

    elastic = [record(e, n) for e, n in zip(range(1, 7), [2, 2, 1, 2, 2, 3])]
    assert _world_sizes(elastic) == " Ranks (elastic): epochs 1-2 on 2, epoch 3 on 1, epochs 4-5 on 2, epoch 6 on 3."
    assert _world_sizes([record(1, None), record(2, None)]) == ""  # a fixed-size run: nothing to say
