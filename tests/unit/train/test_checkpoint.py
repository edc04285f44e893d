"""Checkpoint files: atomic, newest two kept, the newest chosen, other data refused, written off the step loop."""
from __future__ import annotations

import pytest
import torch

from pipelines import checkpoint_store, storage
from pipelines.checkpoint_store import KEEP, CheckpointWriter, checkpoint_name
from pipelines.events import EpochRecord
from pipelines.train.checkpoint import CheckpointMismatch, TrainCheckpoint, latest_checkpoint


def _state(epoch: int, data: str = "hash-a", step: int = 0) -> TrainCheckpoint:
    return TrainCheckpoint(model={"w": torch.full((2,), float(epoch))}, optimizer={}, epoch=epoch, step=step,
                           history=[], manifest_hash=data)


def _save(folder, state: TrainCheckpoint) -> None:
    checkpoint_store.save(str(folder), state.epoch, state.step, state.to_dict())


def _names(folder) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_the_newest_checkpoint_is_chosen_and_only_the_newest_two_are_kept(tmp_path):
    for epoch in (1, 2, 3, 10):
        _save(tmp_path, _state(epoch))
    assert _names(tmp_path) == ["epoch-0003.pt", "epoch-0010.pt"][-KEEP:]
    state = latest_checkpoint(str(tmp_path), "hash-a")
    assert state.epoch == 10 and state.model["w"].tolist() == [10.0, 10.0]


def test_no_folder_or_no_checkpoint_means_start_from_scratch(tmp_path):
    assert latest_checkpoint(str(tmp_path / "missing"), "hash-a") is None
    assert latest_checkpoint(str(tmp_path), "hash-a") is None


def test_a_checkpoint_made_on_other_data_is_refused_with_the_fix(tmp_path):
    _save(tmp_path, _state(1, data="hash-a"))
    with pytest.raises(CheckpointMismatch, match="different dataset.*new run_id, or delete"):
        latest_checkpoint(str(tmp_path), "hash-b")


def test_a_checkpoint_inside_an_epoch_sorts_after_that_epochs_start_and_before_its_end(tmp_path):
    assert checkpoint_name(3) == "epoch-0003.pt" and checkpoint_name(3, 50) == "epoch-0003.step-000050.pt"
    _save(tmp_path, _state(3))
    _save(tmp_path, _state(3, step=50))
    assert latest_checkpoint(str(tmp_path), "hash-a").step == 50
    _save(tmp_path, _state(3, step=100))
    assert _names(tmp_path) == ["epoch-0003.step-000050.pt", "epoch-0003.step-000100.pt"]
    _save(tmp_path, _state(4))  # the end of the epoch is newer than any step inside it
    assert latest_checkpoint(str(tmp_path), "hash-a").epoch == 4
    assert _names(tmp_path) == ["epoch-0003.step-000100.pt", "epoch-0004.pt"]


def test_a_newest_checkpoint_that_does_not_decode_falls_back_to_the_one_before(tmp_path):
    _save(tmp_path, _state(1))
    (tmp_path / "epoch-0002.pt").write_bytes(b"truncated by a disk that lied")
    skipped = []
    state = latest_checkpoint(str(tmp_path), "hash-a", on_skip=lambda where, e: skipped.append(storage.name(where)))
    assert state.epoch == 1 and skipped == ["epoch-0002.pt"]


def test_a_checkpoint_the_store_cannot_read_is_retried_then_stops_the_job_naming_it(tmp_path, monkeypatch):
    """A store hiccup is not a damaged file: no silent fall-back to an older checkpoint (or to none)."""
    _save(tmp_path, _state(1))
    _save(tmp_path, _state(2))
    monkeypatch.setattr(checkpoint_store, "READ_RETRY_S", 0.0)
    calls = []
    real = storage.read_bytes

    def flaky(location: str) -> bytes:
        calls.append(storage.name(location))
        if len(calls) < checkpoint_store.READ_ATTEMPTS:  # fails twice, then the store answers
            raise storage.StorageError(f"{location}: reading failed: no answer from the endpoint in time")
        return real(location)

    monkeypatch.setattr(storage, "read_bytes", flaky)
    assert latest_checkpoint(str(tmp_path), "hash-a").epoch == 2  # retried: the newest, not the one before

    def denied(location: str) -> bytes:
        raise storage.StorageError(f"{location}: reading failed: access denied")

    monkeypatch.setattr(storage, "read_bytes", denied)
    with pytest.raises(checkpoint_store.CheckpointReadError, match=r"epoch-0002.pt could not be read after 3 attempts "
                                                              r"\(.*access denied\): the job stops"):
        latest_checkpoint(str(tmp_path), "hash-a")


def test_after_a_restart_from_an_earlier_position_the_new_checkpoints_are_kept(tmp_path):
    """Epochs 4 and 5 did not decode, so the run went on from epoch 3: its new epoch-4 checkpoint
    replaces the bad ones instead of being pruned as older than them by name."""
    _save(tmp_path, _state(3))
    for bad in ("epoch-0004.pt", "epoch-0005.pt"):
        (tmp_path / bad).write_bytes(b"garbage")
    assert latest_checkpoint(str(tmp_path), "hash-a").epoch == 3
    _save(tmp_path, _state(4))
    assert _names(tmp_path) == ["epoch-0003.pt", "epoch-0004.pt"]
    assert latest_checkpoint(str(tmp_path), "hash-a").model["w"].tolist() == [4.0, 4.0]


def test_the_writer_writes_in_order_in_the_background_and_reports_its_times(tmp_path):
    writer = CheckpointWriter(str(tmp_path))
    for epoch in (1, 2, 3):
        writer.submit(epoch, 0, _state(epoch).to_dict())
    writer.wait()
    assert _names(tmp_path) == ["epoch-0002.pt", "epoch-0003.pt"]
    assert writer.times.count == 3 and writer.times.write_s > 0 and writer.times.serialize_s > 0


def test_a_checkpoint_holds_the_state_as_submitted_though_the_next_step_changes_it_in_place(tmp_path):
    writer = CheckpointWriter(str(tmp_path))
    payload = _state(1).to_dict()
    weights = payload["model"]["w"]
    writer.submit(1, 0, payload)
    weights.add_(100.0)  # the next optimizer step, while the writer serializes on its thread
    writer.wait()
    assert latest_checkpoint(str(tmp_path), "hash-a").model["w"].tolist() == [1.0, 1.0]


def test_a_failed_background_write_is_raised_by_the_next_wait(tmp_path):
    (tmp_path / "file").write_text("in the way")
    writer = CheckpointWriter(str(tmp_path / "file" / "checkpoints"))
    writer.submit(1, 0, _state(1).to_dict())
    with pytest.raises(RuntimeError, match="writing a checkpoint to .*checkpoints failed"):
        writer.wait()


def test_a_checkpoint_of_the_first_format_still_resumes(tmp_path):
    """What older dlpipe versions wrote: a plain dict, history as flat epoch records."""
    record = EpochRecord(epoch=1, loss=0.5, samples=10, samples_per_s=5.0, seconds=2.0, data_wait_fraction=0.1,
                         metrics={"accuracy": 0.8}, val={"loss": 0.6})
    old = {"model": {"w": torch.ones(2)}, "optimizer": {"state": {}}, "epoch": 1, "step": 0, "ranks": [],
           "strategy": "horovod", "history": [record.to_dict()], "config": {}, "manifest_hash": "hash-a"}
    checkpoint_store.save(str(tmp_path), 1, 0, old)
    state = latest_checkpoint(str(tmp_path), "hash-a")
    assert state.history == [record] and state.strategy == "horovod"
