"""How many ranks an elastic launch gets, whether a failed launch made progress, and how a loss is named
(pipelines.train.world and the driver's reading of Spark's errors; Spark's slot count is set here)."""
from __future__ import annotations

import time

import pytest

from testkit import make_config
from pipelines.train import world
from pipelines.train.driver import _lost_node
from pipelines.train.world import NotEnoughSlots, Progress, world_size


def _train(tmp_path, workers: str):
    return make_config(tmp_path, f"train.num_workers={workers}").train


@pytest.mark.parametrize("slots, expected", [(8, 4), (4, 4), (3, 3), (2, 2), (None, 4)])
def test_an_elastic_launch_takes_the_slots_there_are_within_its_range(tmp_path, monkeypatch, slots, expected):
    monkeypatch.setattr(world, "task_slots", lambda sc: slots)
    assert world_size(None, _train(tmp_path, "2..4"), wait_s=0) == expected


def test_a_fixed_size_launch_does_not_ask(tmp_path, monkeypatch):
    monkeypatch.setattr(world, "task_slots", lambda sc: pytest.fail("a fixed-size run asked Spark for slots"))
    assert world_size(None, _train(tmp_path, "3"), wait_s=0) == 3


def test_below_the_minimum_it_waits_then_fails_saying_what_there_was(tmp_path, monkeypatch):
    monkeypatch.setattr(world, "task_slots", lambda sc: 1)
    monkeypatch.setattr(world, "POLL_S", 0.05)
    started = time.monotonic()
    with pytest.raises(NotEnoughSlots, match=r"runs 1 task\(s\) at once, below the elastic minimum of "
                                             r"train.num_workers=2..4, and stayed so for 0 s"):
        world_size(None, _train(tmp_path, "2..4"), wait_s=0.3)
    assert 0.3 <= time.monotonic() - started < 5


def test_slots_that_come_back_during_the_wait_are_taken(tmp_path, monkeypatch):
    answers = iter([1, 1, 3])
    monkeypatch.setattr(world, "task_slots", lambda sc: next(answers))
    monkeypatch.setattr(world, "POLL_S", 0.01)
    assert world_size(None, _train(tmp_path, "2..4"), wait_s=10) == 3


def test_progress_is_a_newer_checkpoint_by_position(tmp_path):
    progress = Progress(str(tmp_path))
    progress.mark()
    assert not progress.advanced() and progress.describe() == "the start"
    (tmp_path / "epoch-0002.pt").write_bytes(b"x")
    assert progress.advanced() and progress.describe() == "epoch 3"
    progress.mark()
    (tmp_path / "epoch-0002.step-000040.pt").write_bytes(b"x")
    assert progress.advanced() and progress.describe() == "epoch 3 step 40"


@pytest.mark.parametrize("error, lost", [
    ("barrier stage failed: executor 0 was lost (unrelated to the running tasks): worker lost: 127.0.0.1:40371 "
     "got disassociated", True),
    ("Job aborted: ExecutorLostFailure (executor 1 exited caused by one of the running tasks) Reason: Command "
     "exited with code 137", True),
    ("rank 0 was killed by SIGKILL (its log 127.0.0.1:/tmp/dlpipe-ranks/x-rank0.log)", False),
    ("rank 1 failed: DatasetError: part-00000.parquet: not a readable Parquet file", False),
])
def test_a_lost_executor_is_named_a_lost_node_in_any_of_sparks_wordings(error, lost):
    assert _lost_node(error) is lost
