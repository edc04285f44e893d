"""Unit tests for models/: the DlpipeModel contract, the registry and artifact round trips."""

from __future__ import annotations

import pytest
import torch

import models

CONV_MODELS = ["autoencoder", "cnn", "vae"]
NUM_CLASSES = 4
# every model on 8x8 digits-like images, the conv models also on 28x28, the MLP also on flat vectors
CASES = (
    [(name, (1, 8, 8)) for name in ["autoencoder", "cnn", "mlp", "vae"]]
    + [(name, (1, 28, 28)) for name in CONV_MODELS]
    + [("mlp", (64,))]
)
CASE_IDS = [f"{name}-{'x'.join(map(str, shape))}" for name, shape in CASES]

EXPECTED_OUTPUTS = {
    "mlp": {"prediction", "probabilities"},
    "cnn": {"prediction", "probabilities"},
    "autoencoder": {"reconstruction_error"},
    "vae": {"latent_mean", "reconstruction_error"},
}
EXPECTED_METRICS = {
    "mlp": {"accuracy"},
    "cnn": {"accuracy"},
    "autoencoder": {"reconstruction_error"},
    "vae": {"reconstruction_error", "kl"},
}


@pytest.fixture(autouse=True)
def seed() -> None:
    torch.manual_seed(0)


def make_batch(feature_shape: tuple[int, ...], n: int = 32) -> dict[str, torch.Tensor]:
    """A learnable fixed batch: each class is a random prototype image, scaled, plus small noise."""
    g = torch.Generator().manual_seed(1)
    prototypes = torch.randn(NUM_CLASSES, *feature_shape, generator=g)
    labels = torch.arange(n) % NUM_CLASSES  # (n,)
    scale = (1 + 0.3 * torch.randn(n, generator=g)).view(n, *[1] * len(feature_shape))
    features = prototypes[labels] * scale + 0.1 * torch.randn(n, *feature_shape, generator=g)
    return {"features": features.float(), "label": labels.long()}


def build(name: str, feature_shape: tuple[int, ...]) -> models.DlpipeModel:
    return models.build(name, feature_shape=feature_shape, num_classes=NUM_CLASSES)


def test_names() -> None:
    assert models.names() == ["autoencoder", "cnn", "gan", "mlp", "mlp_policy", "vae"]


def test_package_exports_only_the_public_api() -> None:
    assert sorted(models.__all__) == sorted([
        "DlpipeModel", "ModelSpec", "build", "config_class", "names", "spec", "to_artifact_dict", "from_artifact_dict",
        "TASKS", "CLASSIFIER", "RECONSTRUCTOR", "GENERATOR", "POLICY", "CAPABILITIES", "Acts", "Embeds",
        "Reconstructs", "Samples"])


# The methods each capability Protocol promises (what a model that declares it must have).
CAPABILITY_METHODS = {models.Samples: ("sample",), models.Embeds: ("embed",), models.Reconstructs: ("reconstruct",),
                      models.Acts: ("act", "value")}


@pytest.mark.parametrize("name", models.names())
def test_every_model_declares_a_task_and_implements_the_capabilities_it_declares(name: str) -> None:
    spec = models.spec(name)
    assert spec.task in models.TASKS
    model = models.build(name, feature_shape=(4,) if spec.task == models.POLICY else (1, 8, 8), num_classes=3)
    assert set(CAPABILITY_METHODS) == set(models.CAPABILITIES)
    for capability in models.CAPABILITIES:
        has = all(callable(getattr(model, method, None)) for method in CAPABILITY_METHODS[capability])
        assert has == spec.can(capability), (name, capability.__name__)  # declared exactly when implemented
    assert spec.multi_phase == (len(model.training_phases()) > 1)


def test_the_registry_declares_what_the_verbs_select_by() -> None:
    tasks = {name: models.spec(name).task for name in models.names()}
    assert tasks == {"autoencoder": "reconstructor", "cnn": "classifier", "gan": "generator", "mlp": "classifier",
                     "mlp_policy": "policy", "vae": "reconstructor"}
    assert [n for n in models.names() if models.spec(n).can(models.Samples)] == ["gan", "vae"]


@pytest.mark.parametrize(("name", "shape"), CASES, ids=CASE_IDS)
def test_predict_matches_output_schema(name: str, shape: tuple[int, ...]) -> None:
    model = build(name, shape)
    outputs = model.predict(torch.randn(5, *shape))
    schema = model.output_schema()

    assert set(outputs) == set(schema) == EXPECTED_OUTPUTS[name]
    for key, (dtype, row_shape) in schema.items():
        assert str(outputs[key].dtype) == f"torch.{dtype}", key
        assert tuple(outputs[key].shape) == (5, *row_shape), key
        assert not outputs[key].requires_grad, key


@pytest.mark.parametrize(("name", "shape"), CASES, ids=CASE_IDS)
def test_declared_output_sizes(name: str, shape: tuple[int, ...]) -> None:
    schema = build(name, shape).output_schema()
    if name in ("mlp", "cnn"):
        assert schema == {"prediction": ("int64", ()), "probabilities": ("float32", (NUM_CLASSES,))}
    elif name == "autoencoder":
        assert schema == {"reconstruction_error": ("float32", ())}
    else:
        assert schema == {"latent_mean": ("float32", (8,)), "reconstruction_error": ("float32", ())}


def test_classifier_probabilities_sum_to_one_and_argmax_is_prediction() -> None:
    out = build("cnn", (1, 8, 8)).predict(torch.randn(6, 1, 8, 8))
    torch.testing.assert_close(out["probabilities"].sum(dim=1), torch.ones(6))
    assert torch.equal(out["prediction"], out["probabilities"].argmax(dim=1))


@pytest.mark.parametrize(("name", "shape"), CASES, ids=CASE_IDS)
def test_loss_returns_scalar_and_detached_metrics(name: str, shape: tuple[int, ...]) -> None:
    model = build(name, shape)
    loss, metrics = model.loss(make_batch(shape, n=8))

    assert loss.dim() == 0 and loss.requires_grad
    assert set(metrics) == EXPECTED_METRICS[name]
    for key, value in metrics.items():
        assert value.dim() == 0 and not value.requires_grad, key


@pytest.mark.parametrize(("name", "shape"), CASES, ids=CASE_IDS)
def test_loss_decreases_on_a_fixed_batch(name: str, shape: tuple[int, ...]) -> None:
    model = build(name, shape)
    batch = make_batch(shape)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss, _ = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.5 * losses[0], losses


def test_each_model_declares_the_figures_its_outputs_and_methods_support() -> None:
    expected = {"mlp": ("confusion_matrix",), "cnn": ("confusion_matrix",), "autoencoder": ("reconstructions",),
                "vae": ("reconstructions", "samples")}
    for name, figures in expected.items():
        model = build(name, (1, 8, 8))
        assert model.figures == figures
        if "confusion_matrix" in figures:
            assert "prediction" in model.output_schema()
        if "reconstructions" in figures:
            x = torch.randn(3, 1, 8, 8)
            assert model.reconstruct(x).shape == x.shape
        if "samples" in figures:
            assert model.sample(4).shape == (4, 1, 8, 8)


@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_vae_kl_is_nonnegative_and_sample_has_feature_shape(shape: tuple[int, int, int]) -> None:
    model = build("vae", shape)
    _, metrics = model.loss(make_batch(shape, n=8))
    assert metrics["kl"].item() >= 0.0

    samples = model.sample(3, generator=torch.Generator().manual_seed(7))
    again = model.sample(3, generator=torch.Generator().manual_seed(7))
    assert samples.shape == (3, *shape)
    assert torch.equal(samples, again)


@pytest.mark.parametrize("name", ["autoencoder", "vae"])
def test_reconstruct_is_deterministic_and_agrees_with_predict(name: str) -> None:
    model = build(name, (1, 8, 8)).train()
    features = make_batch((1, 8, 8), n=6)["features"]
    reconstruction = model.reconstruct(features)

    assert reconstruction.shape == features.shape
    assert torch.equal(reconstruction, model.reconstruct(features))
    per_sample = (reconstruction - features).pow(2).flatten(1).mean(dim=1)
    torch.testing.assert_close(model.predict(features)["reconstruction_error"], per_sample)
    assert model.training  # predict / reconstruct restore the caller's mode


def test_classifier_has_no_reconstruct_and_does_not_ask_for_reconstructions() -> None:
    model = build("mlp", (1, 8, 8))
    assert not hasattr(model, "reconstruct") and "reconstructions" not in model.figures


def test_predict_is_deterministic_with_dropout_in_training_mode() -> None:
    model = build("mlp", (1, 8, 8)).train()
    features = torch.randn(4, 1, 8, 8)
    assert torch.equal(model.predict(features)["probabilities"], model.predict(features)["probabilities"])
    assert model.training


@pytest.mark.parametrize(("name", "shape"), CASES, ids=CASE_IDS)
def test_artifact_round_trip_through_weights_only_load(name: str, shape: tuple[int, ...], tmp_path) -> None:
    model = build(name, shape)
    # one step so the weights differ from any fresh initialization
    loss, _ = model.loss(make_batch(shape, n=8))
    loss.backward()
    torch.optim.SGD(model.parameters(), lr=0.1).step()

    path = tmp_path / "model.pt"
    torch.save(models.to_artifact_dict(model), path)
    torch.manual_seed(123)  # the rebuilt model starts from different random weights
    restored = models.from_artifact_dict(torch.load(path, weights_only=True))

    assert type(restored) is type(model)
    assert restored.config == model.config and restored.feature_shape == model.feature_shape
    features = torch.randn(5, *shape)
    expected, actual = model.predict(features), restored.predict(features)
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key


def test_artifact_holds_only_plain_types() -> None:
    artifact = models.to_artifact_dict(models.build("mlp", feature_shape=(1, 8, 8), num_classes=10, hidden_sizes=[32]))

    assert artifact["model_name"] == "mlp"
    assert artifact["model_config"] == {"hidden_sizes": [32], "dropout": 0.1}
    assert artifact["feature_shape"] == [1, 8, 8] and artifact["num_classes"] == 10
    assert type(artifact["state_dict"]) is dict
    assert all(isinstance(v, torch.Tensor) for v in artifact["state_dict"].values())


def test_build_coerces_yaml_types() -> None:
    mlp = models.build("mlp", feature_shape=[1, 8, 8], num_classes=10, hidden_sizes=[32, 16])
    assert mlp.config.hidden_sizes == (32, 16) and mlp.feature_shape == (1, 8, 8)
    vae = models.build("vae", feature_shape=(1, 8, 8), num_classes=10, beta=1)
    assert isinstance(vae.config.beta, float)


def test_build_is_deterministic_given_the_seed() -> None:
    first = build("cnn", (1, 8, 8)).state_dict()
    torch.manual_seed(0)
    second = build("cnn", (1, 8, 8)).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_unknown_model_name_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*autoencoder, cnn, gan, mlp, mlp_policy, vae"):
        models.build("resnet", feature_shape=(1, 8, 8), num_classes=10)


def test_unknown_config_key_names_key_and_valid_keys() -> None:
    with pytest.raises(ValueError, match=r"'hidden_size'.*'mlp'.*dropout, hidden_sizes"):
        models.build("mlp", feature_shape=(1, 8, 8), num_classes=10, hidden_size=[64])


def test_invalid_config_value_is_rejected() -> None:
    with pytest.raises(ValueError, match="dropout"):
        models.build("cnn", feature_shape=(1, 8, 8), num_classes=10, dropout=1.5)


@pytest.mark.parametrize("name", CONV_MODELS)
def test_conv_models_reject_flat_feature_shape(name: str) -> None:
    with pytest.raises(ValueError, match=r"\(C, H, W\).*\(64,\).*'mlp'"):
        models.build(name, feature_shape=(64,), num_classes=10)


def test_predict_rejects_features_of_the_wrong_shape() -> None:
    with pytest.raises(ValueError, match=r"\(1, 8, 8\).*\(2, 64\)"):
        build("mlp", (1, 8, 8)).predict(torch.zeros(2, 64))


def test_from_artifact_dict_names_missing_keys() -> None:
    artifact = models.to_artifact_dict(build("mlp", (1, 8, 8)))
    del artifact["state_dict"]
    with pytest.raises(ValueError, match="state_dict"):
        models.from_artifact_dict(artifact)
