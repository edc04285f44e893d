"""Champion/challenger promotion: which model a model alias names, and how that changes.

    <workdir>/models/<alias>/                   (a local folder or a URI: s3://, gs://, ...)
      _alias-00000001.json                      AliasEntry number 1: the first model the alias named
      _alias-00000002.json                      number 2: the alias's model since then (the newest is current)

Scoring by alias (``infer.model_alias``) uses the model of the newest entry. A training with
``promotion.alias`` set is a challenger: it becomes the alias's model only if it beats the current
champion on the same evaluation records by ``promotion.metric`` and ``promotion.margin``
(:func:`decide`). ``dlpipe promote`` moves the alias by hand (:func:`promote_by_hand`, a rollback).

Every change creates the next numbered entry with a conditional create
(``pipelines.storage.create_if_absent``), as dataset heads are committed: an entry is never
replaced, so of two jobs that both read entry N only one creates N + 1 and the other is refused
(:class:`PromotionConflict`) without touching the alias. All entries are kept: they are the
alias's history, and they are small. Each entry records the sha256 of its model file, so a model
file replaced after its promotion is refused instead of silently scored.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from pipelines import storage
from pipelines.formats import Record
from pipelines.runfolder import RunFolder

MODELS_DIR = "models"  # <workdir>/models/<alias>
RUNS_DIR = "runs"  # <workdir>/runs/<run_id> (as PipelineConfig.run_dir spells it)
ENTRY_PREFIX = "_alias-"  # _alias-00000001.json, _alias-00000002.json, ...
BY_CHALLENGER, BY_HAND = "challenger", "hand"
LOWER_IS_BETTER = ("loss", "error")  # metric names containing these are minimized
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # one safe path component, as config's folder_name()


class PromotionError(RuntimeError):
    """An alias, run or metric promotion needs is missing or wrong; the message names it and the fix."""


class PromotionConflict(PromotionError):
    """Another job moved the alias first: this job's model was not promoted."""


@dataclass(frozen=True)
class AliasEntry(Record):
    """One change of an alias: the model it names from then on, and why."""

    number: int  # which entry (its file name says the same)
    run_id: str
    artifact: str  # the model file's location, as stored (any store URI)
    digest: str  # sha256 hex of the artifact's bytes at promotion time
    metric: str = ""  # e.g. "accuracy" ("" for a promotion by hand)
    score: float | None = None  # this model's score on the evaluation records
    champion_run: str = ""  # the model it replaced ("" = the first)
    champion_score: float | None = None  # the replaced model's score on the SAME records
    evaluated_on: str = ""  # what the records were, e.g. "digits v4 split test (300 rows)"
    by: str = BY_CHALLENGER  # "challenger" | "hand"
    reason: str = ""
    at: str = ""  # ISO time (UTC, seconds)


@dataclass(frozen=True)
class Decision(Record):
    """Whether a challenger replaces the champion, with the one-sentence reason."""

    promote: bool
    reason: str
    challenger: float
    champion: float | None
    metric: str
    margin: float


# --- where aliases live -------------------------------------------------------------------------

def _check_name(value: str, what: str) -> str:
    if not _NAME.fullmatch(value):
        raise PromotionError(f"{what} {value!r} is not a valid name: use letters, digits, '.', '_' and '-', "
                             "starting with a letter or digit")
    return value


def _models_dir(workdir: str) -> str:
    return storage.join(storage.normalize(workdir), MODELS_DIR)


def alias_dir(workdir: str, alias: str) -> str:
    """The folder of ``alias``'s entries: ``<workdir>/models/<alias>``."""
    return storage.join(_models_dir(workdir), _check_name(alias, "model alias"))


def _entry_name(number: int) -> str:
    return f"{ENTRY_PREFIX}{number:08d}.json"


def _entry_number(location: str) -> int | None:
    name = storage.name(location)
    digits = name[len(ENTRY_PREFIX):-len(".json")]
    return int(digits) if name.startswith(ENTRY_PREFIX) and name.endswith(".json") and digits.isdigit() else None


def _entry_files(folder: str) -> list[tuple[int, str]]:
    """(number, location) of every entry in ``folder``, oldest first."""
    if not storage.is_dir(folder):
        return []
    found = [(_entry_number(f.location), f.location)
             for f in storage.list_files(folder, recursive=False, include_hidden=True)]
    return sorted((n, loc) for n, loc in found if n is not None)


def _read_entry(number: int, location: str) -> AliasEntry:
    entry = AliasEntry.from_json(storage.read_text(location), storage.redact(location))
    return replace(entry, number=number)  # the file name is the truth: it is what the create fenced


def read_alias(workdir: str, alias: str) -> AliasEntry | None:
    """The newest entry of ``alias`` (its current model); None when the alias was never set."""
    entries = _entry_files(alias_dir(workdir, alias))
    return _read_entry(*entries[-1]) if entries else None


def alias_history(workdir: str, alias: str) -> list[AliasEntry]:
    """Every entry of ``alias``, oldest first ([] when it was never set)."""
    return [_read_entry(n, loc) for n, loc in _entry_files(alias_dir(workdir, alias))]


def list_aliases(workdir: str) -> list[str]:
    """The aliases under ``<workdir>/models`` that have at least one entry, sorted."""
    names = [storage.name(d) for d in storage.list_dirs(_models_dir(workdir))]
    return [n for n in names if _NAME.fullmatch(n) and _entry_files(storage.join(_models_dir(workdir), n))]


# --- moving an alias ----------------------------------------------------------------------------

def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def write_alias(workdir: str, alias: str, entry: AliasEntry) -> AliasEntry:
    """Create entry ``entry.number`` of ``alias`` (the number read + 1; 1 when there was none) only if
    it is absent; :class:`PromotionConflict` naming the winner when another job created it first.
    ``at`` is filled in when empty. The entry as written."""
    folder = alias_dir(workdir, alias)
    _check_next(folder, alias, entry.number)
    entry = entry if entry.at else replace(entry, at=_now())
    location = storage.join(folder, _entry_name(entry.number))
    try:
        storage.create_if_absent(location, entry.to_json().encode("utf-8"))
    except storage.WriteConflict:
        raise _conflict(alias, entry, _read_entry(entry.number, location)) from None
    return entry


def _check_next(folder: str, alias: str, number: int) -> None:
    """Refuse a number that would leave a gap (a caller's bug, not a race: a race shows as a conflict)."""
    entries = _entry_files(folder)
    newest = entries[-1][0] if entries else 0
    if number < 1 or number > newest + 1:
        raise PromotionError(f"model alias {alias!r}: cannot write entry {number}: the newest is {newest}, so the "
                             f"next is {newest + 1} (read the alias with read_alias and write its number + 1)")


def _conflict(alias: str, lost: AliasEntry, won: AliasEntry) -> PromotionConflict:
    read = f"entry {lost.number - 1}" if lost.number > 1 else "no entry"
    return PromotionConflict(
        f"model alias {alias!r}: another job wrote entry {won.number} first (run {won.run_id!r}, by {won.by}"
        f"{_scored(won)}) while this job, which had read {read}, was writing it: run {lost.run_id!r} was not "
        f"promoted, and the alias names run {won.run_id!r}. Re-run `dlpipe promote` to retry against it")


def _scored(entry: AliasEntry) -> str:
    return f", {entry.metric} {entry.score:.4f}" if entry.metric and entry.score is not None else ""


def artifact_digest(location: str) -> str:
    """The sha256 hex of the file at ``location``; FileNotFoundError when it is missing."""
    return hashlib.sha256(storage.read_bytes(location)).hexdigest()


def _run_artifact(workdir: str, run_id: str) -> str:
    """The model file of run ``run_id``; :class:`PromotionError` when the run has none."""
    run_dir = storage.join(storage.normalize(workdir), RUNS_DIR, _check_name(run_id, "run id"))
    artifact = RunFolder(run_dir).artifact
    if not storage.is_file(artifact):
        raise PromotionError(f"run {run_id!r} has no model: {storage.redact(artifact)} does not exist. Train it "
                             f"first (dlpipe train --run-id {run_id}), or promote a run that has one")
    return artifact


def promote_by_hand(workdir: str, alias: str, run_id: str, reason: str = "") -> AliasEntry:
    """``dlpipe promote``: make ``alias`` name run ``run_id``'s model (a rollback to an older run, or a
    first model), whatever the scores; the next entry, ``by="hand"``. :class:`PromotionConflict` when
    another job moved the alias meanwhile."""
    artifact = _run_artifact(workdir, run_id)
    current = read_alias(workdir, alias)
    entry = AliasEntry(number=current.number + 1 if current else 1, run_id=run_id, artifact=artifact,
                       digest=artifact_digest(artifact), champion_run=current.run_id if current else "",
                       by=BY_HAND, reason=reason or "promoted by hand")
    return write_alias(workdir, alias, entry)


# --- deciding -----------------------------------------------------------------------------------

def higher_is_better(metric: str) -> bool:
    """True for accuracy and the like; False for names containing "loss" or "error" (minimized)."""
    if not metric:
        raise PromotionError("promotion.metric is empty: name an evaluation figure (accuracy, reconstruction_error)")
    return not any(word in metric.lower() for word in LOWER_IS_BETTER)


def metric_score(figures: dict[str, float], metric: str, run_id: str) -> float:
    """``metric`` of run ``run_id``'s evaluation figures (``Evaluation.figures()``); :class:`PromotionError`
    listing the figures there are when the evaluation has no such figure."""
    if metric not in figures:
        known = ", ".join(sorted(figures)) or "none: the model's task has no evaluation"
        raise PromotionError(f"promotion.metric={metric!r}: run {run_id!r}'s evaluation has no such figure "
                             f"(it has: {known}); set promotion.metric to one of them")
    return figures[metric]


def decide(metric: str, challenger: float, champion: float | None, margin: float) -> Decision:
    """Whether the challenger's score beats the champion's on ``metric`` by ``margin`` (>= 0).

    Higher-is-better metrics promote when ``challenger >= champion + margin``; lower-is-better ones
    (loss, error) when ``challenger <= champion - margin`` (up to float rounding, so scores exactly
    ``margin`` apart promote). At ``margin`` 0 a tie promotes: a retrained
    model that scores the same is as good, and a strict ``>`` would keep a stale one forever. No
    champion (or one whose score is not a number) promotes; a challenger whose score is not a number
    is refused (:class:`PromotionError`), since no comparison with it means anything."""
    higher = higher_is_better(metric)
    if margin < 0 or not math.isfinite(margin):
        raise PromotionError(f"promotion.margin={margin}: must be a number >= 0 (how much better the challenger "
                             "must score than the champion)")
    if not math.isfinite(challenger):
        raise PromotionError(f"promotion.metric={metric!r}: the challenger's score is {challenger}, not a number: "
                             "its evaluation failed; it cannot be compared, so it is not promoted")
    if champion is None or not math.isfinite(champion):
        why = "no current model" if champion is None else f"the champion's score is {champion}"
        return Decision(True, f"{metric} {challenger:.4f}, {why}: promoted", challenger, champion, metric, margin)
    gain = challenger - champion if higher else champion - challenger
    # "at least margin" must hold when the scores are exactly margin apart (0.96 + 0.01 is not 0.97 in floats)
    wins = gain >= margin or math.isclose(gain, margin, rel_tol=1e-9, abs_tol=1e-12)
    reason = (f"{metric} {challenger:.4f} vs champion {champion:.4f} (margin {margin:.4f}): "
              f"{'promoted' if wins else 'not promoted'}")
    return Decision(wins, reason, challenger, champion, metric, margin)


# --- scoring by alias ---------------------------------------------------------------------------

def resolve_alias(workdir: str, alias: str, key: str = "infer.model_alias") -> AliasEntry:
    """The current entry of ``alias`` for scoring by alias (``key`` names the setting that asked).
    :class:`PromotionError` when the alias was never set (listing those that exist), or when its model
    file is gone or no longer the one promoted (its digest differs)."""
    entry = read_alias(workdir, alias)
    if entry is None:
        existing = ", ".join(list_aliases(workdir)) or "none yet"
        raise PromotionError(f"{key}={alias!r}: no model alias {alias!r} under "
                             f"{storage.redact(_models_dir(workdir))} (aliases there: {existing}). Set {key} to one "
                             f"of them, or promote a run first (dlpipe promote)")
    _check_digest(alias, entry, key)
    return entry


def _check_digest(alias: str, entry: AliasEntry, key: str) -> None:
    """Refuse a model file that changed after its promotion: scoring would use a model nobody evaluated."""
    where = storage.redact(entry.artifact)
    try:
        digest = artifact_digest(entry.artifact)
    except FileNotFoundError:
        raise PromotionError(f"{key}={alias!r}: entry {entry.number} names run {entry.run_id!r}'s model {where}, "
                             "which no longer exists. Promote another run (dlpipe promote)") from None
    if digest != entry.digest:
        raise PromotionError(f"{key}={alias!r}: the model file {where} of run {entry.run_id!r} was replaced after "
                             f"its promotion (entry {entry.number}: sha256 {entry.digest[:12]}..., now "
                             f"{digest[:12]}...): refusing to score with a model that was not evaluated. Promote "
                             "the run again (dlpipe promote) if the new file is intended")
