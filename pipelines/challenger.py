"""A training as a challenger (``promotion.alias``): score the champion on the same evaluation
records, decide, and move the alias if the challenger wins (``pipelines.promotion`` owns the alias).

``dlpipe run`` calls :func:`challenge` after its own scoring: the challenger's figures are those of
the run's evaluation (``infer.split`` of the dataset version it trained on); the champion, the model
the alias names now, is scored on the same split of the same version. A challenger trained on a
version whose drift gates were above their thresholds (``drift.action=warn`` let the job go on) is
not promoted automatically, whatever its score: a person looks at the data and promotes it by hand
(``dlpipe promote``) if it is right.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from pyspark.sql import SparkSession

from pipelines import dataset, storage
from pipelines.artifact import load_metadata
from pipelines.config import PipelineConfig
from pipelines.formats import Record
from pipelines.infer import job as infer
from pipelines.infer.evaluate import Evaluation
from pipelines.promotion import (
    AliasEntry,
    PromotionConflict,
    artifact_digest,
    decide,
    metric_score,
    read_alias,
    write_alias,
)
from pipelines.runfolder import RunFolder


@dataclass(frozen=True)
class PromotionOutcome(Record):
    """What the run's challenge decided (``summary.json``, the report, MLflow)."""

    alias: str
    promoted: bool
    reason: str
    metric: str
    challenger_score: float
    champion_run: str = ""  # "" = the alias named no model yet
    champion_score: float | None = None
    evaluated_on: str = ""
    entry: int = 0  # the alias entry this run created (0 = none)

    def figures(self) -> dict[str, float]:
        """For tracking: the scores and the decision as numbers."""
        figures = {"challenger": self.challenger_score, "promoted": float(self.promoted)}
        if self.champion_score is not None:
            figures["champion"] = self.champion_score
        return figures


def challenge(spark: SparkSession, config: PipelineConfig, artifact: str, evaluation: Evaluation | None,
              version: int, split: str) -> PromotionOutcome:
    """Promote ``artifact`` (this run's model, whose ``evaluation`` is on ``split`` of dataset
    ``version``) to ``promotion.alias`` if it beats the alias's model on the same records."""
    pc, workdir = config.promotion, config.workdir_location
    ours = metric_score(evaluation.figures() if evaluation else {}, pc.metric, config.run_id)
    rows = evaluation.rows if evaluation and evaluation.rows else 0
    evaluated_on = f"{config.dataset} v{version} split {split}" + (f" ({rows} rows)" if rows else "")
    champion = read_alias(workdir, pc.alias)
    theirs = None
    if champion is not None and champion.run_id != config.run_id:
        theirs = metric_score(_score_champion(spark, config, champion, version).figures(), pc.metric,
                              champion.run_id)
    elif champion is not None:  # a retry of the run that won: nothing to challenge
        return PromotionOutcome(pc.alias, True, f"already the model of alias {pc.alias} (entry {champion.number})",
                                pc.metric, ours, champion.champion_run, champion.champion_score, evaluated_on)
    decision = decide(pc.metric, ours, theirs, pc.margin)
    flagged = _flagged_versions(config, artifact, champion)
    reason = decision.reason
    if decision.promote and flagged:
        reason = (f"{reason.removesuffix(': promoted')}: held, not promoted: it trained on dataset version(s) "
                  f"{', '.join(map(str, flagged))} whose drift gates were above their thresholds; check the data, "
                  "then `dlpipe promote` it by hand if it is right")
    outcome = PromotionOutcome(pc.alias, decision.promote and not flagged, reason, pc.metric, ours,
                               champion.run_id if champion else "", theirs, evaluated_on)
    if not outcome.promoted:
        return outcome
    entry = AliasEntry(number=champion.number + 1 if champion else 1, run_id=config.run_id, artifact=artifact,
                       digest=artifact_digest(artifact), metric=pc.metric, score=ours,
                       champion_run=outcome.champion_run, champion_score=theirs, evaluated_on=evaluated_on,
                       reason=reason)
    try:
        written = write_alias(workdir, pc.alias, entry)
    except PromotionConflict as e:  # another training moved the alias since it was read: it won
        return dataclasses.replace(outcome, promoted=False, reason=str(e))
    return dataclasses.replace(outcome, entry=written.number)


def _score_champion(spark: SparkSession, config: PipelineConfig, champion: AliasEntry, version: int) -> Evaluation:
    """The champion's evaluation on the run's evaluation records (its predictions and figures in
    ``<run>/champion``, apart from the challenger's)."""
    folder = RunFolder.of(config).champion
    scoring = dataclasses.replace(
        config, dataset_version=version,
        # an evaluation, not a publication: the champion's drift on these records gates nothing
        drift=dataclasses.replace(config.drift, max_psi=0.0, max_label_shift=0.0),
        infer=dataclasses.replace(config.infer, artifact=champion.artifact, model_run="", model_alias="",
                                  output=storage.join(folder, "predictions")))
    print(f"dlpipe run {config.run_id}: scoring champion {champion.run_id} (alias {config.promotion.alias}) on "
          f"the same records", flush=True)
    result = infer.main(spark, scoring, report_dir=folder)
    if result.eval is None:
        raise infer.ModelNotFoundError(f"the champion {champion.run_id} of alias {config.promotion.alias} has no "
                                       f"evaluation on {result.input}: is it a model of another task?")
    return result.eval


def _flagged_versions(config: PipelineConfig, artifact: str, champion: AliasEntry | None) -> list[int]:
    """Versions this model trained on, the champion did not, whose drift gates were above threshold."""
    meta = load_metadata(artifact)
    theirs = {v.version for v in load_metadata(champion.artifact).dataset_versions} if champion else set()
    flagged = []
    for ref in meta.dataset_versions:
        if ref.version in theirs:
            continue
        folder = storage.join(config.dataset_dir, ref.folder) if ref.folder else config.dataset_dir
        if dataset.read_manifest(folder).drift_problems:
            flagged.append(ref.version)
    return flagged

