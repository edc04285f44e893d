"""The driver-to-rank contract: planned from the published dataset, shipped as JSON, rebuilt typed."""
from __future__ import annotations

import json

import pytest

from testkit import make_config
from pipelines import dataset
from pipelines.publish import SUCCESS
from pipelines.train.job import TrainJob, plan_job


def _publish_manifest(config, splits: list[str]) -> dict:
    root = config.dataset_dir
    root.mkdir(parents=True)
    manifest = {"splits": {s: {"count": 1} for s in splits}, "feature_shape": [1, 8, 8], "label_names": ["0"]}
    (root / dataset.MANIFEST_FILE).write_text(json.dumps(manifest))
    (root / SUCCESS).touch()
    return manifest


def test_job_round_trips_through_json_as_the_same_typed_object(tmp_path):
    config = make_config(tmp_path, "train.epochs=3")
    manifest = _publish_manifest(config, ["train", "val", "test"])
    job = plan_job(config)
    assert job.train_path == str((config.dataset_dir / "train").resolve())
    assert job.validation_path == str((config.dataset_dir / "val").resolve())
    assert job.manifest == manifest and job.manifest_hash == dataset.manifest_hash(manifest)
    assert job.artifact == config.run_dir().resolve() / "model" / "model.pt"
    shipped = json.loads(json.dumps(job.to_payload()))
    assert TrainJob.from_payload(shipped) == job


def test_a_dataset_without_val_plans_a_job_without_validation(tmp_path):
    config = make_config(tmp_path)
    _publish_manifest(config, ["train", "holdout"])
    job = plan_job(config)
    assert job.validation_path == ""


def test_an_unpublished_dataset_says_how_to_make_it(tmp_path):
    with pytest.raises(dataset.DatasetError, match="run `dlpipe etl`"):
        plan_job(make_config(tmp_path))
