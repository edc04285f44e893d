"""Generalized advantage estimation over fixed-length rollouts with partial episodes.

Each rollout row ``t`` holds the step's reward, the value of its observation, and ``next_values[t]``:
the value of the observation that followed it. That is the bootstrap wherever the return does not
end with the step: after a time-limit truncation (the value of the true final observation, not of
the reset one) and after the last step of the rollout (the episode goes on, unseen). A terminated
step has no future: its next value is ignored.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def gae(rewards: NDArray[np.floating[Any]], values: NDArray[np.floating[Any]], next_values: NDArray[np.floating[Any]],
        terminated: NDArray[np.bool_], truncated: NDArray[np.bool_], gamma: float,
        lam: float) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Advantages and returns (``advantages + values``), all arrays shaped (T, N) = (steps, envs).

    delta_t = r_t + gamma * next_value_t * (1 - terminated_t) - value_t
    A_t = delta_t + gamma * lam * (1 - done_t) * A_{t+1}, with A_T = 0 and done = terminated | truncated
    """
    rewards, values, next_values = (np.asarray(a, dtype=np.float64) for a in (rewards, values, next_values))
    terminated, truncated = np.asarray(terminated, dtype=bool), np.asarray(truncated, dtype=bool)
    if not rewards.shape == values.shape == next_values.shape == terminated.shape == truncated.shape:
        raise ValueError(f"gae needs arrays of one shape (T, N), got {rewards.shape}, {values.shape}, "
                         f"{next_values.shape}, {terminated.shape}, {truncated.shape}")
    deltas = rewards + gamma * next_values * ~terminated - values
    carry = gamma * lam * ~(terminated | truncated)  # the next step belongs to the same episode
    advantages = np.zeros_like(rewards)
    running = np.zeros(rewards.shape[1:])
    for t in range(len(rewards) - 1, -1, -1):
        running = deltas[t] + carry[t] * running
        advantages[t] = running
    return advantages.astype(np.float32), (advantages + values).astype(np.float32)
