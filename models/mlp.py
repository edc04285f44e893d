"""Multi-layer perceptron classifier; flattens features of any shape."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.base import Classifier


@dataclass
class MLPConfig:
    hidden_sizes: tuple[int, ...] = (256, 128)  # width of each hidden layer, input side first
    dropout: float = 0.1  # dropout after each hidden activation; 0 disables it

    def __post_init__(self) -> None:
        if not self.hidden_sizes or any(h <= 0 for h in self.hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive widths, got {self.hidden_sizes}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class MLP(Classifier):
    """Linear -> ReLU -> Dropout per hidden layer, then a linear layer to the class logits."""

    name: ClassVar[str] = "mlp"
    config_class: ClassVar[type] = MLPConfig

    def __init__(self, config: MLPConfig, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(config, feature_shape, num_classes)
        layers: list[nn.Module] = [nn.Flatten()]
        width = self.num_features
        for hidden in config.hidden_sizes:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def pipeline_parts(self) -> list[nn.Module]:
        return list(self.net)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(features)  # (B, *feature_shape) -> (B, num_classes)
        return logits
