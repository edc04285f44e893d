"""Convolutional variational autoencoder (Kingma & Welling) with a Gaussian likelihood."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from models.autoencoder import ConvEncoder, LinearDecoder
from models.base import OutputSchema, Reconstructor, Reconstructs, Samples, eval_mode, per_sample_mse
from models.layers import require_image_shape


@dataclass
class VAEConfig:
    channels: tuple[int, ...] = (32, 64)  # output channels of each encoder conv block
    latent_dim: int = 8  # size of the latent code z ~ N(0, I) under the prior
    decoder_hidden: int = 128  # width of the decoder's hidden linear layer
    beta: float = 1.0  # weight of the KL term (beta-VAE); 1.0 is the plain ELBO

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must be positive, got {self.channels}")
        if self.latent_dim <= 0 or self.decoder_hidden <= 0:
            raise ValueError(
                f"latent_dim and decoder_hidden must be positive, got {self.latent_dim}, {self.decoder_hidden}"
            )
        if self.beta < 0:
            raise ValueError(f"beta must be >= 0, got {self.beta}")


def split_posterior(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoder output (B, 2 * latent_dim) -> (mu, logvar), each (B, latent_dim)."""
    mu, logvar = h.chunk(2, dim=1)
    # clamped so exp(logvar) cannot overflow early in training
    return mu, logvar.clamp(-10.0, 10.0)


class Reparameterize(nn.Module):
    """Encoder output -> (z, mu, logvar): z sampled in training mode, z = mu in eval mode."""

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = split_posterior(h)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu  # (B, latent_dim)
        return z, mu, logvar


class DecodeKeepingPosterior(nn.Module):
    """(z, mu, logvar) -> (decoder(z), mu, logvar): a last pipeline stage needs mu and logvar for the KL."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder

    def forward(self, z: torch.Tensor, mu: torch.Tensor,
                logvar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.decoder(z), mu, logvar


class VAE(Reconstructor):
    """Encoder -> (mu, logvar) -> reparameterized z -> decoder.

    Loss (negative ELBO up to constants, unit-variance Gaussian likelihood):
    sum of squared error per sample + beta * KL(q(z|x) || N(0, I)), both averaged over the batch.
    In training mode z is sampled; in eval mode z = mu, so validation metrics are deterministic
    and agree with `predict`.
    """

    name: ClassVar[str] = "vae"
    config_class: ClassVar[type] = VAEConfig
    config: VAEConfig
    figures: ClassVar[tuple[str, ...]] = ("reconstructions", "samples")
    capabilities: ClassVar[frozenset[type]] = frozenset({Reconstructs, Samples})

    def __init__(self, config: VAEConfig, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(config, feature_shape, num_classes)
        image_shape = require_image_shape(self.name, self.feature_shape)
        self.encoder = ConvEncoder(image_shape, config.channels, 2 * config.latent_dim)  # -> mu and logvar
        self.decoder = LinearDecoder(config.latent_dim, config.decoder_hidden, image_shape)
        self.reparameterize = Reparameterize()  # no parameters; follows train/eval mode

    def encode(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior parameters (mu, logvar), each (B, latent_dim)."""
        return split_posterior(self.encoder(features))

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction (B, C, H, W), mu, logvar); samples z in training mode, z = mu in eval."""
        z, mu, logvar = self.reparameterize(self.encoder(features))
        return self.decoder(z), mu, logvar

    def pipeline_parts(self) -> list[nn.Module]:
        return [*self.encoder.parts(), self.reparameterize, DecodeKeepingPosterior(self.decoder)]

    def output_loss(self, output: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                    batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        features = batch["features"]
        reconstruction, mu, logvar = output
        squared_error = (reconstruction - features).pow(2).flatten(1)  # (B, C*H*W)
        # KL(N(mu, var) || N(0, 1)) per sample; expm1(v) - v >= 0 is the stable form of exp(v) - 1 - v,
        # and the clamp removes rounding noise so the metric is never negative
        kl = 0.5 * (mu.pow(2) + torch.expm1(logvar) - logvar).clamp_min(0).sum(dim=1)  # (B,)
        loss = squared_error.sum(dim=1).mean() + self.config.beta * kl.mean()
        metrics = {"reconstruction_error": squared_error.mean().detach(), "kl": kl.mean().detach()}
        return loss, metrics

    def _reconstruct(self, features: torch.Tensor) -> torch.Tensor:
        mu, _ = self.encode(features)
        out: torch.Tensor = self.decoder(mu)
        return out

    def _predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, _ = self.encode(features)  # (B, latent_dim)
        return {"latent_mean": mu, "reconstruction_error": per_sample_mse(self.decoder(mu), features)}

    def output_schema(self) -> OutputSchema:
        return {"latent_mean": ("float32", (self.config.latent_dim,)), "reconstruction_error": ("float32", ())}

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """`n` new examples decoded from z ~ N(0, I): (n, *feature_shape)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)  # (n, latent_dim)
        with eval_mode(self), torch.no_grad():
            out: torch.Tensor = self.decoder(z)  # (n, C, H, W)
            return out
