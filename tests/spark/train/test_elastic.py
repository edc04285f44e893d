"""Elastic training (``train.num_workers=MIN..MAX``) through the real driver, launcher and ranks in
local mode: a rank killed inside an epoch, the run going on with fewer ranks from the last checkpoint
and growing back when task slots return, every record used once per epoch throughout.

Local mode always has its cores, so these tests set how many task slots Spark reports
(``pipelines.train.world.task_slots``); tests/cluster/test_elastic.py loses and adds real Workers.
"""
from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from pipelines import dataset, events
from pipelines.train import driver as train
from pipelines.train import world
from pipelines.train.driver import TrainError
from rank_faults import CONSUMED, ELASTIC_KILL_AT
from testkit import make_config

ELASTIC = ("train.num_workers=1..2", "train.batch_size=16", "train.epochs=3", "train.checkpoint_every_steps=5",
           "train.failure_timeout_s=30", "train.max_attempts=1")


def _history(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def _records_per_epoch(run_dir: str, resumed_at: list[tuple[int, int]]) -> dict[int, Counter]:
    """The records each epoch trained on, from the ranks' logs: a step a later attempt redid (it
    resumed from an earlier checkpoint, ``resumed_at[a - 1]`` = (epoch, step) attempt a started at)
    counts once, from the attempt that kept it."""
    per_epoch: dict[int, Counter] = {}
    for log in sorted((Path(run_dir) / CONSUMED).glob("attempt-*.rank-*.jsonl")):
        attempt = int(log.name.split(".")[0].split("-")[1])
        redone_after = resumed_at[attempt] if attempt < len(resumed_at) else None
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if redone_after is not None and (entry["epoch"], entry["step"]) > redone_after:
                continue
            per_epoch.setdefault(entry["epoch"], Counter()).update(entry["ids"])
    return per_epoch


@pytest.fixture
def slots(monkeypatch) -> dict[str, int]:
    """The task slots Spark reports to the driver (``["now"]``, 2 to start with), as a test sets them."""
    reported = {"now": 2}
    monkeypatch.setattr(world, "task_slots", lambda sc: reported["now"])
    return reported


@pytest.fixture(scope="module")
def uninterrupted(spark, digits_workdir):
    """An elastic run (1..2 ranks) on 2 ranks throughout, recording the records each rank trains on."""
    config = make_config(digits_workdir, "run_id=elastic-uninterrupted", *ELASTIC)
    result = train.main(spark, config, entry="rank_faults:train_rank_recording_records")
    return config, result


def test_an_uninterrupted_elastic_epoch_uses_every_record_once(uninterrupted, digits_workdir):
    config, result = uninterrupted
    view = dataset.open_dataset(str(digits_workdir / "datasets" / "digits"))
    per_epoch = _records_per_epoch(config.run_dir(), [])
    assert sorted(per_epoch) == [1, 2, 3]
    for epoch, records in per_epoch.items():
        assert sum(records.values()) == view.counts["train"], epoch
        assert records == per_epoch[1], epoch  # the same records every epoch, in another order
    history = _history(config.run_dir())
    assert [h["world_size"] for h in history] == [2, 2, 2]
    assert all(h["samples"] == view.counts["train"] for h in history)
    assert result.last.val["accuracy"] >= 0.85


def test_a_lost_rank_continues_on_fewer_ranks_then_grows_back_with_every_record_once(
        spark, digits_workdir, uninterrupted, slots, capsys):
    """Rank 0 dies at step 8 of epoch 2 (the step-5 checkpoint written) while Spark reports one task
    slot: the run goes on with 1 rank from epoch 2 step 5 without spending train.max_attempts=1,
    grows back to 2 ranks at the checkpoint after epoch 2 when the slot returns, and trains every
    epoch on exactly the uninterrupted run's records, to an accuracy within noise of it."""
    resumed_at: list[tuple[int, int]] = []

    def cluster(event: events.RankEvent) -> None:
        if isinstance(event, events.StepProgress) and (event.epoch, event.step) >= (2, 6) and not resumed_at:
            slots["now"] = 1  # the node goes away with the rank that dies at step 8
        elif isinstance(event, events.Resumed):
            resumed_at.append((event.epochs_done + 1, event.step))
        elif isinstance(event, events.EpochEnded) and event.record.epoch == 2:
            slots["now"] = 2  # it comes back

    config = make_config(digits_workdir, "run_id=elastic-killed", *ELASTIC)
    result = train.main(spark, config, on_event=cluster, entry="rank_faults:train_rank_recording_records_killed")
    out = capsys.readouterr().out
    assert "continuing on 1 rank(s) from epoch 2 step 5" in out, out
    # it grows at the first checkpoint in the store once the slot is back: epoch 3's start or a step of it
    grown = re.search(r"growing to 2 ranks from epoch 3( step (\d+))?\n", out)
    assert grown, out
    assert resumed_at == [(2, 5), (3, int(grown.group(2) or 0))]
    assert result.epochs_completed == 3
    history = _history(config.run_dir())
    assert [h["world_size"] for h in history] == [2, 1, 2]

    clean_config, clean = uninterrupted
    assert _records_per_epoch(config.run_dir(), resumed_at) == _records_per_epoch(clean_config.run_dir(), [])
    assert ELASTIC_KILL_AT[0] == 2  # the epoch whose records the comparison above covers across sizes
    assert result.last.val["accuracy"] == pytest.approx(clean.last.val["accuracy"], abs=0.03)


def test_fewer_slots_than_the_minimum_fail_after_a_bounded_wait(spark, digits_workdir, monkeypatch):
    monkeypatch.setattr(world, "task_slots", lambda sc: 1)
    config = make_config(digits_workdir, "run_id=elastic-below-min", "train.num_workers=2..2",
                         "train.start_timeout_s=3")
    started = time.monotonic()
    with pytest.raises(TrainError, match=r"runs 1 task\(s\) at once, below the elastic minimum of "
                                         r"train.num_workers=2..2, and stayed so for 3 s"):
        train.main(spark, config)
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_ddp_and_fsdp_continue_on_fewer_ranks_resharding_the_state(spark, digits_workdir, uninterrupted, slots,
                                                                     strategy):
    """The same loss under DDP and FSDP (whose state is sharded over the ranks: the checkpoint holds it
    whole and the relaunch shards it over 1 rank): the run finishes, every epoch on the records of
    the uninterrupted (Horovod) run, the order being the same whatever the strategy."""
    resumed_at: list[tuple[int, int]] = []

    def cluster(event: events.RankEvent) -> None:
        if isinstance(event, events.StepProgress) and (event.epoch, event.step) >= (2, 6) and not resumed_at:
            slots["now"] = 1
        elif isinstance(event, events.Resumed):
            resumed_at.append((event.epochs_done + 1, event.step))

    config = make_config(digits_workdir, f"run_id=elastic-{strategy}", *ELASTIC, f"train.strategy={strategy}",
                         "train.epochs=2")
    result = train.main(spark, config, on_event=cluster, entry="rank_faults:train_rank_recording_records_killed")
    assert resumed_at == [(2, 5)]
    assert [h["world_size"] for h in _history(config.run_dir())] == [2, 1]
    clean = _records_per_epoch(uninterrupted[0].run_dir(), [])
    assert _records_per_epoch(config.run_dir(), resumed_at) == {e: clean[e] for e in (1, 2)}
    assert result.last.val["accuracy"] >= 0.85
