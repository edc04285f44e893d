"""The whole contract from the training driver to its ranks: one typed, JSON-safe job object.

The driver plans a :class:`TrainJob` once (:func:`plan_job`); the launcher ships it as plain data
to every barrier task, and each rank rebuilds it with :meth:`TrainJob.from_dict`. Nothing else
assembles what a rank needs (benchmarks call :func:`plan_job` too), and every location in it is
absolute (a local path or a store URI), so a rank on any host finds the same data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines import dataset, storage
from pipelines.artifact import artifact_path
from pipelines.config import PipelineConfig, from_dict
from pipelines.formats import FormatError, Record, from_plain


@dataclass(frozen=True)
class TrainJob(Record):
    """What every rank needs: the resolved config, the dataset view it trains on, where to write."""

    config: PipelineConfig
    data: dataset.DatasetView
    run_dir: str  # <workdir>/runs/<run_id>, absolute
    storage_options: storage.StorageOptions  # the driver's non-secret store options (endpoint, region)
    init_from: str = ""  # artifact whose weights the model starts from ("" = random, seeded)

    @property
    def train(self) -> dataset.SplitFiles:
        return self.data.splits[dataset.TRAIN_SPLIT]

    @property
    def validation(self) -> dataset.SplitFiles | None:
        """The validation split, None when the dataset has none."""
        return self.data.splits.get(dataset.VALIDATION_SPLIT)

    @property
    def artifact(self) -> str:
        return artifact_path(self.run_dir)

    @property
    def checkpoints(self) -> str:
        return storage.join(self.run_dir, "checkpoints")

    @property
    def metrics_file(self) -> str:
        return storage.join(self.run_dir, "metrics.jsonl")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, value: Any, where: str = "train job", key: str = "") -> "TrainJob":
        if not isinstance(value, dict) or not isinstance(value.get("config"), dict):
            raise FormatError(f"{where}: expects a job with a config, got {type(value).__name__}")
        return cls(config=from_dict(value["config"]),
                   data=dataset.DatasetView.from_dict(value.get("data"), where, "data"),
                   run_dir=from_plain(str, value.get("run_dir"), where, "run_dir"),
                   storage_options=from_plain(storage.StorageOptions, value.get("storage_options"), where,
                                              "storage_options"),
                   init_from=from_plain(str, value.get("init_from", ""), where, "init_from"))


def plan_job(config: PipelineConfig, run_dir: str = "", version: int = 0, init_from: str = "") -> TrainJob:
    """The job for ``config``'s dataset (``version``: 0 = the newest) and run (default ``config.run_dir()``)."""
    view = dataset.open_dataset(config.dataset_dir, version)
    return TrainJob(config=config, data=view, run_dir=run_dir or config.run_dir(),
                    storage_options=storage.current_options(), init_from=init_from)
