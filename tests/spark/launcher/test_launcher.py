"""The barrier-mode Horovod launcher on local[2]: real Spark, real Horovod over Gloo."""
from __future__ import annotations

import time

import pytest

from pipelines.launcher import LaunchError, run_horovod


def test_two_ranks_allreduce_the_correct_sum(spark):
    result = run_horovod(spark, "pipelines.launcher.smoke:allreduce_sum", {"scale": 10}, num_workers=2)
    # ranks contribute 10 and 20
    assert result["sum"] == [30.0, 30.0, 30.0, 30.0]
    assert result["size"] == 2
    assert result["threads"] == 1  # spark.task.cpus = 1 in local[2]


def test_events_reach_the_driver_with_the_rank(spark):
    seen = []
    run_horovod(spark, "pipelines.launcher.smoke:allreduce_sum", {}, num_workers=2,
                on_event=lambda rank, event: seen.append((rank, event["kind"])))
    assert sorted(seen) == [(0, "started"), (1, "started")]


def test_a_rank_that_raises_fails_the_stage_with_its_error(spark):
    started = time.monotonic()
    with pytest.raises(LaunchError) as err:
        run_horovod(spark, "rank_faults:raise_on_rank", {"rank": 1}, num_workers=2,
                    failure_timeout_s=30)
    assert time.monotonic() - started < 60
    message = str(err.value)
    assert "rank 1" in message
    assert "injected failure on rank 1" in message


def test_more_ranks_than_slots_is_a_clear_error(spark):
    with pytest.raises(LaunchError, match="task slots"):
        run_horovod(spark, "pipelines.launcher.smoke:allreduce_sum", {}, num_workers=3,
                    start_timeout_s=20)


def test_a_rank_stuck_in_a_collective_ends_within_the_failure_timeout(spark):
    started = time.monotonic()
    with pytest.raises(LaunchError) as err:
        run_horovod(spark, "rank_faults:stall_on_rank", {"rank": 1}, num_workers=2,
                    failure_timeout_s=10)
    assert time.monotonic() - started < 60
    assert "rank 0" in str(err.value) and "no progress for 10s" in str(err.value)
