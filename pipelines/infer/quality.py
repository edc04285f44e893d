"""Sample quality of generative models: a Fréchet distance in a digits classifier's feature space.

The Fréchet Inception Distance (Heusel et al. 2017) fits a Gaussian to the features of real and of
generated images and measures the distance between the two. dlpipe downloads no Inception weights:
the features are the hidden layer of a CNN classifier dlpipe trains itself on the same dataset
(``quality.classifier_run``, or one trained here on the train split and cached per dataset). Two
reference points make the number readable: real vs real (the train split against the scored split,
the floor a perfect generator would reach) and an untrained generator of the same model (the ceiling).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

import models
from pipelines import dataset
from pipelines.artifact import Normalizer, artifact_path, load_artifact, normalizer, save_artifact
from pipelines.config import ConfigError, PipelineConfig

CLASSIFIER_BATCH = 64
SEED = 0


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^1/2) between Gaussians fitted to rows of ``a`` and ``b``."""
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    # Tr((C_a C_b)^1/2) = sum of sqrt(eigenvalues of C_a^1/2 C_b C_a^1/2), a symmetric PSD matrix:
    # stable without a general matrix square root.
    values, vectors = np.linalg.eigh(cov_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def read_split(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(features (N, F) float32, labels (N,) int64) of a published split."""
    return dataset.table_arrays(pq.ParquetDataset([str(p) for p in dataset.part_files(path)])
                                .read(columns=["features", "label"]))


def sample_quality(config: PipelineConfig, artifact: str | Path) -> dict[str, Any]:
    """Fréchet distances of the artifact's samples, of real train images and of an untrained
    generator, each against the scored split (``infer.split``), in a classifier's feature space."""
    model, meta = load_artifact(artifact)
    if not hasattr(model, "sample"):
        raise ValueError(f"model {model.name!r} does not generate samples: sample quality is for generative models")
    qc = config.quality
    manifest = dataset.load_manifest(config.dataset_dir)
    splits = dataset.split_paths(config.dataset_dir, manifest)
    reference_split = config.infer.split
    if reference_split not in splits or dataset.TRAIN_SPLIT not in splits:
        raise ConfigError(f"sample quality compares with infer.split={reference_split!r} and the train split; "
                          f"dataset {config.dataset} has {', '.join(splits)}")
    classifier, classifier_norm, classifier_path = feature_classifier(config, manifest)
    own_norm = normalizer(meta)

    def embed(images: torch.Tensor, norm: Normalizer) -> np.ndarray:
        """Images in ``norm``'s space -> the classifier's features (through pixels, so spaces may differ)."""
        pixels = norm.denormalize(images).reshape(len(images), -1).numpy()
        return classifier.embed(classifier_norm(pixels)).numpy().astype(np.float64)

    def real(split: str) -> np.ndarray:
        features, _ = read_split(splits[split])
        return embed(classifier_norm(features), classifier_norm)

    reference, train = real(reference_split), real(dataset.TRAIN_SPLIT)
    generated = embed(model.sample(qc.samples, generator=torch.Generator().manual_seed(SEED)), own_norm)
    torch.manual_seed(config.train.seed)  # the weights training started from
    untrained = models.build(model.name, feature_shape=model.feature_shape, num_classes=model.num_classes,
                             **model.config_dict())
    ceiling = embed(untrained.sample(qc.samples, generator=torch.Generator().manual_seed(SEED)), own_norm)
    score = frechet_distance(generated, reference)
    worst = frechet_distance(ceiling, reference)
    return {"frechet_distance": score, "real_vs_real": frechet_distance(train, reference),
            "untrained_generator": worst, "fraction_of_untrained": score / worst if worst > 0 else None,
            "samples": qc.samples, "reference_split": reference_split, "classifier": str(classifier_path)}


def feature_classifier(config: PipelineConfig, manifest: dict[str, Any]) -> tuple[Any, Normalizer, Path]:
    """(classifier with ``embed``, its normalizer, its artifact): ``quality.classifier_run``'s model,
    else a CNN trained here on the train split, cached under ``<workdir>/quality/``."""
    qc = config.quality
    if qc.classifier_run:
        path = artifact_path(Path(config.workdir) / "runs" / qc.classifier_run)
        if not path.is_file():
            raise ConfigError(f"quality.classifier_run={qc.classifier_run!r}: no model artifact at {path}; "
                              f"name a finished run of a classifier (model.name=cnn), or leave it empty")
    else:
        path = Path(config.workdir) / "quality" / f"{config.dataset}-{dataset.manifest_hash(manifest)}" / "model.pt"
        if not path.is_file():
            _train_classifier(config, manifest, path)
    model, meta = load_artifact(path)
    if not hasattr(model, "embed"):
        raise ConfigError(f"quality.classifier_run={qc.classifier_run!r} holds model {model.name!r}, which has no "
                          f"feature layer to embed images: use a run of model.name=cnn")
    return model, normalizer(meta), path


def _train_classifier(config: PipelineConfig, manifest: dict[str, Any], path: Path) -> None:
    """A default CNN on the train split, in this process (seconds on the digits): seeded, so the
    feature space, and with it every score, is the same each time."""
    norm = Normalizer.from_stats(manifest["normalization"], manifest["feature_shape"])
    features, labels = read_split(dataset.split_paths(config.dataset_dir, manifest)[dataset.TRAIN_SPLIT])
    x, y = norm(features), torch.from_numpy(labels)
    torch.manual_seed(SEED)
    model = models.build("cnn", feature_shape=tuple(manifest["feature_shape"]),
                         num_classes=len(manifest["label_names"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(config.quality.classifier_epochs):
        for idx in torch.randperm(len(y)).split(CLASSIFIER_BATCH):
            optimizer.zero_grad()
            loss, _ = model.loss({"features": x[idx], "label": y[idx]})
            loss.backward()
            optimizer.step()
    save_artifact(path, model.eval(), manifest, dataset.manifest_hash(manifest), config)
