"""Actor-critic policy for discrete actions (PPO), behind the same contract as the other models.

``forward(obs) -> (logits, value)``; ``loss(batch)`` is PPO's clipped objective on a batch of
collected steps (``features`` = observations, ``actions``, ``logprobs`` (behaviour policy),
``advantages``, ``returns``); ``predict`` gives the greedy action, the action probabilities and the
state value. ``act`` samples actions while collecting rollouts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.base import POLICY, Acts, DlpipeModel, OutputSchema

Batch = dict[str, torch.Tensor]


@dataclass
class PolicyConfig:
    hidden_sizes: tuple[int, ...] = (64, 64)  # tanh layers of the actor and (separately) the critic
    clip_coef: float = 0.2  # PPO ratio clip: the objective ignores ratios outside [1 - c, 1 + c]
    vf_coef: float = 0.5  # weight of the value loss in the total loss
    ent_coef: float = 0.01  # weight of the entropy bonus (exploration)

    def __post_init__(self) -> None:
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if not 0.0 < self.clip_coef < 1.0:
            raise ValueError(f"clip_coef must be in (0, 1), got {self.clip_coef}")
        if self.vf_coef < 0 or self.ent_coef < 0:
            raise ValueError(f"vf_coef and ent_coef must be >= 0, got {self.vf_coef}, {self.ent_coef}")


def _mlp(width: int, hidden: tuple[int, ...], out: int, out_gain: float) -> nn.Sequential:
    """tanh MLP with orthogonal init (gain sqrt(2) inside, ``out_gain`` on the last layer), as PPO uses."""
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [_init(nn.Linear(width, h), math.sqrt(2)), nn.Tanh()]
        width = h
    layers.append(_init(nn.Linear(width, out), out_gain))
    return nn.Sequential(*layers)


def _init(layer: nn.Linear, gain: float) -> nn.Linear:
    nn.init.orthogonal_(layer.weight, gain)
    nn.init.zeros_(layer.bias)
    return layer


class _Heads(nn.Module):
    """Actor and critic side by side on the same (flat) input: ``x -> (logits, value)``."""

    def __init__(self, actor: nn.Module, critic: nn.Module) -> None:
        super().__init__()
        self.actor = actor
        self.critic = critic

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.actor(x), self.critic(x).squeeze(-1)  # (B, A), (B,)


class MLPPolicy(DlpipeModel):
    """Separate tanh MLPs for the action logits and the state value (CleanRL's PPO agent)."""

    name: ClassVar[str] = "mlp_policy"
    config_class: ClassVar[type] = PolicyConfig
    config: PolicyConfig
    task: ClassVar[str] = POLICY
    capabilities: ClassVar[frozenset[type]] = frozenset({Acts})

    def __init__(self, config: PolicyConfig, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(config, feature_shape, num_classes)
        if self.num_classes < 2:
            raise ValueError(f"policy {self.name!r} needs >= 2 actions, got {num_classes}")
        hidden = tuple(config.hidden_sizes)
        self.flatten = nn.Flatten()
        # Small last-layer gain on the actor: near-uniform actions at the start (exploration).
        self.heads = _Heads(_mlp(self.num_features, hidden, self.num_classes, 0.01),
                            _mlp(self.num_features, hidden, 1, 1.0))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits_values: tuple[torch.Tensor, torch.Tensor] = self.heads(self.flatten(features))
        return logits_values  # (B, *feature_shape) -> (B, A), (B,)

    def pipeline_parts(self) -> list[nn.Module]:
        return [self.flatten, self.heads]

    def output_loss(self, output: tuple[torch.Tensor, torch.Tensor], batch: Batch) -> tuple[torch.Tensor, Batch]:
        """PPO: clipped surrogate + vf_coef * value MSE - ent_coef * entropy.

        ``batch``: ``actions`` (B,) int64, ``logprobs`` (B,) of the behaviour policy, ``advantages``
        (B,) (already normalized if wanted), ``returns`` (B,) = advantages + old values.
        """
        logits, value = output  # (B, A), (B,)
        log_probs = F.log_softmax(logits, dim=1)
        new_logp = log_probs.gather(1, batch["actions"].long().unsqueeze(1)).squeeze(1)  # (B,)
        log_ratio = new_logp - batch["logprobs"]
        ratio = log_ratio.exp()
        adv, clip = batch["advantages"], self.config.clip_coef
        policy_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)).mean()
        value_loss = 0.5 * (value - batch["returns"]).pow(2).mean()
        entropy = -(log_probs.exp() * log_probs).sum(dim=1).mean()
        loss = policy_loss + self.config.vf_coef * value_loss - self.config.ent_coef * entropy
        with torch.no_grad():
            approx_kl = ((ratio - 1) - log_ratio).mean()  # the low-variance estimator (Schulman)
            clip_fraction = ((ratio - 1).abs() > clip).float().mean()
        return loss, {"policy_loss": policy_loss.detach(), "value_loss": value_loss.detach(),
                      "entropy": entropy.detach(), "approx_kl": approx_kl, "clip_fraction": clip_fraction}

    def act(self, features: torch.Tensor, generator: torch.Generator | None = None,
            greedy: bool = False) -> Batch:
        """Actions for a batch of observations (sampled with ``generator``, or greedy), with their
        log-probabilities and the state values; no gradients."""
        self.check_features(features)
        with torch.no_grad():
            logits, value = self(features)
            log_probs = F.log_softmax(logits, dim=1)
            if greedy:
                actions = logits.argmax(dim=1)
            else:
                actions = torch.multinomial(log_probs.exp(), 1, generator=generator).squeeze(1)
            return {"actions": actions, "logprobs": log_probs.gather(1, actions.unsqueeze(1)).squeeze(1),
                    "values": value}

    def value(self, features: torch.Tensor) -> torch.Tensor:
        """State values (B,) without gradients: the bootstrap at a truncation or a rollout's end."""
        self.check_features(features)
        with torch.no_grad():
            out: tuple[torch.Tensor, torch.Tensor] = self(features)
            return out[1]

    def _predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        logits, value = self(features)
        probabilities = torch.softmax(logits.float(), dim=1)
        return {"prediction": probabilities.argmax(dim=1), "probabilities": probabilities, "value": value.float()}

    def output_schema(self) -> OutputSchema:
        return {"prediction": ("int64", ()), "probabilities": ("float32", (self.num_classes,)),
                "value": ("float32", ())}
