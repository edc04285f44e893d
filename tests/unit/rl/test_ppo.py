"""The PPO pieces: the policy model's clipped loss, minibatching, the learning-rate schedule."""
from __future__ import annotations

import math

import pytest
import torch

import models
from pipelines.rl.ppo import UpdateSettings, annealed_lr, minibatch_indices, ppo_update


def _policy(**params):
    torch.manual_seed(0)
    return models.build("mlp_policy", feature_shape=(4,), num_classes=2, **params)


def _batch(policy, n=16, log_ratio=0.0):
    g = torch.Generator().manual_seed(1)
    obs = torch.randn(n, 4, generator=g)
    out = policy.act(obs, generator=g)
    return {"features": obs, "actions": out["actions"], "logprobs": out["logprobs"] - log_ratio,
            "advantages": torch.linspace(-1, 2, n), "returns": out["values"] + 1.0}


def test_at_ratio_one_the_losses_are_the_plain_policy_gradient_and_value_mse():
    policy = _policy()
    batch = _batch(policy)
    loss, metrics = policy.loss(batch)
    assert metrics["policy_loss"].item() == pytest.approx(-batch["advantages"].mean().item(), abs=1e-6)
    assert metrics["value_loss"].item() == pytest.approx(0.5, abs=1e-5)  # returns = values + 1
    assert metrics["approx_kl"].item() == pytest.approx(0.0, abs=1e-6)
    assert metrics["clip_fraction"].item() == 0.0
    assert 0 < metrics["entropy"].item() <= math.log(2) + 1e-6
    expected = metrics["policy_loss"] + 0.5 * metrics["value_loss"] - 0.01 * metrics["entropy"]
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_a_ratio_beyond_the_clip_with_a_positive_advantage_gives_no_policy_gradient():
    policy = _policy(vf_coef=0.0, ent_coef=0.0)
    batch = _batch(policy, log_ratio=math.log(2.0))  # new / old = 2 for every step
    batch["advantages"] = torch.ones(16)
    loss, metrics = policy.loss(batch)
    assert metrics["policy_loss"].item() == pytest.approx(-1.2, abs=1e-5)  # clipped at 1 + 0.2
    assert metrics["clip_fraction"].item() == 1.0
    loss.backward()
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in policy.parameters())


def test_minibatches_cover_the_batch_once_in_a_seeded_order():
    parts = minibatch_indices(10, 3, torch.Generator().manual_seed(0))
    assert [len(p) for p in parts] == [4, 3, 3]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    again = minibatch_indices(10, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(parts, again))


def test_learning_rate_anneals_linearly_when_asked():
    assert [annealed_lr(1.0, i, 4, True) for i in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert annealed_lr(1.0, 3, 4, False) == 1.0


def test_ppo_update_lowers_the_value_loss_on_a_fixed_batch():
    policy = _policy()
    batch = _batch(policy, n=64)
    before = policy.loss(batch)[1]["value_loss"].item()
    optimizer = torch.optim.Adam(policy.parameters(), lr=1e-2)
    metrics = ppo_update(policy, optimizer, batch, UpdateSettings(epochs=4, minibatches=4), torch.Generator().manual_seed(0))
    assert set(metrics) == {"loss", "policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction"}
    assert policy.loss(batch)[1]["value_loss"].item() < before


def test_policy_predict_matches_its_declared_outputs():
    policy = _policy()
    obs = torch.randn(5, 4)
    out = policy.predict(obs)
    assert {k: (str(v.dtype), tuple(v.shape)) for k, v in out.items()} == {
        "prediction": ("torch.int64", (5,)), "probabilities": ("torch.float32", (5, 2)), "value": ("torch.float32", (5,))}
    greedy = policy.act(obs, greedy=True)
    assert torch.equal(out["prediction"], greedy["actions"]) and torch.allclose(out["value"], greedy["values"])
