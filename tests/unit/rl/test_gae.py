"""GAE over partial episodes: a hand-computed example, truncation bootstrap, termination, episode stats."""
from __future__ import annotations

import numpy as np
import pytest

from pipelines.rl.gae import gae

GAMMA = LAM = 0.5


def _columns(*envs):
    return np.stack(envs, axis=1).astype(float)


def test_gae_matches_the_hand_computed_example():
    # 3 steps, 3 envs with rewards 1 and values 1, 2, 3: env 0 runs on (the last step bootstraps
    # V=4), env 1 is truncated at step 1 (its true final obs is worth 10, not the reset obs's 3),
    # env 2 terminates at step 1 (no bootstrap at all).
    rewards = _columns([1, 1, 1], [1, 1, 1], [1, 1, 1])
    values = _columns([1, 2, 3], [1, 2, 3], [1, 2, 3])
    next_values = _columns([2, 3, 4], [2, 10, 4], [2, 99, 4])
    terminated = _columns([0, 0, 0], [0, 0, 0], [0, 1, 0]).astype(bool)
    truncated = _columns([0, 0, 0], [0, 1, 0], [0, 0, 0]).astype(bool)

    advantages, returns = gae(rewards, values, next_values, terminated, truncated, GAMMA, LAM)

    # deltas env 0: 1+.5*2-1=1, 1+.5*3-2=.5, 1+.5*4-3=0; A = delta + .25 * A_next
    # env 1: 1, 1+.5*10-2=4 (episode cut after it), 0; env 2: 1, 1-2=-1 (cut), 0
    expected = _columns([1.125, 0.5, 0.0], [2.0, 4.0, 0.0], [0.75, -1.0, 0.0])
    np.testing.assert_allclose(advantages, expected)
    np.testing.assert_allclose(returns, expected + values)
    assert advantages.dtype == returns.dtype == np.float32


def test_gae_with_lambda_one_and_no_bootstrap_is_the_discounted_return_minus_value():
    rewards = np.ones((4, 1))
    values = np.full((4, 1), 0.25)
    terminated = np.array([[0], [0], [0], [1]], bool)
    _, returns = gae(rewards, values, values.copy(), terminated, np.zeros((4, 1), bool), 0.9, 1.0)
    np.testing.assert_allclose(returns[:, 0], [1 + .9 + .81 + .729, 1 + .9 + .81, 1 + .9, 1], rtol=1e-6)


def test_gae_rejects_arrays_of_different_shapes():
    with pytest.raises(ValueError, match="one shape"):
        gae(np.ones((3, 2)), np.ones((3, 2)), np.ones((3, 1)), np.zeros((3, 2)), np.zeros((3, 2)), 0.9, 0.9)
