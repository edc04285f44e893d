"""DCGAN-style generative adversarial network (Goodfellow et al.; Radford et al.) for (C, H, W) images.

Two networks, two optimizers: each training step first updates the discriminator (real batch vs
generated images), then the generator (the non-saturating loss: make the discriminator call its
images real). The model declares both as :class:`~models.base.TrainingPhase` s; strategies give
each its own optimizer and average each one's gradients over the ranks exactly once.

No batch normalization: a rank's statistics would differ from the whole batch's, and a
data-parallel step would then not equal a one-process step on the concatenated batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.base import GENERATOR, Batch, DlpipeModel, OutputSchema, Samples, TrainingPhase, eval_mode
from models.layers import require_image_shape


@dataclass
class GANConfig:
    latent_dim: int = 16  # size of the noise vector z ~ N(0, I) the generator maps to an image
    generator_channels: tuple[int, int] = (64, 32)  # channels after the projection, after the first upsampling
    discriminator_channels: tuple[int, int] = (32, 64)  # channels of the two strided convolutions
    real_target: float = 1.0  # the discriminator's target for real images (< 1: one-sided label smoothing)

    def __post_init__(self) -> None:
        if self.latent_dim <= 0:
            raise ValueError(f"latent_dim must be positive, got {self.latent_dim}")
        for name in ("generator_channels", "discriminator_channels"):
            value = getattr(self, name)
            if len(value) != 2 or any(c <= 0 for c in value):
                raise ValueError(f"{name} must be 2 positive channel counts, got {value}")
        if not 0.5 < self.real_target <= 1.0:
            raise ValueError(f"real_target must be in (0.5, 1], got {self.real_target}")


class Generator(nn.Module):
    """z (B, latent) -> Linear -> (C0, H/4, W/4) -> 2 transposed convs (x2 each) -> (C, H, W)."""

    def __init__(self, latent_dim: int, channels: tuple[int, int], image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        self.start = (channels[0], h // 4, w // 4)
        self.project = nn.Sequential(nn.Linear(latent_dim, channels[0] * (h // 4) * (w // 4)), nn.ReLU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(channels[0], channels[1], kernel_size=4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(channels[1], c, kernel_size=4, stride=2, padding=1),
        )  # linear output: images live in the dataset's normalized space, not in [-1, 1]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        images: torch.Tensor = self.upsample(self.project(z).view(-1, *self.start))
        return images


class Discriminator(nn.Module):
    """(C, H, W) -> 2 strided convs with LeakyReLU -> one logit per image (B,)."""

    def __init__(self, channels: tuple[int, int], image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(
            nn.Conv2d(c, channels[0], kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(channels[0], channels[1], kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(channels[1] * (h // 4) * (w // 4), 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.net(x)  # (B, 1)
        return logits.squeeze(1)


class GAN(DlpipeModel):
    """Generator + discriminator; ``forward`` is the discriminator's logit, ``sample`` the generator."""

    name: ClassVar[str] = "gan"
    config_class: ClassVar[type] = GANConfig
    config: GANConfig
    figures: ClassVar[tuple[str, ...]] = ("samples",)
    task: ClassVar[str] = GENERATOR
    capabilities: ClassVar[frozenset[type]] = frozenset({Samples})
    multi_phase: ClassVar[bool] = True
    pipeline_parallel: ClassVar[bool] = False

    def __init__(self, config: GANConfig, feature_shape: tuple[int, ...], num_classes: int) -> None:
        super().__init__(config, feature_shape, num_classes)
        image_shape = require_image_shape(self.name, self.feature_shape)
        if image_shape[1] % 4 or image_shape[2] % 4:
            raise ValueError(f"model 'gan' needs image sides divisible by 4 (two x2 upsamplings), got "
                             f"feature_shape={self.feature_shape}; resize the images (etl.source.image_shape)")
        self.generator = Generator(config.latent_dim, config.generator_channels, image_shape)
        self.discriminator = Discriminator(config.discriminator_channels, image_shape)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Discriminator logits (B,): how real each image looks."""
        logits: torch.Tensor = self.discriminator(features)
        return logits

    def noise(self, batch: Batch) -> torch.Tensor:
        """z for this batch: ``batch["noise"]`` when given (reproducible steps), else fresh N(0, I)."""
        if "noise" in batch:
            return batch["noise"]
        features = batch["features"]
        return torch.randn(features.shape[0], self.config.latent_dim, device=features.device)

    def discriminator_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Real images toward ``real_target``, generated ones toward 0; the generator is not trained here."""
        real = batch["features"]
        self.check_features(real)
        fake = self.generator(self.noise(batch)).detach()
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake)
        loss = (F.binary_cross_entropy_with_logits(real_logits, torch.full_like(real_logits, self.config.real_target))
                + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits)))
        return loss, {"d_real": torch.sigmoid(real_logits).mean().detach(),
                      "d_fake": torch.sigmoid(fake_logits).mean().detach()}

    def generator_loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Non-saturating: -log D(G(z)), strong gradients while the discriminator wins."""
        logits = self.discriminator(self.generator(self.noise(batch)))
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits)), {}

    def training_phases(self) -> list[TrainingPhase]:
        return [TrainingPhase("discriminator", self.discriminator, self.discriminator_loss),
                TrainingPhase("generator", self.generator, self.generator_loss)]

    def loss(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Validation: both losses on the batch (their sum is ``loss``), no update."""
        d_loss, metrics = self.discriminator_loss(batch)
        g_loss, _ = self.generator_loss(batch)
        return d_loss + g_loss, {"discriminator_loss": d_loss.detach(), "generator_loss": g_loss.detach(), **metrics}

    def output_loss(self, output: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError("the GAN's losses need both networks: see training_phases")

    def pipeline_parts(self) -> list[nn.Module]:
        raise ValueError("model 'gan' trains two networks with two optimizers and cannot be cut into "
                         "pipeline stages: use train.strategy=horovod or ddp")

    def _predict(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"realness": torch.sigmoid(self.discriminator(features))}

    def output_schema(self) -> OutputSchema:
        return {"realness": ("float32", ())}

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """``n`` generated images (n, C, H, W) from z ~ N(0, I)."""
        device = next(self.parameters()).device
        z = torch.randn(n, self.config.latent_dim, generator=generator, device=device)
        with eval_mode(self), torch.no_grad():
            images: torch.Tensor = self.generator(z)
            return images
