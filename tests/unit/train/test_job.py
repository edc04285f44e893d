"""The driver-to-rank contract: planned from the published dataset, shipped as JSON, rebuilt typed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from testkit import make_config, publish_dataset
from pipelines import dataset, storage
from pipelines.train.job import TrainJob, plan_job


def test_job_round_trips_through_json_as_the_same_typed_object(tmp_path):
    config = make_config(tmp_path, "train.epochs=3")
    manifest = publish_dataset(config.dataset_dir, {"train": 20, "val": 8, "test": 8})
    job = plan_job(config)
    version = storage.join(config.dataset_dir, "v000001-test0000")
    assert job.train.files == [storage.join(version, "train", "part-00000.parquet")]
    assert job.train.sizes == [8, 8, 4] and job.validation.rows == 8
    assert job.data.manifest == manifest and job.data.identity == manifest.identity() and job.data.version == 1
    assert job.artifact == storage.join(config.run_dir(), "model", "model.pt")
    shipped = json.loads(json.dumps(job.to_dict()))
    assert TrainJob.from_dict(shipped) == job


def test_a_dataset_without_val_plans_a_job_without_validation(tmp_path):
    config = make_config(tmp_path)
    publish_dataset(config.dataset_dir, {"train": 10, "holdout": 5})
    assert plan_job(config).validation is None


def test_an_unpublished_dataset_says_how_to_make_it(tmp_path):
    with pytest.raises(dataset.DatasetError, match="run `dlpipe etl`"):
        plan_job(make_config(tmp_path))


def test_a_dataset_written_before_versions_reads_as_version_1_with_its_old_identity(tmp_path):
    """A workdir of an older dlpipe: manifest.json and _SUCCESS at the top, split folders beside them."""
    config = make_config(tmp_path)
    publish_dataset(config.dataset_dir, {"train": 12}, version_folder="tmp-new")
    root = tmp_path / "datasets" / "digits"
    (root / "tmp-new" / "train").rename(root / "train")
    old = {"records_in": 12, "accepted": 12, "quarantined": 0, "quarantine_by_reason": {}, "dtype": "float32",
           "columns": dataset.RECORD_COLUMNS,
           "splits": {"train": {"count": 12, "per_class": {"0": 6, "1": 6}, "row_groups": 2,
                                "files": ["part-00000.parquet"]}},
           "feature_shape": [1, 8, 8], "normalization": {"mode": "global", "mean": [0.5], "std": [0.25]},
           "label_names": ["0", "1"], "source": {"kind": "images", "path": "/data"},
           "input_files": {"listed": 12, "empty": 0, "empty_examples": []}, "config_hash": "c",
           "created_at": "2026-01-01", "rows_per_row_group": 8, "row_group_rule": "r"}
    (root / dataset.MANIFEST_FILE).write_text(json.dumps(old))
    (root / dataset.LEGACY_SUCCESS).touch()
    for _, head in dataset.head_files(str(root)):
        Path(head).unlink()
    view = dataset.open_dataset(config.dataset_dir)
    assert view.version == 1 and view.splits["train"].sizes == [8, 4]  # row groups read from the footers
    # The identity older checkpoints recorded: the old manifest_hash of this very file.
    import hashlib
    stable = {k: v for k, v in old.items() if k not in ("created_at", "config_hash")}
    assert view.identity == hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()[:16]


def test_the_layout_check_counts_gradient_accumulation_as_the_ranks_do(tmp_path):
    """64 train rows over 2 ranks: 32 a shard. 16 x 2 rows a step fit; 16 x 4 do not, and the error
    comes before any launch, naming both settings."""
    from pipelines.train.driver import TrainError, check_layout

    publish_dataset(str(tmp_path / "datasets" / "digits"), {"train": 64, "val": 16, "test": 16},
                    label_names=tuple("0123456789"))
    fits = make_config(tmp_path, "train.batch_size=16", "train.grad_accumulation=2")
    assert check_layout(plan_job(fits)) is None
    too_big = make_config(tmp_path, "train.batch_size=16", "train.grad_accumulation=4")
    with pytest.raises(TrainError, match=r"train.batch_size=16 x train.grad_accumulation=4 rows a step is larger "
                                         r"than every rank's shard .* lower train.batch_size or train.grad_accumulation"):
        check_layout(plan_job(too_big))
