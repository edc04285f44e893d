"""The run folder's layout, owned here: every path a job keeps under ``<workdir>/runs/<run_id>/``.

Jobs ask a :class:`RunFolder` where a file goes instead of spelling its name, so the layout is
read and changed in one place (``tests/unit/test_layout.py`` fails when another module spells
one). What each file holds is owned by its format's module (docs/architecture.md "Formats").

    config.yaml      the resolved config, written once per job (write_config)
    dataset.json     the dataset version a training run is bound to (pipelines.train.job.RunData)
    summary.json     the run's results (pipelines.summary, pipelines.rl.job.RLSummary)
    metrics.jsonl    one EpochRecord (or RL IterationRecord) per line
    checkpoints/     pipelines.checkpoint_store
    model/           model.pt (pipelines.artifact), policy.pt (dlpipe rl)
    predictions/     the default inference output (pipelines.publish commits)
    report/          report.md and its figures; scored.json: what the run scored (pipelines.lineage)
    champion/        promotion.alias: the champion's predictions and figures on the same records
    trajectories/    dlpipe rl's recorded episodes (rl.save_trajectories)
    rl_eval.json     dlpipe rl-eval's result
    tb/              TensorBoard event files (when the tracking home is the workdir)
    _lease.json      the run's lease (pipelines.lease)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines import storage

if TYPE_CHECKING:
    from pipelines.config import PipelineConfig

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.jsonl"
SCORED_FILE = "scored.json"  # in a report folder (the run's, or champion/): what was scored, with which model


@dataclass(frozen=True)
class RunFolder:
    """The paths of one run folder (``root``: a local path or a URI)."""

    root: str

    @classmethod
    def of(cls, config: PipelineConfig) -> RunFolder:
        """The folder of ``config``'s run (``<workdir>/runs/<run_id>``)."""
        return cls(config.run_dir())

    def _at(self, *parts: str) -> str:
        return storage.join(self.root, *parts)

    @property
    def config_file(self) -> str:
        return self._at(CONFIG_FILE)

    @property
    def dataset_record(self) -> str:
        return self._at("dataset.json")

    @property
    def summary(self) -> str:
        return self._at(SUMMARY_FILE)

    @property
    def metrics(self) -> str:
        return self._at(METRICS_FILE)

    @property
    def checkpoints(self) -> str:
        return self._at("checkpoints")

    @property
    def artifact(self) -> str:
        """The model artifact (``pipelines.artifact``)."""
        return self._at("model", "model.pt")

    @property
    def policy(self) -> str:
        """dlpipe rl's final policy (``models.to_artifact_dict``)."""
        return self._at("model", "policy.pt")

    @property
    def predictions(self) -> str:
        return self._at("predictions")

    @property
    def report(self) -> str:
        """The report folder (report.md and its figures)."""
        return self._at("report")

    @property
    def champion(self) -> str:
        """Where a challenger's run keeps the champion's predictions and figures."""
        return self._at("champion")

    @property
    def trajectories(self) -> str:
        return self._at("trajectories")

    @property
    def rl_eval(self) -> str:
        return self._at("rl_eval.json")

    @property
    def tensorboard(self) -> str:
        return self._at("tb")

    @property
    def tracked_files(self) -> tuple[str, ...]:
        """The files a tracker keeps as the run's artifacts (those that exist at the end)."""
        return self.summary, self.config_file, self.metrics

    def write_config(self, config: PipelineConfig) -> bool:
        """Save the resolved config as ``config.yaml``, once: a later stage of the same job (the
        training inside ``dlpipe run``) finds the same text and writes nothing. True when written."""
        from pipelines.config import to_yaml

        text = to_yaml(config)
        if storage.exists(self.config_file) and storage.read_text(self.config_file) == text:
            return False
        storage.write_text(self.config_file, text)
        return True
