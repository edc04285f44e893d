"""Small LeNet-like convolutional classifier for (C, H, W) images."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.base import Classifier, Embeds, eval_mode
from models.layers import conv_stack, require_image_shape


@dataclass
class CNNConfig:
    channels: tuple[int, ...] = (32, 64)  # output channels of each conv block (conv, ReLU, 2x2 pool)
    pooled_size: int = 2  # conv features are average-pooled to pooled_size x pooled_size,
    # which keeps the head the same size (and small) for 8x8 and 28x28 inputs
    hidden: int = 64  # width of the fully connected layer before the logits
    dropout: float = 0.1  # dropout before the last layer; 0 disables it

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.pooled_size <= 0 or self.hidden <= 0:
            raise ValueError(f"pooled_size and hidden must be positive, got {self.pooled_size}, {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


class CNN(Classifier):
    """conv blocks -> adaptive average pool -> Linear -> ReLU -> Dropout -> Linear."""

    name: ClassVar[str] = "cnn"
    config_class: ClassVar[type] = CNNConfig
    capabilities: ClassVar[frozenset[type]] = frozenset({Embeds})

    def __init__(self, config: CNNConfig, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(config, feature_shape, num_classes)
        in_channels, _, _ = require_image_shape(self.name, self.feature_shape)
        self.features = conv_stack(in_channels, config.channels)
        self.pool = nn.AdaptiveAvgPool2d(config.pooled_size)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.channels[-1] * config.pooled_size**2, config.hidden),
            nn.ReLU(),
            nn.Dropout(config.dropout),
            nn.Linear(config.hidden, num_classes),
        )

    def pipeline_parts(self) -> list[nn.Module]:
        return [*self.features, self.pool, *self.head]

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """The hidden layer's activations (B, hidden): the feature space sample quality is measured in."""
        self.check_features(features)
        with eval_mode(self), torch.no_grad():
            hidden: torch.Tensor = self.head[:3](self.pool(self.features(features)))  # Flatten, Linear, ReLU
            return hidden

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.features(features)  # (B, C, H, W) -> (B, channels[-1], H', W')
        x = self.pool(x)  # (B, channels[-1], pooled_size, pooled_size)
        logits: torch.Tensor = self.head(x)  # (B, num_classes)
        return logits
