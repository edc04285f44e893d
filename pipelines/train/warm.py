"""Warm starts (``train.init_from``): which artifact a run starts from, and whether it fits.

``train.init_from`` names a run id (its ``model/model.pt`` under this workdir) or an artifact
location in any store. The model starts from its weights, the optimizer fresh; it must be the same
model (name and hyperparameters) for the same feature shape and classes, which is checked before
Spark starts where the data is known (``pipelines.preflight``) and before the ranks launch.
"""
from __future__ import annotations

from typing import Any

import models
from pipelines import storage
from pipelines.artifact import ArtifactMeta, load_metadata
from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError
from pipelines.formats import to_plain
from pipelines.runfolder import RunFolder


def warm_start_artifact(config: PipelineConfig) -> str:
    """The artifact ``train.init_from`` names ("" = none): a run id of this workdir, else a location."""
    given = config.train.init_from
    if not given:
        return ""
    if storage.is_local(given) and "/" not in given:  # a run id, as `infer.model_run` names one
        by_run = RunFolder(config.run_dir(given)).artifact
        if storage.is_file(by_run):
            return by_run
    location = storage.normalize(given)
    if storage.is_file(location):
        return location
    raise ConfigError(f"config key 'train.init_from' = {storage.redact(given)!r}: no model artifact there (a run id of "
                      f"{storage.redact(config.workdir_location)}/runs, or an artifact file): train that run first, "
                      f"or fix the name", key="train.init_from")


def check_fits(meta: ArtifactMeta, config: PipelineConfig, feature_shape: list[int], num_classes: int,
               where: str) -> None:
    """The artifact can seed ``config``'s model on data of ``feature_shape`` and ``num_classes`` classes."""
    wanted = models.build(config.model.name, feature_shape=tuple(feature_shape), num_classes=num_classes,
                          **config.model.params).config_dict()
    problems = []
    if meta.model_name != config.model.name:
        problems.append(f"model {meta.model_name!r} vs model.name={config.model.name!r}")
    elif to_plain(meta.model_config) != to_plain(wanted):  # tuples and lists alike
        problems.append(f"model config {meta.model_config} vs {wanted}")
    if list(meta.feature_shape) != list(feature_shape):
        problems.append(f"feature shape {list(meta.feature_shape)} vs {list(feature_shape)} ({where})")
    if meta.num_classes != num_classes:
        problems.append(f"{meta.num_classes} classes vs {num_classes} ({where})")
    if problems:
        raise ConfigError(f"config key 'train.init_from' = {storage.redact(config.train.init_from)!r} cannot seed this "
                          f"run: the artifact and the run differ: {'; '.join(problems)}", key="train.init_from")


def check_warm_start(job: Any) -> None:
    """Before the ranks launch: the job's artifact fits its model and data."""
    manifest = job.data.manifest
    check_fits(load_metadata(job.init_from), job.config, manifest.feature_shape, len(manifest.label_names),
               f"dataset {job.config.dataset} version {job.data.version}")
