"""Small building blocks shared by the convolutional models (cnn, autoencoder, vae)."""

from __future__ import annotations

import math

import torch
from torch import nn


def require_image_shape(model_name: str, feature_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """Return feature_shape as (C, H, W), or raise ValueError saying what to use instead."""
    if len(feature_shape) != 3:
        raise ValueError(
            f"model {model_name!r} needs image features of shape (C, H, W), got feature_shape="
            f"{tuple(feature_shape)}; reshape the features to images (e.g. (1, 8, 8)) or use "
            "the 'mlp' model, which accepts any shape"
        )
    c, h, w = feature_shape
    return c, h, w


def conv_stack(in_channels: int, channels: tuple[int, ...]) -> nn.Sequential:
    """[3x3 conv (padding 1) -> ReLU -> 2x2 max pool] per entry of `channels`.

    padding=1 keeps H, W through each conv and ceil_mode pooling handles odd sizes
    (28 -> 14 -> 7 -> 4), so one stack fits both 8x8 and 28x28 images.
    """
    layers: list[nn.Module] = []
    for out_channels in channels:
        layers += [
            nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        in_channels = out_channels
    return nn.Sequential(*layers)


def output_size(module: nn.Module, feature_shape: tuple[int, ...]) -> int:
    """Elements per example that `module` outputs for one input of `feature_shape` (dry run)."""
    with torch.no_grad():
        out = module(torch.zeros(1, *feature_shape))
    return math.prod(out.shape[1:])
