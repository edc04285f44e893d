"""The run summary format: ``<run>/summary.json`` of ``dlpipe run`` (one owner, one codec).

What each stage did and how it ended, the headline figures of the ETL, training, inference and
(for generators) sample quality, and where the model, predictions and report are. ``dlpipe run``
writes it after every stage (a failed stage too), so a scheduler reads how far a run got.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from pipelines.challenger import PromotionOutcome
from pipelines.drift import DriftReport
from pipelines.formats import Record
from pipelines.infer.evaluate import Evaluation
from pipelines.infer.quality import SampleQuality


@dataclass(frozen=True)
class StageStatus(Record):
    status: str  # ok | failed
    seconds: float
    error: str = ""


@dataclass(frozen=True)
class EtlCounts(Record):
    records_in: int
    accepted: int
    quarantined: int
    quarantine_by_reason: dict[str, int]
    version: int = 1


@dataclass(frozen=True)
class TrainFigures(Record):
    epochs_completed: int
    final_train_loss: float
    final_val_loss: float | None
    final_val_metrics: dict[str, float]
    samples_per_s: float
    devices: list[dict[str, object]]
    precision: str = "fp32"
    init_from: str = ""  # the artifact the model was warm-started from ("" = random)


@dataclass(frozen=True)
class InferCounts(Record):
    rows: int
    bad_rows: int
    model_loads: int


@dataclass(frozen=True)
class RunSummary(Record):
    run_id: str
    model: str
    dataset: str
    config_hash: str
    stages: dict[str, StageStatus] = field(default_factory=dict)
    status: str = "running"  # running | ok | failed
    dataset_version: int = 0
    etl: EtlCounts | None = None
    train: TrainFigures | None = None
    eval: Evaluation | None = None
    infer: InferCounts | None = None
    sample_quality: SampleQuality | None = None
    drift: DriftReport | None = None  # the dataset version this run's ETL appended, against the earlier ones
    drift_problems: list[str] = field(default_factory=list)  # its drift gates above their thresholds
    promotion: PromotionOutcome | None = None  # promotion.alias: the challenge's decision
    artifact: str = ""
    predictions: str = ""
    report: str = ""
