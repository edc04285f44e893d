"""The PPO learner: epochs of shuffled minibatches over one collected batch, in the driver process.

The loss itself is the policy model's (``models.policy.MLPPolicy.output_loss``); this module owns
the optimisation around it: advantage normalisation per minibatch, gradient-norm clipping, the
learning-rate schedule.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.base import DlpipeModel

Batch = dict[str, torch.Tensor]


@dataclass(frozen=True)
class UpdateSettings:
    """One iteration's optimisation: how many passes, how the batch is cut, the clipping."""

    epochs: int = 4
    minibatches: int = 4
    max_grad_norm: float = 0.5
    normalize_advantages: bool = True


def annealed_lr(base_lr: float, iteration: int, iterations: int, anneal: bool) -> float:
    """Linear decay from ``base_lr`` at iteration 0 to ``base_lr / iterations`` at the last one."""
    return base_lr * (1.0 - iteration / iterations) if anneal else base_lr


def minibatch_indices(size: int, minibatches: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded permutation of ``range(size)`` cut into ``minibatches`` near-equal parts."""
    return list(torch.randperm(size, generator=generator).tensor_split(minibatches))


def ppo_update(model: DlpipeModel, optimizer: torch.optim.Optimizer, batch: Batch, settings: UpdateSettings,
               generator: torch.Generator) -> dict[str, float]:
    """Run ``settings.epochs`` passes of minibatch steps over ``batch``; return the metrics' means.

    ``batch``: ``features`` (B, *obs_shape), ``actions``, ``logprobs``, ``advantages``, ``returns``
    (B,) each. ``generator`` orders the minibatches (seeded per iteration: a resumed run repeats them).
    """
    model.train()
    size = len(batch["actions"])
    totals: dict[str, float] = {}
    steps = 0
    for _ in range(settings.epochs):
        for idx in minibatch_indices(size, settings.minibatches, generator):
            mb = {k: v[idx] for k, v in batch.items()}
            if settings.normalize_advantages and len(idx) > 1:
                adv = mb["advantages"]
                mb["advantages"] = (adv - adv.mean()) / (adv.std() + 1e-8)
            loss, metrics = model.loss(mb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
            optimizer.step()
            for k, v in {"loss": loss.detach(), **metrics}.items():
                totals[k] = totals.get(k, 0.0) + float(v)
            steps += 1
    return {k: v / steps for k, v in totals.items()}
