"""Sample quality of generative models: a Fréchet distance in a digits classifier's feature space.

The Fréchet Inception Distance (Heusel et al. 2017) fits a Gaussian to the features of real and of
generated images and measures the distance between the two. dlpipe downloads no Inception weights:
the features are the hidden layer of a CNN classifier dlpipe trains itself on the same dataset
(``quality.classifier_run``, or one trained here on the train split and cached per dataset). Two
reference points make the number readable: real vs real (the train split against the scored split,
the floor a perfect generator would reach) and an untrained generator of the same model (the ceiling).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
from numpy.typing import NDArray

import models
from pipelines import dataset, storage
from pipelines.artifact import Normalizer, artifact_meta, load_artifact, save_artifact
from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError
from pipelines.formats import Record
from pipelines.runfolder import RunFolder

CLASSIFIER_BATCH = 64
SEED = 0


def frechet_distance(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^1/2) between Gaussians fitted to rows of ``a`` and ``b``."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((C_a C_b)^1/2) = sum of sqrt(eigenvalues of C_a^1/2 C_b C_a^1/2), a symmetric PSD matrix:
    # stable without a general matrix square root.
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


@dataclass(frozen=True)
class SampleQuality(Record):
    frechet_distance: float
    real_vs_real: float  # the floor a perfect generator would reach
    untrained_generator: float  # the ceiling
    fraction_of_untrained: float | None
    samples: int
    reference_split: str
    classifier: str  # the artifact whose feature space the distances are in


def read_split(split: dataset.SplitFiles) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
    """(features (N, F) float32, labels (N,) int64) of a published split."""
    return dataset.table_arrays(dataset.read_split(split))


def sample_quality(config: PipelineConfig, artifact: str) -> SampleQuality:
    """Fréchet distances of the artifact's samples, of real train images and of an untrained
    generator, each against the scored split (``infer.split``), in a classifier's feature space."""
    model, meta = load_artifact(artifact)
    if not models.spec(model.name).can(models.Samples):
        raise ValueError(f"model {model.name!r} does not generate samples: sample quality is for generative models")
    qc = config.quality
    view = dataset.open_dataset(config.dataset_dir, config.dataset_version)
    reference_split = config.infer.split
    reference, train_split = view.split(reference_split, "infer.split"), view.split(dataset.TRAIN_SPLIT, "infer.split")
    classifier, classifier_norm, classifier_path = feature_classifier(config, view)
    own_norm = meta.normalizer()

    def embed(images: torch.Tensor, norm: Normalizer) -> NDArray[np.float64]:
        """Images in ``norm``'s space -> the classifier's features (through pixels, so spaces may differ)."""
        pixels = norm.denormalize(images).reshape(len(images), -1).numpy()
        features: torch.Tensor = classifier.embed(classifier_norm(pixels))  # (N, hidden)
        return features.numpy().astype(np.float64)

    def real(split: dataset.SplitFiles) -> NDArray[np.float64]:
        features, _ = read_split(split)
        return embed(classifier_norm(features), classifier_norm)

    reference_features, train = real(reference), real(train_split)
    sampler = cast(models.Samples, model)  # its spec says it samples (checked above)
    generated = embed(sampler.sample(qc.samples, generator=torch.Generator().manual_seed(SEED)), own_norm)
    torch.manual_seed(config.train.seed)  # the weights training started from
    untrained = cast(models.Samples, models.build(model.name, feature_shape=model.feature_shape,
                                                  num_classes=model.num_classes, **model.config_dict()))  # same model
    ceiling = embed(untrained.sample(qc.samples, generator=torch.Generator().manual_seed(SEED)), own_norm)
    score = frechet_distance(generated, reference_features)
    worst = frechet_distance(ceiling, reference_features)
    return SampleQuality(frechet_distance=score, real_vs_real=frechet_distance(train, reference_features),
                         untrained_generator=worst, fraction_of_untrained=score / worst if worst > 0 else None,
                         samples=qc.samples, reference_split=reference_split, classifier=classifier_path)


def feature_classifier(config: PipelineConfig, view: dataset.DatasetView) -> tuple[Any, Normalizer, str]:
    """(classifier that embeds, its normalizer, its artifact): ``quality.classifier_run``'s model,
    else a CNN trained here on the train split, cached under ``<workdir>/quality/``."""
    qc = config.quality
    if qc.classifier_run:
        path = RunFolder(config.run_dir(qc.classifier_run)).artifact
        if not storage.is_file(path):
            raise ConfigError(f"quality.classifier_run={qc.classifier_run!r}: no model artifact at "
                              f"{storage.redact(path)}; name a finished run of a classifier (model.name=cnn), or "
                              f"leave it empty", key="quality.classifier_run")
    else:
        path = storage.join(config.workdir_location, "quality", f"{config.dataset}-{view.identity}", "model.pt")
        if not storage.is_file(path):
            _train_classifier(config, view, path)
    model, meta = load_artifact(path)
    if not models.spec(model.name).can(models.Embeds):
        raise ConfigError(f"quality.classifier_run={qc.classifier_run!r} holds model {model.name!r}, which has no "
                          f"feature layer to embed images: use a run of model.name=cnn", key="quality.classifier_run")
    return model, meta.normalizer(), path


def _train_classifier(config: PipelineConfig, view: dataset.DatasetView, path: str) -> None:
    """A default CNN on the train split, in this process (seconds on the digits): seeded, so the
    feature space, and with it every score, is the same each time."""
    manifest = view.manifest
    norm = Normalizer.from_stats(manifest.normalization, manifest.feature_shape)
    features, labels = read_split(view.splits[dataset.TRAIN_SPLIT])
    x, y = norm(features), torch.from_numpy(labels)
    torch.manual_seed(SEED)
    model = models.build("cnn", feature_shape=tuple(manifest.feature_shape), num_classes=len(manifest.label_names))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(config.quality.classifier_epochs):
        for idx in torch.randperm(len(y)).split(CLASSIFIER_BATCH):
            optimizer.zero_grad()
            loss, _ = model.loss({"features": x[idx], "label": y[idx]})
            loss.backward()
            optimizer.step()
    save_artifact(path, model.eval(), artifact_meta(model, view, config))
