"""The whole contract from the training driver to its ranks: one typed, JSON-safe job object.

The driver plans a :class:`TrainJob` once (:func:`plan_job`); the launcher ships it as plain data
to every barrier task, and each rank rebuilds it with :meth:`TrainJob.from_payload`. Nothing else
assembles what a rank needs (benchmarks call :func:`plan_job` too).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines import dataset
from pipelines.artifact import artifact_path
from pipelines.config import PipelineConfig, from_dict


@dataclass(frozen=True)
class TrainJob:
    """What every rank needs: the resolved config, the dataset it trains on, where to write."""

    config: PipelineConfig
    manifest: dict[str, Any]  # the ETL's manifest.json (see pipelines.dataset)
    manifest_hash: str  # identity of the data: checkpoints made on other data are refused
    train_path: str  # absolute path of the train split
    validation_path: str  # absolute path of the validation split; "" = the dataset has none
    run_dir: str  # absolute path of <workdir>/runs/<run_id>

    @property
    def artifact(self) -> Path:
        return artifact_path(self.run_dir)

    @property
    def checkpoints(self) -> Path:
        return Path(self.run_dir) / "checkpoints"

    @property
    def metrics_file(self) -> Path:
        return Path(self.run_dir) / "metrics.jsonl"

    def to_payload(self) -> dict[str, Any]:
        """Plain data for the launcher (JSON)."""
        return {f.name: getattr(self, f.name) if f.name != "config" else self.config.to_dict()
                for f in dataclasses.fields(self)}

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> "TrainJob":
        """The job a rank receives, rebuilt and validated."""
        return cls(**{**payload, "config": from_dict(payload["config"])})


def plan_job(config: PipelineConfig, run_dir: str | Path | None = None) -> TrainJob:
    """The job for ``config``'s dataset and run (``run_dir``: default ``config.run_dir()``)."""
    manifest = dataset.load_manifest(config.dataset_dir)
    paths = dataset.split_paths(config.dataset_dir, manifest)
    return TrainJob(
        config=config,
        manifest=manifest,
        manifest_hash=dataset.manifest_hash(manifest),
        train_path=paths[dataset.TRAIN_SPLIT],
        validation_path=paths.get(dataset.VALIDATION_SPLIT, ""),
        run_dir=str(Path(run_dir or config.run_dir()).resolve()),
    )
