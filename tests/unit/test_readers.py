"""Shared read leases: superseded data stays while a live job reads it (local disk; the same
objects on S3 go through the same storage calls)."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from pipelines import dataset
from pipelines.etl.job import remove_uncommitted
from pipelines.publish import committed_folder, publishing
from pipelines.readers import READERS_DIR, ReadLease, live_readers
from pipelines import storage


def _supersede(root: str) -> str:
    """Commit a new single version (as a full ETL does) and clean up; the old version's folder."""
    head = dataset.read_head(root)
    old = head.versions[-1].folder
    new = "v000001-newtoken"
    Path(root, new).mkdir()
    dataset.write_head(root, [dataset.VersionEntry(1, new, "t")], after=head.number)
    remove_uncommitted(root)
    return old


@pytest.fixture
def root(tmp_path) -> str:
    from testkit import publish_dataset

    location = str(tmp_path / "ds")
    publish_dataset(location, {"train": 8}, rows_per_row_group=4)
    return location


def test_a_superseded_version_stays_while_its_reader_runs_and_goes_after(root, capsys):
    with ReadLease(root, "dlpipe train (run r1)", ttl_s=30) as reader:
        reader.name(dataset.view_folders(dataset.open_dataset(root)))
        old = _supersede(root)
        assert Path(root, old).is_dir()  # still readable by the training
        assert f"etl: kept the superseded {old} (" in capsys.readouterr().out
        assert "dlpipe train (run r1)" in live_readers(root).holders_of(old)[0]
    remove_uncommitted(root)  # the next ETL, after the training ended
    assert not Path(root, old).exists() and sorted(p.name for p in Path(root).iterdir() if p.is_dir()) == [
        READERS_DIR, "v000001-newtoken"]


def test_a_reader_that_has_not_named_its_versions_yet_protects_every_folder(root):
    with ReadLease(root, "dlpipe infer (run s1)", ttl_s=30):  # registered, head not read yet
        old = _supersede(root)
        assert Path(root, old).is_dir()


def test_an_expired_or_dead_readers_record_is_removed_and_protects_nothing(root):
    readers = Path(root, READERS_DIR)
    readers.mkdir()
    base = {"job": "dlpipe train (run gone)", "host": "h", "pid": 1, "machine": "", "started": 0.0, "known": False,
            "folders": []}
    (readers / "expired.json").write_text(json.dumps({**base, "expires_at": time.time() - 1}))
    from pipelines.lease import this_machine

    (readers / "dead.json").write_text(json.dumps({**base, "pid": 999999, "machine": this_machine(),
                                                   "expires_at": time.time() + 600}))
    old = _supersede(root)
    assert not Path(root, old).exists() and list(readers.iterdir()) == []


def test_an_unreadable_reader_record_protects_everything(root):
    readers = Path(root, READERS_DIR)
    readers.mkdir()
    (readers / "future.json").write_text('{"job": "x", "a_field_of_a_later_version": 1}')
    old = _supersede(root)
    assert Path(root, old).is_dir()


def test_a_republished_output_keeps_the_attempt_a_live_job_reads(tmp_path, capsys):
    target = str(tmp_path / "predictions")
    with publishing(target) as attempt:
        storage.write_text(storage.join(attempt.folder, "part-0.parquet"), "first")
    first = committed_folder(target)
    with ReadLease(target, "dlpipe etl (run e1)", ttl_s=30) as reader:
        reader.name([storage.name(first)])
        with publishing(target) as attempt:
            storage.write_text(storage.join(attempt.folder, "part-0.parquet"), "second")
        assert Path(first).is_dir() and "dlpipe etl (run e1) (pid" in capsys.readouterr().out
    with publishing(target) as attempt:
        storage.write_text(storage.join(attempt.folder, "part-0.parquet"), "third")
    assert not Path(first).exists()
