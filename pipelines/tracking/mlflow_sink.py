"""The MLflow sink of :mod:`pipelines.tracking` (imported only when ``tracking.mlflow`` is on)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from pipelines.tracking.sinks import DatasetInput, Sink

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

RUN_ID_TAG = "dlpipe.run_id"  # finds the MLflow run of a dlpipe run id again
MLFLOW_PARAM_LIMIT = 6000  # characters per param value (MLflow rejects longer ones)
MLFLOW_BATCH_LIMIT = 100  # params per log_batch request
MLFLOW_METRIC_BATCH_LIMIT = 1000  # metrics per log_batch request


def configure_mlflow_client(timeout_s: float, file_store: bool) -> None:
    """MLflow's HTTP client retries for minutes by default: make an unreachable server fail fast.
    Users' own settings of these variables win."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(max(1, round(timeout_s))))
    if file_store:
        # MLflow 3 keeps the file store in maintenance mode and refuses it unless asked; it is the
        # store that needs no server and no database, which is what a local run wants.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")


def mlflow_client(uri: str, timeout_s: float = 10.0) -> MlflowClient:
    """An ``MlflowClient`` for ``uri`` set up as dlpipe's runs use it (fail fast; the file store
    allowed): also the way to read a run back in Python."""
    configure_mlflow_client(timeout_s, uri.startswith("file:"))
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


class MlflowSink(Sink):
    """One MLflow run per dlpipe run id, in ``experiment`` at ``uri``."""

    name = "MLflow"

    def __init__(self, uri: str, experiment: str, run_id: str, job: str, timeout_s: float) -> None:
        self.uri = uri
        self.experiment = experiment
        self.dlpipe_run_id = run_id
        self.job = job
        self.timeout_s = timeout_s
        self._client: MlflowClient | None = None  # set by open()
        self.run_id = ""
        self.logged_params: dict[str, str] = {}

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            raise RuntimeError("the MLflow sink was used before open()")
        return self._client

    def open(self) -> None:
        self._client = client = mlflow_client(self.uri, self.timeout_s)
        experiment = client.get_experiment_by_name(self.experiment)
        experiment_id = experiment.experiment_id if experiment else client.create_experiment(self.experiment)
        found = client.search_runs([experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{self.dlpipe_run_id}'",
                                   max_results=1, order_by=["attributes.start_time ASC"])
        if found:  # the same dlpipe run again (resume, retry): continue its MLflow run
            run = found[0]
            self.run_id = run.info.run_id
            self.logged_params = dict(run.data.params)
            client.update_run(self.run_id, status="RUNNING")
        else:
            run = client.create_run(experiment_id, run_name=self.dlpipe_run_id,
                                    tags={RUN_ID_TAG: self.dlpipe_run_id, "dlpipe.job": self.job})
            self.run_id = run.info.run_id

    def params(self, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        values = {k: v[:MLFLOW_PARAM_LIMIT] for k, v in params.items()}
        # MLflow params cannot change once logged: a re-run with another config keeps the first
        # values and records which keys differ (the run's config.yaml artifact has the new ones).
        changed = sorted(k for k, v in values.items() if k in self.logged_params and self.logged_params[k] != v)
        new = [Param(k, v) for k, v in values.items() if k not in self.logged_params]
        for i in range(0, len(new), MLFLOW_BATCH_LIMIT):
            self.client.log_batch(self.run_id, params=new[i:i + MLFLOW_BATCH_LIMIT])
        self.logged_params.update({p.key: p.value for p in new})
        if changed:
            self.client.set_tag(self.run_id, "dlpipe.params_changed_on_rerun", ", ".join(changed)[:5000])

    def metrics(self, values: dict[str, float], step: int, timestamp_ms: int) -> None:
        from mlflow.entities import Metric

        self.client.log_batch(self.run_id, metrics=[Metric(k, v, timestamp_ms, step) for k, v in values.items()])

    def backfill(self, epochs: list[tuple[int, dict[str, float]]], timestamp_ms: int) -> None:
        from mlflow.entities import Metric

        held = {m.step for m in self.client.get_metric_history(self.run_id, "loss")}
        missing = [Metric(k, v, timestamp_ms, step) for step, values in epochs if step not in held
                   for k, v in values.items()]
        for i in range(0, len(missing), MLFLOW_METRIC_BATCH_LIMIT):
            self.client.log_batch(self.run_id, metrics=missing[i:i + MLFLOW_METRIC_BATCH_LIMIT])

    def inputs(self, datasets: list[DatasetInput]) -> None:
        from mlflow.entities import Dataset, InputTag
        from mlflow.entities import DatasetInput as Input

        logged = self.client.get_run(self.run_id).inputs
        held = {(d.dataset.name, d.dataset.digest) for d in (logged.dataset_inputs if logged else [])}
        new = [Input(Dataset(d.name, d.digest, "dlpipe", d.source), [InputTag("mlflow.data.context", "training")])
               for d in datasets if (d.name, d.digest) not in held]  # a resumed run logs each version once
        if new:
            self.client.log_inputs(self.run_id, datasets=new)

    def artifact(self, path: Path, folder: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder or None)

    def close(self, status: str) -> None:
        if self._client is not None and self.run_id:
            self.client.set_terminated(self.run_id, status)
