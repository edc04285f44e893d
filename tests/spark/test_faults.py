"""Fault injection: a seeded matrix of failures and kills at every write and commit point of the
driver (tests/faults.py), over a full ETL, an append and an inference, and at every write of a
training's rank 0 (checkpoints, their pruning, metrics, the model; a kill there is a real SIGKILL
of the rank process). After each faulted job: the head and the commit are readable, every
committed version or prediction is whole (its files there, its counts reconciled), nothing
half-visible, and a plain re-run completes with exactly the records a clean run gives (a training:
resumes, and ends with every epoch once). ``DLPIPE_FAULT_SWEEP=N`` runs N schedules per job instead
of the default (a longer sweep)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

import models
from faults import Fault, Killed, counted, injected, schedules
from rank_faults import FAULT_FILE
from testkit import make_config, publish_dataset
from pipelines import dataset as ds
from pipelines import storage
from pipelines.artifact import artifact_meta, load_artifact, save_artifact
from pipelines.etl import job as etl
from pipelines.infer import job as infer
from pipelines.publish import committed_files, read_commit
from pipelines.train import driver as train
from pipelines.train.checkpoint import latest_checkpoint
from pipelines.train.job import plan_job

SWEEP = int(os.environ.get("DLPIPE_FAULT_SWEEP", "0"))
PER_JOB = {"etl_full": SWEEP or 12, "etl_append": SWEEP or 12, "infer": SWEEP or 6, "train": SWEEP or 3}  # 33
SEED = 20261207


def _day(folder: Path, name: str, first: int, count: int) -> None:
    folder.mkdir(exist_ok=True)
    rows = "".join(f"r{i},{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(first, first + count))
    (folder / name).write_text("rid,a,b,label\n" + rows)


def _config(workdir: Path, src: Path, *extra: str):
    return make_config(workdir, "dataset=table", "etl.source.kind=csv", f"etl.source.path={src}",
                       "etl.source.id_column=rid", "etl.rows_per_row_group=8", "model.name=mlp", *extra)


def _ids(root: str) -> dict[str, list[str]]:
    view = ds.open_dataset(root)
    return {name: sorted(ds.read_split(split, ("id",)).column("id").to_pylist()) for name, split in view.splits.items()}


def check_dataset(root: str, before: ds.Head) -> None:
    """The head is there and names whole versions only; if it did not move, it is the one before."""
    head = ds.read_head(root)
    assert head is not None and head.number >= before.number
    if head.number == before.number:
        assert head == before
    assert [v.version for v in head.versions][: len(before.versions)] == [v.version for v in before.versions] or \
        len(head.versions) == 1  # an append keeps every earlier version; a full rebuild is one new version
    for entry in head.versions:
        manifest = ds.read_manifest(storage.join(root, entry.folder))
        assert manifest.records_in == manifest.accepted + manifest.quarantined
        assert sum(info.count for info in manifest.splits.values()) == manifest.accepted
        for info in manifest.splits.values():
            rows = 0
            for part in info.files:
                location = storage.join(root, entry.folder, part.path)
                rows += pq.read_metadata(location).num_rows
            assert rows == info.count, (entry.folder, info)


def _run_faulted(job, fault: Fault, monkeypatch) -> str:
    with injected(monkeypatch, fault):
        try:
            job()
        except (Killed, Exception) as e:  # noqa: BLE001 - any failure is allowed; what it leaves is checked
            return type(e).__name__
    return "finished"


@pytest.fixture(scope="module")
def base(spark, tmp_path_factory):
    """A committed dataset (day 1: 40 records), a model artifact for it, and committed predictions."""
    root = tmp_path_factory.mktemp("faults")
    src = root / "src"
    _day(src, "day1.csv", 0, 40)
    config = _config(root / "work", src, "etl.mode=append")
    manifest = etl.main(spark, config)
    torch.manual_seed(0)
    model = models.build("mlp", feature_shape=tuple(manifest.feature_shape), num_classes=2)
    save_artifact(str(root / "model.pt"), model, artifact_meta(model, ds.DatasetView("", 1, manifest, {}, manifest.identity()), config))
    scoring = _config(root / "work", src, f"infer.artifact={root / 'model.pt'}", "infer.split=train", "run_id=score")
    infer.main(spark, scoring)
    return root


def _jobs(spark, case: Path):
    src = case / "src"
    return {
        "etl_full": lambda: etl.main(spark, _config(case / "work", src)),
        "etl_append": lambda: etl.main(spark, _config(case / "work", src, "etl.mode=append")),
        "infer": lambda: infer.main(spark, _config(case / "work", src, f"infer.artifact={case / 'model.pt'}",
                                                  "infer.split=train", "run_id=score")),
    }


def _prepare(case: Path, job: str) -> None:
    if job == "etl_append":
        _day(case / "src", "day2.csv", 40, 25)  # new records: the append makes version 2


def _faults(spark, base: Path, tmp_path: Path, monkeypatch, job: str) -> list[Fault]:
    probe = tmp_path / "probe"
    shutil.copytree(base, probe)
    _prepare(probe, job)
    calls = counted(monkeypatch, _jobs(spark, probe)[job])
    shutil.rmtree(probe)
    return schedules(SEED + len(job), len(calls), PER_JOB[job])


@pytest.mark.slow
@pytest.mark.parametrize("job", ["etl_full", "etl_append"])
def test_a_fault_at_any_write_of_an_etl_loses_nothing_and_a_rerun_completes(spark, base, tmp_path, monkeypatch, job):
    faults = _faults(spark, base, tmp_path, monkeypatch, job)
    expected_ids = None
    for i, fault in enumerate(faults):
        case = tmp_path / f"case{i}"
        shutil.copytree(base, case)
        _prepare(case, job)
        root = str(case / "work" / "datasets" / "table")
        before = ds.read_head(root)
        day1 = _ids(root)
        outcome = _run_faulted(_jobs(spark, case)[job], fault, monkeypatch)
        where = f"{job}, {fault.describe()}: {outcome}"
        check_dataset(root, before)
        if ds.read_head(root).number == before.number:  # not committed: the version before is whole
            assert _ids(root) == day1, where
        _jobs(spark, case)[job]()  # the re-run completes (a fault never leaves a lease or folder in the way)
        check_dataset(root, before)
        ids = _ids(root)
        if job == "etl_append":
            assert len(ds.read_head(root).versions) == 2, where  # v1 kept, v2 added once
        all_ids = sorted(i for split in ids.values() for i in split)
        assert len(all_ids) == len(set(all_ids)), where  # each record exactly once
        expected_ids = expected_ids or ids
        assert ids == expected_ids, where  # the same records in the same splits, whatever failed before
        shutil.rmtree(case)
    assert {f.kind for f in faults} == {"fail", "kill"} and all(f.fired for f in faults)


@pytest.mark.slow
def test_a_fault_at_any_write_of_an_inference_never_publishes_a_partial_set(spark, base, tmp_path, monkeypatch):
    faults = _faults(spark, base, tmp_path, monkeypatch, "infer")
    for i, fault in enumerate(faults):
        case = tmp_path / f"case{i}"
        shutil.copytree(base, case)
        target = str(case / "work" / "runs" / "score" / "predictions")
        before = read_commit(target)
        outcome = _run_faulted(_jobs(spark, case)["infer"], fault, monkeypatch)
        where = f"infer, {fault.describe()}: {outcome}"
        rows = ds.open_dataset(str(case / "work" / "datasets" / "table")).counts["train"]
        commit = read_commit(target)
        assert commit is not None, where  # the earlier predictions are never lost
        files = committed_files(target)
        assert files and all(Path(f).is_file() for f in files), where  # nothing half-visible
        assert sum(pq.read_metadata(f).num_rows for f in files if f.endswith(".parquet")) == rows, where
        assert commit == before or fault.fired.startswith(("replace_if_version", "create_if_absent", "delete")), where
        _jobs(spark, case)["infer"]()
        files = committed_files(target, ".parquet")
        assert sum(pq.read_metadata(f).num_rows for f in files) == rows, where
        shutil.rmtree(case)
    assert all(f.fired for f in faults)


TRAIN_EPOCHS = 2


def _train_config(workdir: Path):
    # 64 rows in 8 row groups, 2 ranks, batches of 8: 4 steps an epoch, a checkpoint every 2
    return make_config(workdir, "run_id=faulted", f"train.epochs={TRAIN_EPOCHS}", "train.batch_size=8",
                       "train.checkpoint_every_steps=2", "train.failure_timeout_s=30")


def _faulted_training(spark, workdir: Path, kind: str, at: int) -> tuple[str, list[str]]:
    """Train with rank 0 meeting ``kind`` at its write call ``at`` (0: none, counting only); the
    outcome and the rank's write calls."""
    calls = workdir / "calls.txt"
    (workdir / FAULT_FILE).write_text(json.dumps({"rank": 0, "kind": kind, "at": at, "log": str(calls)}))
    try:
        train.main(spark, _train_config(workdir), entry="rank_faults:train_rank_with_storage_fault")
        outcome = "finished"
    except train.TrainError as e:
        outcome = f"TrainError: {str(e)[:300]}"
    finally:
        (workdir / FAULT_FILE).unlink()
    return outcome, calls.read_text().splitlines() if calls.exists() else []


@pytest.fixture(scope="module")
def train_base(tmp_path_factory) -> Path:
    """A workdir with a small committed dataset (no Spark needed to make it)."""
    workdir = tmp_path_factory.mktemp("train-faults") / "work"
    publish_dataset(str(workdir / "datasets" / "digits"), {"train": 64, "val": 16, "test": 16},
                    label_names=tuple("0123456789"))
    return workdir


@pytest.mark.slow
def test_a_fault_at_any_write_of_a_training_rank_loses_no_checkpoint_and_a_rerun_resumes(spark, train_base, tmp_path):
    probe = tmp_path / "probe"
    shutil.copytree(train_base, probe)
    outcome, calls = _faulted_training(spark, probe, "delay", 0)
    assert outcome == "finished" and calls, outcome
    shutil.rmtree(probe)
    faults = schedules(SEED + 5, len(calls), PER_JOB["train"])
    for i, fault in enumerate(faults):
        workdir = tmp_path / f"case{i}"
        shutil.copytree(train_base, workdir)
        outcome, seen = _faulted_training(spark, workdir, fault.kind, fault.at)
        where = f"train, {fault.kind} at rank 0's write call {fault.at} ({seen[fault.at - 1] if len(seen) >= fault.at else 'not reached'}): {outcome}"
        assert len(seen) >= fault.at, where
        config = _train_config(workdir)
        job = plan_job(config)
        found = latest_checkpoint(job.checkpoints, job.data.identity)  # none, or a whole one: never garbage
        assert found is None or (0 <= found.epoch <= TRAIN_EPOCHS and len(found.history) == found.epoch), where
        if outcome == "finished":
            load_artifact(job.artifact)  # a finished run's model is whole
        result = train.main(spark, config)  # the plain re-run resumes (or finds the run done) and completes
        assert result.epochs_completed == TRAIN_EPOCHS, where
        history = [json.loads(x)["epoch"] for x in Path(job.metrics_file).read_text().splitlines()]
        assert history == list(range(1, TRAIN_EPOCHS + 1)), where  # every epoch once, whatever failed
        _, meta = load_artifact(job.artifact)
        assert meta.manifest_hash == job.data.identity, where
        shutil.rmtree(workdir)

