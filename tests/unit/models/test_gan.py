"""The GAN behind the model contract: two training phases, samples, the discriminator's outputs."""
from __future__ import annotations

import pytest
import torch

import models


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 12, 16)])
def test_generator_and_discriminator_fit_the_image_shape(shape):
    model = models.build("gan", feature_shape=shape, num_classes=10)
    samples = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (5, *shape)
    assert torch.equal(samples, model.sample(5, generator=torch.Generator().manual_seed(0)))
    realness = model.predict(samples)["realness"]
    assert realness.shape == (5,) and bool(((realness > 0) & (realness < 1)).all())
    assert model.output_schema() == {"realness": ("float32", ())}


def test_the_phases_train_disjoint_networks_in_order():
    model = models.build("gan", feature_shape=(1, 8, 8), num_classes=10)
    phases = model.training_phases()
    assert [p.name for p in phases] == ["discriminator", "generator"]
    d, g = ({id(p) for p in phase.parameters()} for phase in phases)
    assert not d & g and d | g == {id(p) for p in model.parameters()}


def test_the_discriminator_phase_leaves_the_generator_without_gradients():
    model = models.build("gan", feature_shape=(1, 8, 8), num_classes=10)
    batch = {"features": torch.randn(6, 1, 8, 8)}
    loss, metrics = model.training_phases()[0].loss(batch)
    loss.backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert all(p.grad is not None for p in model.discriminator.parameters())
    assert 0 < metrics["d_real"] < 1 and 0 < metrics["d_fake"] < 1


def test_given_noise_makes_the_losses_reproducible():
    model = models.build("gan", feature_shape=(1, 8, 8), num_classes=10, latent_dim=4)
    batch = {"features": torch.randn(6, 1, 8, 8), "noise": torch.randn(6, 4)}
    first = model.generator_loss(batch)[0].item()
    torch.randn(100)  # the global RNG moves on; the given noise does not
    assert model.generator_loss(batch)[0].item() == first


def test_validation_loss_is_the_sum_of_both_players():
    model = models.build("gan", feature_shape=(1, 8, 8), num_classes=10, latent_dim=4)
    batch = {"features": torch.randn(6, 1, 8, 8), "noise": torch.randn(6, 4)}
    loss, metrics = model.loss(batch)
    assert loss.item() == pytest.approx(metrics["discriminator_loss"].item() + metrics["generator_loss"].item())


@pytest.mark.parametrize(("params", "message"), [
    ({"generator_channels": [8]}, "generator_channels must be 2 positive channel counts"),
    ({"real_target": 0.3}, r"real_target must be in \(0.5, 1\]"),
])
def test_bad_config_is_named(params, message):
    with pytest.raises(ValueError, match=message):
        models.build("gan", feature_shape=(1, 8, 8), num_classes=10, **params)


def test_image_sides_must_allow_two_upsamplings():
    with pytest.raises(ValueError, match=r"image sides divisible by 4.*etl.source.image_shape"):
        models.build("gan", feature_shape=(1, 10, 10), num_classes=10)


def test_a_pipeline_cut_is_refused_with_what_to_use():
    model = models.build("gan", feature_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="use train.strategy=horovod or ddp"):
        model.pipeline_stages(2)
