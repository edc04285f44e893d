"""Champion/challenger promotion (pipelines.promotion): alias entries as numbered, conditionally created
files on real storage (a tmp folder; the race also on moto's S3 server), the decision rule, rollback
by hand, and the checks scoring by alias makes. Artifacts are a few fake bytes: promotion only hashes them."""
from __future__ import annotations

import hashlib
import json
import threading
import uuid

import pytest

from pipelines import promotion, storage
from pipelines.promotion import AliasEntry, Decision, PromotionConflict, PromotionError
from pipelines.runfolder import RunFolder


def _train(workdir: str, run_id: str, data: bytes | None = None) -> str:
    """A run folder holding a fake model file; its location."""
    artifact = RunFolder(storage.join(workdir, "runs", run_id)).artifact
    storage.write_bytes(artifact, data if data is not None else f"weights of {run_id}".encode())
    return artifact


def _challenger(workdir: str, alias: str, run_id: str, score: float) -> AliasEntry:
    """What a winning challenger writes: the entry after the one it read."""
    artifact = _train(workdir, run_id)
    current = promotion.read_alias(workdir, alias)
    entry = AliasEntry(number=current.number + 1 if current else 1, run_id=run_id, artifact=artifact,
                       digest=promotion.artifact_digest(artifact), metric="accuracy", score=score,
                       champion_run=current.run_id if current else "",
                       champion_score=current.score if current else None, evaluated_on="digits v1 split test (30 rows)")
    return promotion.write_alias(workdir, alias, entry)


@pytest.fixture(params=["local", "s3"])
def any_workdir(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "work")
    server = request.getfixturevalue("s3")
    server.make_bucket("dlpipe-promotion")
    return f"s3://dlpipe-promotion/w-{uuid.uuid4().hex[:8]}"


# --- entries --------------------------------------------------------------------------------------

def test_an_alias_never_set_reads_as_none_and_is_not_listed(tmp_path):
    assert promotion.read_alias(str(tmp_path), "current") is None
    assert promotion.alias_history(str(tmp_path), "current") == []
    assert promotion.list_aliases(str(tmp_path)) == []


def test_the_first_promotion_creates_entry_1_with_the_artifacts_digest(tmp_path):
    workdir = str(tmp_path)
    entry = _challenger(workdir, "current", "r1", 0.95)
    location = tmp_path / "models" / "current" / "_alias-00000001.json"
    assert location.is_file()
    assert entry.number == 1 and entry.champion_run == "" and entry.by == "challenger"
    assert entry.digest == hashlib.sha256(b"weights of r1").hexdigest()
    assert entry.at.endswith("+00:00") and len(entry.at) == len("2025-01-01T00:00:00+00:00")
    assert promotion.read_alias(workdir, "current") == entry
    assert promotion.alias_dir(workdir, "current") == str(tmp_path / "models" / "current")
    assert promotion.list_aliases(workdir) == ["current"]


def test_history_is_oldest_first_and_the_newest_entry_is_current(tmp_path):
    workdir = str(tmp_path)
    for run_id, score in (("a", 0.90), ("b", 0.93), ("c", 0.97)):
        _challenger(workdir, "current", run_id, score)
    history = promotion.alias_history(workdir, "current")
    assert [(e.number, e.run_id, e.champion_run) for e in history] == [(1, "a", ""), (2, "b", "a"), (3, "c", "b")]
    assert history[2].champion_score == 0.93
    current = promotion.read_alias(workdir, "current")
    assert current is not None and current.run_id == "c"


def test_entries_are_kept_and_a_gap_is_refused(tmp_path):
    workdir = str(tmp_path)
    first = _challenger(workdir, "current", "a", 0.9)
    with pytest.raises(PromotionError, match="cannot write entry 3: the newest is 1, so the next is 2"):
        promotion.write_alias(workdir, "current", AliasEntry(3, "b", first.artifact, first.digest))
    with pytest.raises(PromotionError, match="cannot write entry 0"):
        promotion.write_alias(workdir, "current", AliasEntry(0, "b", first.artifact, first.digest))


def test_a_writer_that_read_a_stale_entry_is_refused_and_told_who_won(tmp_path):
    workdir = str(tmp_path)
    _challenger(workdir, "current", "a", 0.90)
    won = _challenger(workdir, "current", "b", 0.95)  # read entry 1, wrote 2
    stale = AliasEntry(2, "c", _train(workdir, "c"), "0" * 64, metric="accuracy", score=0.96, champion_run="a")
    with pytest.raises(PromotionConflict) as refused:
        promotion.write_alias(workdir, "current", stale)
    message = str(refused.value)
    for part in ("'current'", "entry 2", "run 'b'", "accuracy 0.9500", "read entry 1", "run 'c' was not promoted",
                 "re-run `dlpipe promote`"):
        assert part.lower() in message.lower(), (part, message)
    assert promotion.alias_history(workdir, "current")[-1] == won  # the winner's entry was not touched


def test_of_two_writers_that_read_entry_n_exactly_one_creates_n_plus_1(any_workdir):
    workdir = any_workdir
    _challenger(workdir, "current", "champion", 0.90)
    read = promotion.read_alias(workdir, "current")
    assert read is not None
    barrier = threading.Barrier(2)
    won: list[str] = []
    refused: list[PromotionConflict] = []

    def promote(run_id: str) -> None:
        artifact = _train(workdir, run_id)
        entry = AliasEntry(read.number + 1, run_id, artifact, promotion.artifact_digest(artifact),
                           metric="accuracy", score=0.95, champion_run=read.run_id, champion_score=read.score)
        barrier.wait()  # both have read entry 1 and now write entry 2
        try:
            promotion.write_alias(workdir, "current", entry)
            won.append(run_id)
        except PromotionConflict as e:
            refused.append(e)

    threads = [threading.Thread(target=promote, args=(run_id,)) for run_id in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 1, (won, refused)
    (loser,) = {"x", "y"} - set(won)
    assert f"run {won[0]!r}" in str(refused[0]) and f"run {loser!r} was not promoted" in str(refused[0])
    history = promotion.alias_history(workdir, "current")
    assert [(e.number, e.run_id) for e in history] == [(1, "champion"), (2, won[0])]  # no gap, no duplicate


# --- deciding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric,expected", [("accuracy", True), ("f1", True), ("reconstruction_error", False),
                                             ("error_vs_baseline", False), ("val_loss", False), ("Loss", False)])
def test_higher_is_better_unless_the_name_says_loss_or_error(metric, expected):
    assert promotion.higher_is_better(metric) is expected


def test_without_a_champion_the_challenger_is_promoted():
    decision = promotion.decide("accuracy", 0.5, None, 0.1)
    assert decision == Decision(True, "accuracy 0.5000, no current model: promoted", 0.5, None, "accuracy", 0.1)


@pytest.mark.parametrize("challenger,champion,margin,promote", [
    (0.9720, 0.9610, 0.0, True),  # better
    (0.9610, 0.9610, 0.0, True),  # a tie promotes at margin 0 (a retrained, equally good model)
    (0.9609, 0.9610, 0.0, False),  # worse
    (0.97, 0.96, 0.01, True),  # exactly margin better: promoted, despite 0.96 + 0.01 != 0.97 in floats
    (0.9699, 0.96, 0.01, False),  # better, but by less than the margin
])
def test_a_higher_is_better_metric_promotes_at_champion_plus_margin(challenger, champion, margin, promote):
    assert promotion.decide("accuracy", challenger, champion, margin).promote is promote


@pytest.mark.parametrize("challenger,champion,margin,promote", [
    (0.20, 0.25, 0.0, True),
    (0.25, 0.25, 0.0, True),
    (0.26, 0.25, 0.0, False),
    (0.24, 0.25, 0.01, True),  # exactly margin lower
    (0.245, 0.25, 0.01, False),
])
def test_a_lower_is_better_metric_promotes_at_champion_minus_margin(challenger, champion, margin, promote):
    assert promotion.decide("reconstruction_error", challenger, champion, margin).promote is promote


def test_the_reason_is_one_sentence_with_both_scores():
    assert promotion.decide("accuracy", 0.961, 0.972, 0.0).reason == (
        "accuracy 0.9610 vs champion 0.9720 (margin 0.0000): not promoted")
    assert promotion.decide("val_loss", 0.30, 0.35, 0.02).reason == (
        "val_loss 0.3000 vs champion 0.3500 (margin 0.0200): promoted")


def test_bad_metrics_margins_and_scores_are_refused_by_name():
    with pytest.raises(PromotionError, match="promotion.metric is empty"):
        promotion.decide("", 0.9, 0.8, 0.0)
    with pytest.raises(PromotionError, match=r"promotion.margin=-0.1: must be a number >= 0"):
        promotion.decide("accuracy", 0.9, 0.8, -0.1)
    with pytest.raises(PromotionError, match="the challenger's score is nan"):
        promotion.decide("accuracy", float("nan"), 0.8, 0.0)
    assert promotion.decide("accuracy", 0.5, float("nan"), 0.0).promote  # a broken champion is replaced
    with pytest.raises(PromotionError, match=r"run 'r7'.*has no such figure \(it has: accuracy\); set promotion"):
        promotion.metric_score({"accuracy": 0.9}, "f1", "r7")
    assert promotion.metric_score({"accuracy": 0.9}, "accuracy", "r7") == 0.9


# --- by hand, and scoring by alias ---------------------------------------------------------------

def test_promote_by_hand_rolls_back_to_an_older_run(tmp_path):
    workdir = str(tmp_path)
    _challenger(workdir, "current", "A", 0.96)
    _challenger(workdir, "current", "B", 0.97)
    entry = promotion.promote_by_hand(workdir, "current", "A", reason="B misclassifies sevens in production")
    assert (entry.number, entry.run_id, entry.champion_run, entry.by) == (3, "A", "B", "hand")
    assert entry.metric == "" and entry.score is None and entry.reason == "B misclassifies sevens in production"
    assert entry.digest == hashlib.sha256(b"weights of A").hexdigest()
    assert entry.artifact == RunFolder(str(tmp_path / "runs" / "A")).artifact
    assert promotion.resolve_alias(workdir, "current") == entry
    assert [e.run_id for e in promotion.alias_history(workdir, "current")] == ["A", "B", "A"]


def test_promote_by_hand_refuses_a_run_without_a_model(tmp_path):
    with pytest.raises(PromotionError, match=r"run 'ghost' has no model: .*runs/ghost/model/model.pt does not exist. "
                                             r"Train it first"):
        promotion.promote_by_hand(str(tmp_path), "current", "ghost")
    with pytest.raises(PromotionError, match="run id '../x' is not a valid name"):
        promotion.promote_by_hand(str(tmp_path), "current", "../x")
    with pytest.raises(PromotionError, match="model alias 'a/b' is not a valid name"):
        promotion.read_alias(str(tmp_path), "a/b")


def test_resolve_alias_refuses_a_model_file_replaced_after_its_promotion(tmp_path):
    workdir = str(tmp_path)
    entry = _challenger(workdir, "current", "r1", 0.95)
    _train(workdir, "r1", b"retrained in place")
    with pytest.raises(PromotionError, match=r"infer.model_alias='current': the model file .*model.pt of run 'r1' "
                                             r"was replaced after its promotion \(entry 1: sha256 "
                                             + entry.digest[:12]):
        promotion.resolve_alias(workdir, "current")
    storage.delete(entry.artifact)
    with pytest.raises(PromotionError, match="which no longer exists"):
        promotion.resolve_alias(workdir, "current")


def test_resolve_alias_names_the_key_and_lists_the_aliases_there_are(tmp_path):
    workdir = str(tmp_path)
    with pytest.raises(PromotionError, match=r"infer.model_alias='current': .*\(aliases there: none yet\)"):
        promotion.resolve_alias(workdir, "current")
    _challenger(workdir, "prod", "r1", 0.9)
    _challenger(workdir, "staging", "r2", 0.9)
    (tmp_path / "models" / "empty").mkdir()  # a folder without entries is no alias
    with pytest.raises(PromotionError, match=r"run.alias='current': .*\(aliases there: prod, staging\)\. Set "
                                             r"run.alias to one of them"):
        promotion.resolve_alias(workdir, "current", key="run.alias")
    assert promotion.resolve_alias(workdir, "prod").run_id == "r1"


# --- the format -----------------------------------------------------------------------------------

def test_entries_and_decisions_round_trip_through_json(tmp_path):
    entry = AliasEntry(4, "r9", "s3://bucket/w/runs/r9/model/model.pt", "ab" * 32, metric="accuracy", score=0.97,
                       champion_run="r8", champion_score=0.96, evaluated_on="digits v4 split test (300 rows)",
                       reason="accuracy 0.9700 vs champion 0.9600 (margin 0.0000): promoted",
                       at="2025-01-01T00:00:00+00:00")
    assert AliasEntry.from_json(entry.to_json()) == entry
    assert json.loads(entry.to_json())["champion_score"] == 0.96
    first = AliasEntry(1, "r1", "/w/runs/r1/model/model.pt", "cd" * 32, by="hand")
    assert AliasEntry.from_json(first.to_json()) == first and json.loads(first.to_json())["score"] is None
    decision = promotion.decide("accuracy", 0.97, 0.96, 0.0)
    assert Decision.from_json(decision.to_json()) == decision
    written = _challenger(str(tmp_path), "current", "r1", 0.9)
    text = (tmp_path / "models" / "current" / "_alias-00000001.json").read_text()
    assert AliasEntry.from_json(text) == written
