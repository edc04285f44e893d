"""The whole contract from the training driver to its ranks: one typed, JSON-safe job object.

The driver plans a :class:`TrainJob` once (:func:`plan_job`); the launcher ships it as plain data
to every barrier task, and each rank rebuilds it with :meth:`TrainJob.from_dict`. Nothing else
assembles what a rank needs (benchmarks call :func:`plan_job` too), and every location in it is
absolute (a local path or a store URI), so a rank on any host finds the same data.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines import dataset, storage
from pipelines.config import PipelineConfig, from_dict
from pipelines.errors import ConfigError
from pipelines.events import EpochRecord
from pipelines.formats import FormatError, Record, from_plain
from pipelines.runfolder import RunFolder


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
        return RunFolder(self.run_dir).artifact

    @property
    def checkpoints(self) -> str:
        return RunFolder(self.run_dir).checkpoints

    @property
    def metrics_file(self) -> str:
        return RunFolder(self.run_dir).metrics

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "config": self.config.to_dict()}

    @classmethod
    def from_dict(cls, value: Any, where: str = "train job", key: str = "") -> TrainJob:
        if not isinstance(value, dict) or not isinstance(value.get("config"), dict):
            raise FormatError(f"{where}: expects a job with a config, got {type(value).__name__}")
        return cls(config=from_dict(value["config"]),
                   data=dataset.DatasetView.from_dict(value.get("data"), where, "data"),
                   run_dir=from_plain(str, value.get("run_dir"), where, "run_dir"),
                   storage_options=from_plain(storage.StorageOptions, value.get("storage_options"), where,
                                              "storage_options"),
                   init_from=from_plain(str, value.get("init_from", ""), where, "init_from"))




@dataclass(frozen=True)
class RunData(Record):
    """The data a run trains on, recorded when it starts: a re-run of the run id (a resume, a retry)
    trains on the same version, whatever was appended since."""

    dataset: str
    version: int
    identity: str


def plan_job(config: PipelineConfig, run_dir: str = "", version: int = 0, init_from: str = "") -> TrainJob:
    """The job for ``config``'s dataset and run (default ``config.run_dir()``). The version: ``version``,
    else ``dataset_version``, else the one the run recorded when it first started, else the newest."""
    run_dir = run_dir or config.run_dir()
    recorded_at = RunFolder(run_dir).dataset_record
    recorded = RunData.from_json(storage.read_text(recorded_at), recorded_at) if storage.exists(recorded_at) else None
    wanted = version or config.dataset_version
    if recorded is not None and recorded.dataset == config.dataset:
        if wanted and wanted != recorded.version:
            raise ConfigError(f"dataset_version={wanted}, but run {config.run_id} trains on version "
                              f"{recorded.version} of dataset {config.dataset} (recorded when it started): a run "
                              f"does not mix versions; use a new run_id for version {wanted}", key="dataset_version")
        wanted = recorded.version
    view = dataset.open_dataset(config.dataset_dir, wanted)
    return TrainJob(config=config, data=view, run_dir=run_dir, storage_options=storage.current_options(),
                    init_from=init_from)


def record_run_data(job: TrainJob) -> None:
    """Write the run's dataset version (once: a re-run keeps what the run started with)."""
    location = RunFolder(job.run_dir).dataset_record
    if not storage.exists(location):
        storage.write_text(location, RunData(job.config.dataset, job.data.version, job.data.identity).to_json())


# The run's result, as rank 0 builds it and the driver returns it (here, not in driver.py: a rank
# process loads no pyspark).
@dataclass(frozen=True)
class RankDevice(Record):
    rank: int
    device: str
    gpu: str
    reason: str


@dataclass(frozen=True)
class TrainResult(Record):
    """What ``dlpipe train`` returns (rank 0's summary of the run)."""

    epochs_completed: int
    history: list[EpochRecord]
    artifact: str
    devices: list[RankDevice]
    precision: str
    dataset_version: int = 0
    init_from: str = ""
    checkpoint_times: dict[str, float] = field(default_factory=dict)  # pipelines.checkpoint_store.WriteTimes

    @property
    def last(self) -> EpochRecord:
        return self.history[-1]
