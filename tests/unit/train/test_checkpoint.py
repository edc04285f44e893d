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
