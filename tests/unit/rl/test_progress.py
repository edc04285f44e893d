"""The console line ``dlpipe rl`` prints per iteration."""
from __future__ import annotations

import dataclasses
import io

from pipelines.rl.checkpoint import IterationRecord
from pipelines.rl.report import IterationProgress

RECORD = IterationRecord(iteration=3, env_steps=24576, episodes=40, mean_return=169.125, mean_length=169.125,
                         lr=0.001, rollout_s=0.37, update_s=0.26, env_steps_per_s=22076.4,
                         losses={"policy_loss": -0.0028, "value_loss": 40.297, "entropy": 0.587})


def test_one_line_per_iteration_with_return_losses_and_throughput():
    out = io.StringIO()
    IterationProgress(25, out)(RECORD)
    assert out.getvalue() == ("iteration 3/25: return 169.1 (length 169.1, 40 episodes) policy_loss -0.0028 "
                              "value_loss 40.297 entropy 0.587 | 24576 env steps, 22076/s (rollout 0.37 s, "
                              "update 0.26 s)\n")


def test_an_iteration_without_a_finished_episode_says_so():
    out = io.StringIO()
    IterationProgress(25, out)(dataclasses.replace(RECORD, episodes=0, mean_return=None, mean_length=None))
    assert "return n/a (no episode ended)" in out.getvalue()


def test_the_record_keeps_its_flat_file_shape():
    flat = RECORD.to_dict()
    assert flat["policy_loss"] == -0.0028 and flat["iteration"] == 3 and "losses" not in flat
    assert IterationRecord.from_dict(flat) == RECORD
