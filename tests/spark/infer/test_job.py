"""Batch inference with mapInArrow: exact rows, parity with plain PyTorch, one load per worker."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from pyspark.sql import types as T

from pathlib import Path

from testkit import make_config, predictions_frame, split_files
from pipelines.infer import job as infer
from pipelines.train import driver as train
from pipelines.artifact import Normalizer, load_artifact
from pipelines.config import ConfigError
from pipelines.device import DeviceError


@pytest.fixture(scope="module")
def trained(spark, digits_workdir):
    config = make_config(digits_workdir, "run_id=infer-cnn", "train.epochs=3")
    train.main(spark, config)
    return config


def _single_process_forward(artifact, features: np.ndarray) -> dict[str, np.ndarray]:
    model, meta = load_artifact(artifact)
    normalize = Normalizer.from_stats(meta.normalization, meta.feature_shape)
    with torch.inference_mode():
        return {k: v.numpy() for k, v in model.predict(normalize(features)).items()}


def test_predictions_match_a_single_process_forward(spark, trained, digits_workdir):
    result = infer.main(spark, trained)
    source = pq.ParquetDataset(split_files(digits_workdir, "test")).read().to_pandas()
    source = source.sort_values("id").reset_index(drop=True)
    predicted = predictions_frame(spark, result.predictions).toPandas().sort_values("id").reset_index(drop=True)
    assert len(predicted) == len(source) == result.rows and result.bad_rows == 0
    assert predicted["id"].tolist() == source["id"].tolist()
    assert predicted["error"].isna().all()
    expected = _single_process_forward(result.artifact, np.stack(source["features"]).astype(np.float32))
    np.testing.assert_array_equal(predicted["prediction"].to_numpy(), expected["prediction"])
    np.testing.assert_allclose(np.stack(predicted["probabilities"]), expected["probabilities"], atol=1e-5)
    assert result.eval.rows == len(source)
    assert (Path(trained.run_dir()) / "report" / "confusion_matrix.png").stat().st_size > 0


def test_model_is_loaded_once_per_worker_process(spark, trained, digits_workdir, tmp_path):
    # A fresh artifact identity (same weights, other bytes), so no worker has it cached yet.
    artifact = torch.load(Path(trained.run_dir()) / "model" / "model.pt", weights_only=True)
    artifact["model_config"] = {**artifact["model_config"], "dropout": artifact["model_config"].get("dropout", 0.0)}
    artifact["config_hash"] = "copy for the load-count test"
    torch.save(artifact, tmp_path / "model.pt")
    frame = spark.read.parquet(*split_files(digits_workdir, "test")).repartition(12)
    predictions, loads = infer.predict(spark, frame, str(tmp_path / "model.pt"), batch_size=16)
    assert predictions.filter("error IS NULL").count() == frame.count()
    # 12 partitions, many Arrow batches each, on local[2]: each reused Python worker loads it once
    # (up to 4: a stage that chains two Python functions, decoding images then scoring them, pools two per task)
    assert 1 <= len(loads.value) <= 4
    assert len(set(loads.value)) == len(loads.value), f"a worker loaded the model twice: {loads.value}"
    # Same artifact again: every worker already has it (cached by content hash), nothing loads.
    again, loads_again = infer.predict(spark, frame, str(tmp_path / "model.pt"), batch_size=16)
    assert again.filter("error IS NULL").count() == frame.count()
    assert len(loads_again.value) <= 4 - len(loads.value)  # only a pooled worker that had not scored yet
    assert not set(loads_again.value) & set(loads.value), (loads.value, loads_again.value)


def test_bad_rows_get_null_outputs_and_an_error(spark, trained):
    good = [float(i % 16) / 16 for i in range(64)]
    rows = [("ok", good), ("null", None), ("short", good[:10]), ("nan", good[:63] + [float("nan")])]
    schema = T.StructType([T.StructField("id", T.StringType()),
                           T.StructField("features", T.ArrayType(T.FloatType()))])
    frame = spark.createDataFrame(rows, schema)
    predictions, _ = infer.predict(spark, frame, f"{trained.run_dir()}/model/model.pt")
    out = {r["id"]: r for r in predictions.collect()}
    assert len(out) == 4
    assert out["ok"]["error"] is None and out["ok"]["prediction"] is not None
    assert len(out["ok"]["probabilities"]) == 10
    assert out["null"]["error"] == "features is null"
    assert out["short"]["error"] == "features has 10 values, the model expects 64"
    assert out["nan"]["error"] == "features contain NaN or inf"
    for bad in ("null", "short", "nan"):
        assert out[bad]["prediction"] is None and out[bad]["probabilities"] is None


def test_a_split_the_dataset_lacks_is_a_config_error_naming_its_splits(spark, trained):
    config = make_config(trained.workdir, "run_id=infer-cnn", "infer.split=holdout")
    with pytest.raises(ConfigError, match=r"infer.split='holdout' is not a split of dataset digits "
                                          r"\(its splits: test, train, val\)"):
        infer.main(spark, config)


def test_any_split_can_be_scored(spark, trained, tmp_path):
    config = make_config(trained.workdir, "run_id=infer-cnn", "infer.split=val", f"infer.output={tmp_path / 'p'}")
    scored = infer.main(spark, config)
    from pipelines.dataset import open_dataset

    assert scored.split == "val" and scored.rows == open_dataset(config.dataset_dir).counts["val"]


def test_cuda_requested_without_a_gpu_fails_before_spark(trained, tmp_path):
    from pipelines.preflight import validate

    config = make_config(trained.workdir, "run_id=infer-cnn", "infer.device=cuda", f"infer.output={tmp_path / 'p'}")
    with pytest.raises(DeviceError, match=r"'infer.device' = 'cuda' but there is no GPU here.*infer.device=auto"):
        validate(config, "infer", master="local[2]")
    assert not (tmp_path / "p").exists()
