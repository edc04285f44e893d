"""Convolutional autoencoder for (C, H, W) images, trained with mean squared error."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.base import OutputSchema, Reconstructor, per_sample_mse
from models.layers import conv_stack, output_size, require_image_shape


@dataclass
class AutoencoderConfig:
    channels: tuple[int, ...] = (32, 64)  # output channels of each encoder conv block
    latent_dim: int = 16  # size of the bottleneck code
    decoder_hidden: int = 128  # width of the decoder's hidden linear layer

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.latent_dim <= 0 or self.decoder_hidden <= 0:
            raise ValueError(
                f"latent_dim and decoder_hidden must be positive, got {self.latent_dim}, {self.decoder_hidden}"
            )


class ConvEncoder(nn.Module):
    """conv blocks -> flatten -> Linear to `out_features`; the linear size comes from a dry run."""

    def __init__(self, feature_shape: tuple[int, int, int], channels: tuple[int, ...], out_features: int) -> None:
        super().__init__()
        self.convs = conv_stack(feature_shape[0], channels)
        self.proj = nn.Linear(output_size(self.convs, feature_shape), out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(1)  # (B, C, H, W) -> (B, channels[-1] * H' * W')
        out: torch.Tensor = self.proj(x)  # (B, out_features)
        return out

    def parts(self) -> list[nn.Module]:
        """This encoder as a list of layers (pipeline split points)."""
        return [*self.convs, nn.Flatten(), self.proj]


class LinearDecoder(nn.Module):
    """Linear -> ReLU -> Linear to C*H*W, reshaped to the image.

    Linear layers rather than transposed convs, so any (C, H, W) is reproduced exactly
    without per-size output padding; the images here are small (at most 28x28).
    """

    def __init__(self, latent_dim: int, hidden: int, feature_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = feature_shape
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, c * h * w),
            nn.Unflatten(1, (c, h, w)),
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.net(z)  # (B, latent_dim) -> (B, C, H, W)
        return images  # no output activation: inputs are standardized


class Autoencoder(Reconstructor):
    """Deterministic autoencoder: encoder -> latent code -> decoder, MSE loss."""

    name: ClassVar[str] = "autoencoder"
    config_class: ClassVar[type] = AutoencoderConfig

    def __init__(self, config: AutoencoderConfig, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(config, feature_shape, num_classes)
        image_shape = require_image_shape(self.name, self.feature_shape)
        self.encoder = ConvEncoder(image_shape, config.channels, config.latent_dim)
        self.decoder = LinearDecoder(config.latent_dim, config.decoder_hidden, image_shape)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(self.encoder(features))  # (B, C, H, W) -> (B, latent_dim) -> (B, C, H, W)
        return out

    def output_loss(self, output: torch.Tensor,
                    batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss = F.mse_loss(output, batch["features"])  # mean over batch and elements
        return loss, {"reconstruction_error": loss.detach()}

    def pipeline_parts(self) -> list[nn.Module]:
        return [*self.encoder.parts(), *self.decoder.net]

    def _reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self(features)
        return out

    def _predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"reconstruction_error": per_sample_mse(self(features), features)}  # (B,)

    def output_schema(self) -> OutputSchema:
        return {"reconstruction_error": ("float32", ())}
