"""``dlpipe rl``: PPO on a Gymnasium environment, rollouts collected in parallel by Spark tasks.

Each iteration the driver broadcasts the policy (architecture + weights, ~20 KB) and one Spark job
of ``rl.num_actors`` tasks steps each actor's environments with it (``pipelines.rl.rollout``),
continuing them from where the previous iteration left them (the actors' states travel with the
tasks), and returns every step as Arrow; the driver computes GAE and runs the PPO update. Every
iteration is checkpointed (newest two kept, with the actors' states) and appended to
``metrics.jsonl``; re-running the same run id resumes after the last checkpoint exactly. At the end
the greedy policy plays ``rl.eval_episodes`` episodes (``summary.json``), optionally saved as
Parquet for the ETL, and a report with the return curve is written. All of it through
``pipelines.storage``: the workdir may be in any store.
"""
from __future__ import annotations

import hashlib
import io
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from numpy.typing import NDArray
from pyspark.sql import SparkSession

import models
from pipelines import storage
from pipelines.config import PipelineConfig
from pipelines.formats import Record
from pipelines.lease import check_leases
from pipelines.publish import committed_folder, publishing
from pipelines.rl import gae as gae_lib
from pipelines.rl import statekey
from pipelines.rl.checkpoint import IterationRecord, RLCheckpoint, latest_rl_checkpoint, save_rl_checkpoint
from pipelines.rl.ppo import UpdateSettings, annealed_lr, ppo_update
from pipelines.rl.report import IterationProgress, write_rl_report
from pipelines.rl.rollout import ActorResult, RolloutSpec, env_spaces, policy_to_bytes, run_episodes, schema
from pipelines.runfolder import RunFolder
from pipelines.session import describe
from pipelines.tracking import Tracker, open_tracker


class RolloutError(RuntimeError):
    """An iteration's rollouts did not come back; the message says why and which setting to change."""


@dataclass(frozen=True)
class GreedyEvaluation(Record):
    episodes: int
    mean_return: float
    std_return: float
    mean_length: float
    seconds: float


@dataclass(frozen=True)
class RLSummary(Record):
    """``<run>/summary.json`` of ``dlpipe rl``, and what :func:`main` returns."""

    run_id: str
    env_id: str
    model: str
    num_actors: int
    iterations: int
    env_steps: int
    train_seconds: float
    final: IterationRecord | None
    eval: GreedyEvaluation
    policy: str
    report: str
    status: str = "ok"
    trajectories: str = ""


@dataclass
class Collected:
    """One iteration's rollouts: the steps of every actor, their whole episodes, their states."""

    steps: pa.Table
    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    states: list[bytes] = field(default_factory=list)


def main(spark: SparkSession, config: PipelineConfig,
         on_iteration: Callable[[IterationRecord], None] | None = None) -> RLSummary:
    """Train the policy, evaluate it greedily, write metrics, checkpoints, report and ``summary.json``;
    track the run (``tracking``: MLflow, TensorBoard; step = iteration). The config was validated
    for ``rl`` before Spark started (a policy model); the environment is checked here, first."""
    obs_shape, num_actions = env_spaces(config.rl.env_id)  # a bad env id: an error before anything is written
    model = build_policy(config, obs_shape, num_actions)
    run_dir = config.run_dir()
    storage.check_location(run_dir, "workdir")
    with open_tracker(config, "rl") as tracker:
        summary = _train(spark, config, model, on_iteration, tracker)
        tracker.log_metrics({"eval": summary.eval.to_dict()}, step=summary.iterations)
        for location in RunFolder(run_dir).tracked_files:
            tracker.log_artifact(location)
        for entry in storage.list_files(storage.parent(summary.report), recursive=False):
            tracker.log_artifact(entry.location, "report")
        tracker.log_artifact(summary.policy, "model")
    return summary


def _train(spark: SparkSession, config: PipelineConfig, model: models.DlpipeModel,
           on_iteration: Callable[[IterationRecord], None] | None, tracker: Tracker) -> RLSummary:
    rc = config.rl
    run_dir = config.run_dir()
    folder = RunFolder(run_dir)
    folder.write_config(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=rc.lr, eps=1e-5)
    checkpoints = folder.checkpoints
    history: list[IterationRecord] = []
    states: list[bytes | None] = [None] * rc.num_actors
    unusable: list[str] = []

    def skipped(location: str, error: Exception) -> None:
        unusable.append(location)
        print(f"dlpipe rl {config.run_id}: checkpoint {storage.redact(location)} was read but does not decode "
              f"({error}): skipping it", flush=True)

    key = statekey.state_key()
    found = latest_rl_checkpoint(checkpoints, fingerprint(config), skipped)
    if found is None and unusable:
        print(f"dlpipe rl {config.run_id}: none of the {len(unusable)} checkpoint(s) decodes: starting from "
              "iteration 1", flush=True)
    if found is not None:
        model.load_state_dict(found.model)
        optimizer.load_state_dict(found.optimizer)
        history = list(found.history)
        if len(found.actors) == rc.num_actors:
            if statekey.verified(found.actors, found.actor_macs, key):
                states = list(found.actors)
            else:  # unpickling them would run whatever they hold
                print(f"dlpipe rl {config.run_id}: the actors' environment states in the checkpoint are not signed "
                      f"with this job's key (${statekey.ENV}, else {statekey.key_file()}): not loaded; the policy "
                      "resumes, the environments start new episodes", flush=True)
        print(f"dlpipe rl {config.run_id}: resuming after iteration {found.iteration}", flush=True)
    spec = RolloutSpec(rc.env_id, rc.envs_per_actor, rc.steps_per_env, rc.seed)
    progress = on_iteration or IterationProgress(rc.iterations)
    describe(spark, f"rl rollouts ({rc.num_actors} actors, {rc.env_id})")
    for iteration in range(len(history), rc.iterations):
        check_leases()
        started = time.monotonic()
        collected = collect(spark, spec, policy_to_bytes(model), iteration, states, rc.rollout_timeout_s)
        rollout_s = time.monotonic() - started
        steps = to_steps(collected.steps, rc.num_actors * rc.envs_per_actor, rc.steps_per_env)
        started = time.monotonic()
        losses = learn(model, optimizer, steps, config, iteration)
        update_s = time.monotonic() - started
        kept = list(collected.states)  # each actor's environment state: the next iteration's, and checkpointed
        states[:] = kept
        record = iteration_record(iteration, history, collected, steps, losses, rollout_s, update_s, optimizer)
        history.append(record)
        save_rl_checkpoint(checkpoints, RLCheckpoint(iteration + 1, model.state_dict(), optimizer.state_dict(),
                                                     list(history), fingerprint(config), actors=kept,
                                                     actor_macs=[statekey.sign(s, key) for s in kept]))
        storage.write_text(folder.metrics,
                           "".join(json.dumps(h.to_dict()) + "\n" for h in history))
        progress(record)
        tracker.log_metrics({k: v for k, v in record.to_dict().items() if k != "iteration"}, step=record.iteration)
    return finish(config, run_dir, model, history)


def learn(model: models.DlpipeModel, optimizer: torch.optim.Optimizer, steps: dict[str, NDArray[Any]],
          config: PipelineConfig, iteration: int) -> dict[str, float]:
    """One PPO update on one iteration's steps (:func:`to_steps`): GAE, then epochs of minibatches."""
    rc = config.rl
    for group in optimizer.param_groups:
        group["lr"] = annealed_lr(rc.lr, iteration, rc.iterations, rc.anneal_lr)
    advantages, returns = gae_lib.gae(steps["reward"], steps["value"], steps["next_value"],
                                      steps["terminated"], steps["truncated"], rc.gamma, rc.gae_lambda)
    batch = {"features": torch.from_numpy(steps["obs"].reshape(-1, *model.feature_shape)),
             "actions": torch.from_numpy(steps["action"].reshape(-1)),
             "logprobs": torch.from_numpy(steps["logprob"].reshape(-1)),
             "advantages": torch.from_numpy(advantages.reshape(-1)),
             "returns": torch.from_numpy(returns.reshape(-1))}
    settings = UpdateSettings(rc.update_epochs, rc.minibatches, rc.max_grad_norm, rc.normalize_advantages)
    return ppo_update(model, optimizer, batch, settings, minibatch_generator(rc.seed, iteration))


def minibatch_generator(seed: int, iteration: int) -> torch.Generator:
    """The generator that orders iteration ``iteration``'s minibatches: seeded per iteration, so a
    resumed run repeats them exactly."""
    state = np.random.SeedSequence([seed, iteration, 2**31 - 1]).generate_state(1)  # apart from actor_seeds' streams
    return torch.Generator().manual_seed(int(state[0]))


def build_policy(config: PipelineConfig, obs_shape: tuple[int, ...], num_actions: int) -> models.DlpipeModel:
    """The policy ``model.name`` names (a policy: checked by ``pipelines.preflight``), initialised from ``rl.seed``."""
    torch.manual_seed(config.rl.seed)
    return models.build(config.model.name, feature_shape=obs_shape, num_classes=num_actions, **config.model.params)


def fingerprint(config: PipelineConfig) -> str:
    """What a checkpoint must share with this run to be resumed: everything that shapes the rollouts
    and updates (not the iteration count, evaluation or timeouts)."""
    rc = config.to_dict()["rl"]
    for key in ("iterations", "eval_episodes", "save_trajectories", "rollout_timeout_s"):
        rc.pop(key)
    blob = json.dumps({"rl": rc, "model": config.to_dict()["model"]}, sort_keys=True).encode()
    return "rl-" + hashlib.sha256(blob).hexdigest()[:16]


def collect(spark: SparkSession, spec: RolloutSpec, policy: bytes, iteration: int, states: list[bytes | None],
            timeout_s: float) -> Collected:
    """One Spark job: an actor task per entry of ``states``, each continuing its environments with
    the broadcast policy; their steps as one Arrow table ordered by (actor, env, step), their whole
    episodes and their new states. Cancelled after ``timeout_s``."""
    sc = spark.sparkContext
    # Broadcast rather than a closure variable: fetched once per executor, not once per task.
    weights = sc.broadcast(policy)

    def actor_task(item: tuple[int, bytes | None]) -> ActorResult:
        from pipelines.rl.rollout import policy_from_bytes, rollout

        actor, state = item
        return rollout(spec, policy_from_bytes(weights.value), iteration, actor, state)

    rdd = sc.parallelize(list(enumerate(states)), len(states)).map(actor_task)
    group = f"dlpipe-rl-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, f"dlpipe rl rollouts, iteration {iteration}", interruptOnCancel=True)
    timer = threading.Timer(timeout_s, sc.cancelJobGroup, [group])
    timer.start()
    try:
        results = rdd.collect()
    except Exception as e:
        if not timer.is_alive():
            raise RolloutError(f"iteration {iteration}: the {len(states)} rollout tasks did not finish within "
                               f"rl.rollout_timeout_s={timeout_s:g}s and were cancelled: check that the cluster "
                               "has free task slots, or lower rl.steps_per_env / raise rl.rollout_timeout_s") from e
        raise
    finally:
        timer.cancel()
        # None clears the property (Java null), though pyspark's stub says str
        sc.setLocalProperty("spark.jobGroup.id", None)  # type: ignore[arg-type]  # see the line above
        weights.destroy()
    results = sorted(results, key=lambda r: r.actor)
    table = pa.concat_tables([r.table() for r in results]) if results else schema().empty_table()
    return Collected(table, [x for r in results for x in r.returns], [x for r in results for x in r.lengths],
                     [r.state for r in results])


def to_steps(table: pa.Table, envs: int, steps: int) -> dict[str, NDArray[Any]]:
    """Arrow rows (actor, env, step order) -> arrays shaped (steps, envs) (``obs``: (steps, envs, obs))."""
    if table.num_rows != envs * steps:
        raise RolloutError(f"the actors returned {table.num_rows} steps, expected {envs} environments x {steps} "
                           "steps; a task died without an error?")
    out = {}
    for name in ("action", "logprob", "value", "next_value", "reward", "terminated", "truncated"):
        out[name] = np.ascontiguousarray(table.column(name).to_numpy().reshape(envs, steps).T)
    flat = table.column("obs").combine_chunks().flatten().to_numpy()
    out["obs"] = np.ascontiguousarray(flat.reshape(envs, steps, -1).swapaxes(0, 1))
    return out


def iteration_record(iteration: int, history: list[IterationRecord], collected: Collected,
                     steps: dict[str, NDArray[Any]], losses: dict[str, float], rollout_s: float, update_s: float,
                     optimizer: torch.optim.Optimizer) -> IterationRecord:
    """One line of ``metrics.jsonl``: the episodes that ended in this iteration, whole."""
    returns, lengths = collected.returns, collected.lengths
    collected_steps = int(steps["reward"].size)
    return IterationRecord(
        iteration=iteration + 1,
        env_steps=(history[-1].env_steps if history else 0) + collected_steps,
        episodes=len(returns),
        mean_return=float(np.mean(returns)) if returns else None,
        mean_length=float(np.mean(lengths)) if lengths else None,
        lr=optimizer.param_groups[0]["lr"],
        rollout_s=round(rollout_s, 3),
        update_s=round(update_s, 3),
        env_steps_per_s=round(collected_steps / rollout_s, 1),
        losses={k: round(v, 6) for k, v in losses.items()},
    )


def finish(config: PipelineConfig, run_dir: str, model: models.DlpipeModel,
           history: list[IterationRecord]) -> RLSummary:
    """Greedy evaluation, the trajectories (``rl.save_trajectories``), the policy file, report, summary."""
    rc = config.rl
    model.eval()
    started = time.monotonic()
    policy = cast(models.Acts, model)  # dlpipe rl checked that the model acts before training it
    played = run_episodes(lambda obs: policy.act(torch.from_numpy(obs).reshape(len(obs), *model.feature_shape),
                                                greedy=True)["actions"].numpy(),
                          rc.env_id, rc.eval_episodes, seed=rc.seed + 1_000_000, record=rc.save_trajectories)
    evaluation = GreedyEvaluation(episodes=rc.eval_episodes, mean_return=float(np.mean(played["returns"])),
                                  std_return=float(np.std(played["returns"])),
                                  mean_length=float(np.mean(played["lengths"])),
                                  seconds=round(time.monotonic() - started, 2))
    folder = RunFolder(run_dir)
    policy_path = folder.policy
    buffer = io.BytesIO()
    torch.save(models.to_artifact_dict(model), buffer)
    storage.write_bytes(policy_path, buffer.getvalue())
    trajectories = write_trajectories(folder.trajectories, played) if rc.save_trajectories else ""
    report = write_rl_report(run_dir, config.run_id, history, evaluation, rc.env_id)
    summary = RLSummary(run_id=config.run_id, env_id=rc.env_id, model=config.model.name, num_actors=rc.num_actors,
                        iterations=len(history), env_steps=history[-1].env_steps if history else 0,
                        train_seconds=round(sum(h.rollout_s + h.update_s for h in history), 1),
                        final=history[-1] if history else None, eval=evaluation, policy=policy_path, report=report,
                        trajectories=trajectories)
    storage.write_text(folder.summary, summary.to_json())
    print(f"dlpipe rl {config.run_id}: greedy evaluation over {rc.eval_episodes} episodes: mean return "
          f"{evaluation.mean_return:.1f} +- {evaluation.std_return:.1f}", flush=True)
    return summary


def write_trajectories(target: str, played: dict[str, Any]) -> str:
    """Evaluation episodes as a tabular Parquet source for the ETL: ``id`` (episode-step), one float
    column per observation value (``obs_0``...), ``action`` (the greedy action: the label). Committed
    under ``target``; returns the committed folder (the ETL reads it as etl.source.path)."""
    obs = played["obs"]
    columns = {"id": pa.array([f"ep{e:05d}-t{s:05d}" for e, s in zip(played["episode"], played["step"])])}
    columns.update({f"obs_{i}": pa.array(obs[:, i].astype(np.float32)) for i in range(obs.shape[1])})
    columns["action"] = pa.array(played["action"].astype(np.int64))
    with publishing(target) as attempt:
        buffer = io.BytesIO()
        pq.write_table(pa.table(columns), buffer)
        storage.write_bytes(storage.join(attempt.folder, "part-00000.parquet"), buffer.getvalue())
    return committed_folder(target) or target
