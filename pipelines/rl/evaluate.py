"""``dlpipe rl-eval``: a trained classifier artifact (e.g. behaviour cloning) played as a greedy policy.

The artifact is the one inference would use (``infer.artifact``, else the model of
``infer.model_run``, else this run's). Observations get the artifact's own normalization; the
predicted class's label name is the action (the labels of a cloned policy are action numbers).
Plays ``rl.eval_episodes`` episodes of ``rl.env_id`` and writes ``<run>/rl_eval.json``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from pyspark.sql import SparkSession

import models
from pipelines import storage
from pipelines.artifact import load_artifact
from pipelines.config import PipelineConfig
from pipelines.errors import ConfigError
from pipelines.formats import Record
from pipelines.infer.job import model_artifact
from pipelines.rl.job import GreedyEvaluation
from pipelines.rl.rollout import env_spaces, run_episodes
from pipelines.runfolder import RunFolder


@dataclass(frozen=True)
class RLEvalResult(Record):
    """``<run>/rl_eval.json``, and what ``dlpipe rl-eval`` returns."""

    run_id: str
    env_id: str
    artifact: str
    eval: GreedyEvaluation


def main(spark: SparkSession, config: PipelineConfig) -> RLEvalResult:
    """Evaluate the artifact in the environment. (Runs in the driver; ``spark`` is unused but every verb takes it.)"""
    rc = config.rl
    obs_shape, num_actions = env_spaces(rc.env_id)
    artifact = model_artifact(config)
    act = classifier_policy(artifact, int(np.prod(obs_shape)), num_actions, rc.env_id)
    started = time.monotonic()
    played = run_episodes(act, rc.env_id, rc.eval_episodes, seed=rc.seed + 2_000_000)
    result = RLEvalResult(config.run_id, rc.env_id, artifact, GreedyEvaluation(
        episodes=rc.eval_episodes, mean_return=float(np.mean(played["returns"])),
        std_return=float(np.std(played["returns"])), mean_length=float(np.mean(played["lengths"])),
        seconds=round(time.monotonic() - started, 2)))
    storage.write_text(RunFolder.of(config).rl_eval, result.to_json())
    return result


def classifier_policy(artifact: str, obs_size: int, num_actions: int,
                      env_id: str) -> Callable[[NDArray[np.float32]], NDArray[np.int64]]:
    """Observations (B, obs_size) -> actions (B,) from a classifier artifact whose labels are action numbers."""
    model, meta = load_artifact(artifact)
    shown = storage.redact(artifact)
    if models.spec(meta.model_name).task != models.CLASSIFIER:
        raise ConfigError(f"model artifact {shown} holds a {models.spec(meta.model_name).task} ({meta.model_name}); "
                          f"rl-eval plays classifiers (trained on rl.save_trajectories episodes)", key="infer.artifact")
    features = int(np.prod(meta.feature_shape))
    if features != obs_size:
        raise ConfigError(f"model artifact {shown} takes {features} features but rl.env_id={env_id!r} "
                          f"observations have {obs_size} values", key="rl.env_id")
    try:
        actions = np.array([int(name) for name in meta.label_names], np.int64)
    except ValueError:
        raise ConfigError(f"model artifact {shown} has labels {meta.label_names}, not action numbers: "
                          "rl-eval plays classifiers trained on rl.save_trajectories episodes",
                          key="infer.artifact") from None
    if actions.min() < 0 or actions.max() >= num_actions:
        raise ConfigError(f"model artifact {shown} predicts actions {actions.tolist()} but rl.env_id={env_id!r} "
                          f"has {num_actions} actions", key="rl.env_id")
    normalize = meta.normalizer()

    def act(obs: NDArray[np.float32]) -> NDArray[np.int64]:
        with torch.no_grad():
            chosen: NDArray[np.int64] = actions[model.predict(normalize(obs))["prediction"].numpy()]  # class -> action
            return chosen

    return act
