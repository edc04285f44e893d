"""The actor side without Spark: seeding, the Arrow rows, bootstrap values, environment checks."""
from __future__ import annotations

import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import models
from pipelines.config import ConfigError
from pipelines.rl.rollout import (
    ActorState, RolloutSpec, actor_seeds, env_spaces, policy_from_bytes, policy_to_bytes, rollout, run_episodes, schema,
)
from testkit import REPO_ROOT

SHORT = "DlpipeTestShortCartPole-v0"  # CartPole with a 7-step time limit: truncations in a short rollout
if SHORT not in gym.registry:
    gym.register(SHORT, entry_point="gymnasium.envs.classic_control.cartpole:CartPoleEnv", max_episode_steps=7)


def _policy():
    torch.manual_seed(0)
    return models.build("mlp_policy", feature_shape=(4,), num_classes=2)


def test_actor_seeds_are_reproducible_and_differ_by_actor_and_iteration():
    assert actor_seeds(0, 1, 2, 3) == actor_seeds(0, 1, 2, 3)
    resets = {tuple(actor_seeds(0, it, actor, 3)[0]) for it in range(3) for actor in range(3)}
    actions = {actor_seeds(0, it, actor, 3)[1] for it in range(3) for actor in range(3)}
    assert len(resets) == 3 and len(actions) == 9  # environments by actor; actions by actor and iteration


def test_rollout_rows_are_reproducible_and_ordered_by_env_then_step():
    policy = _policy()
    spec = RolloutSpec("CartPole-v1", envs_per_actor=3, steps_per_env=20, seed=5)
    first, again = rollout(spec, policy, 0, 1), rollout(spec, policy, 0, 1)
    a, b = first.table(), again.table()
    assert a.schema == schema() and a.num_rows == 60
    assert a.equals(b)  # a retried task repeats the same rollout exactly, and leaves the same environments
    assert np.array_equal(ActorState.from_bytes(first.state).obs, ActorState.from_bytes(again.state).obs)
    assert rollout(spec, policy, 1, 1, first.state).table().column("obs")[0] != a.column("obs")[0]  # goes on
    assert set(a.column("actor").to_pylist()) == {1}
    assert a.column("env").to_pylist() == [e for e in range(3) for _ in range(20)]
    assert a.column("step").to_pylist() == list(range(20)) * 3


def test_next_value_bootstraps_at_time_limits_and_not_at_terminations():
    policy = _policy()
    rows = rollout(RolloutSpec(SHORT, 4, 30, seed=0), policy, 0, 0).table().to_pydict()
    value, next_value = np.array(rows["value"]), np.array(rows["next_value"])
    term, trunc = np.array(rows["terminated"]), np.array(rows["truncated"])
    step = np.array(rows["step"])
    assert (trunc & ~term).sum() >= 4  # every env hit the 7-step limit at least once
    for i in np.flatnonzero(step < 29):  # rows i and i + 1 are consecutive steps of one env
        if term[i]:
            assert next_value[i] == 0.0
        elif trunc[i]:  # the true final observation's value, not the reset observation's
            assert next_value[i] != value[i + 1]
        else:
            assert next_value[i] == value[i + 1]
    last = np.flatnonzero(step == 29)
    assert all(next_value[i] != 0.0 for i in last if not term[i])  # the rollout's end bootstraps


def test_episodes_longer_than_a_rollout_go_on_and_are_counted_whole_once_they_end():
    """CartPole episodes last more than 5 steps: each rollout continues the last one's environments."""
    policy = _policy()
    spec = RolloutSpec("CartPole-v1", envs_per_actor=2, steps_per_env=5, seed=0)
    state, returns, lengths, steps = None, [], [], 0
    for iteration in range(40):
        result = rollout(spec, policy, iteration, 0, state)
        state, steps = result.state, steps + 2 * 5
        returns += result.returns
        lengths += result.lengths
    assert returns and all(n > 5 for n in lengths)  # whole episodes, longer than any one rollout
    assert returns == [float(n) for n in lengths]  # CartPole: reward 1 a step, counted from the episode's start
    unfinished = ActorState.from_bytes(state).episode_length.sum()
    assert sum(lengths) + unfinished == steps  # every step belongs to one episode, ended or still running


def test_policy_bytes_round_trip():
    policy = _policy()
    again = policy_from_bytes(policy_to_bytes(policy))
    obs = torch.randn(3, 4)
    assert torch.equal(again.predict(obs)["probabilities"], policy.predict(obs)["probabilities"])


def test_run_episodes_plays_whole_episodes_and_records_them():
    played = run_episodes(lambda obs: np.zeros(len(obs), np.int64), SHORT, 3, seed=0, record=True)
    assert len(played["returns"]) == 3 and all(1 <= n <= 7 for n in played["lengths"])
    assert played["returns"] == [float(n) for n in played["lengths"]]  # CartPole: reward 1 per step
    assert len(played["obs"]) == len(played["action"]) == sum(played["lengths"])
    assert sorted(zip(played["episode"], played["step"])) == [(e, s) for e in range(3) for s in range(played["lengths"][e])]


def test_env_spaces_of_cartpole():
    assert env_spaces("CartPole-v1") == ((4,), 2)


@pytest.mark.parametrize("env_id, message", [("NoSuchEnv-v0", "is not a registered Gymnasium environment"),
                                             ("Pendulum-v1", "Box observations and Box actions")])
def test_env_spaces_names_the_config_key_for_unusable_environments(env_id, message):
    with pytest.raises(ConfigError, match=rf"config key 'rl.env_id' = '{env_id}' .*{message}"):
        env_spaces(env_id)


def test_the_actor_side_imports_without_pyspark():
    code = "import pipelines.rl.rollout, sys; print(sorted(m for m in sys.modules if m.split('.')[0] == 'pyspark'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == "[]"
