"""Checkpoint files: atomic, newest two kept, the newest chosen, other data refused."""
from __future__ import annotations

import pytest
import torch

from pipelines.train.checkpoint import KEEP, latest_checkpoint, save_checkpoint


def _state(epoch: int, data: str = "hash-a") -> dict:
    return {"epoch": epoch, "model": {"w": torch.full((2,), float(epoch))}, "manifest_hash": data}


def test_the_newest_checkpoint_is_chosen_and_only_the_newest_two_are_kept(tmp_path):
    for epoch in (1, 2, 3, 10):
        save_checkpoint(tmp_path, _state(epoch))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003.pt", "epoch-0010.pt"][-KEEP:]
    state = latest_checkpoint(tmp_path, "hash-a")
    assert state["epoch"] == 10 and state["model"]["w"].tolist() == [10.0, 10.0]


def test_no_folder_or_no_checkpoint_means_start_from_scratch(tmp_path):
    assert latest_checkpoint(tmp_path / "missing", "hash-a") is None
    assert latest_checkpoint(tmp_path, "hash-a") is None


def test_a_checkpoint_made_on_other_data_is_refused_with_the_fix(tmp_path):
    save_checkpoint(tmp_path, _state(1, data="hash-a"))
    with pytest.raises(ValueError, match="different dataset.*new run_id or delete"):
        latest_checkpoint(tmp_path, "hash-b")


def test_a_checkpoint_inside_an_epoch_sorts_after_that_epochs_start_and_before_its_end(tmp_path):
    from pipelines.train.checkpoint import checkpoint_name

    assert checkpoint_name(3) == "epoch-0003.pt" and checkpoint_name(3, 50) == "epoch-0003.step-000050.pt"
    save_checkpoint(tmp_path, {**_state(3), "step": 0})
    save_checkpoint(tmp_path, {**_state(3), "step": 50})
    assert latest_checkpoint(tmp_path, "hash-a")["step"] == 50
    save_checkpoint(tmp_path, {**_state(3), "step": 100})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003.step-000050.pt", "epoch-0003.step-000100.pt"]
    save_checkpoint(tmp_path, _state(4))  # the end of the epoch is newer than any step inside it
    assert latest_checkpoint(tmp_path, "hash-a")["epoch"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch-0003.step-000100.pt", "epoch-0004.pt"]
