"""``dlpipe rl``: PPO on a Gymnasium environment, rollouts collected in parallel by Spark tasks.

Each iteration the driver broadcasts the policy (architecture + weights, ~20 KB), one Spark job of
``rl.num_actors`` tasks steps seeded environments with it (``pipelines.rl.rollout``, through
``mapInArrow``) and returns every step as Arrow; the driver computes GAE and runs the PPO update.
Every iteration is checkpointed (newest two kept) and appended to ``metrics.jsonl``; re-running
the same run id resumes after the last checkpoint. At the end the greedy policy plays
``rl.eval_episodes`` episodes (``summary.json``), optionally saved as Parquet for the ETL, and a
report with the return curve is written.
"""
from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pyspark.sql import SparkSession

import models
from pipelines.config import ConfigError, PipelineConfig, to_yaml
from pipelines.progress import IterationProgress
from pipelines.publish import atomic_dir, check_writable, write_json_atomic, write_text_atomic
from pipelines.tracking import Tracker, open_tracker
from pipelines.rl import gae as gae_lib
from pipelines.rl.ppo import UpdateSettings, annealed_lr, ppo_update
from pipelines.rl.report import write_rl_report
from pipelines.rl.rollout import SPARK_SCHEMA, RolloutSpec, env_spaces, policy_to_bytes, run_episodes, schema
from pipelines.session import describe
from pipelines.train.checkpoint import latest_checkpoint, save_checkpoint

POLICY_FILE = "policy.pt"  # <run>/model/policy.pt: models.to_artifact_dict of the final policy


class RolloutError(RuntimeError):
    """An iteration's rollouts did not come back; the message says why and which setting to change."""


def main(spark: SparkSession, config: PipelineConfig, on_iteration: Callable[[dict], None] | None = None) -> dict[str, Any]:
    """Train the policy, evaluate it greedily, write metrics, checkpoints, report and ``summary.json``;
    track the run (``tracking``: MLflow, TensorBoard; step = iteration)."""
    obs_shape, num_actions = env_spaces(config.rl.env_id)  # a bad env id or model: an error before any tracking
    model = build_policy(config, obs_shape, num_actions)
    check_writable(config.run_dir(), "workdir")
    with open_tracker(config, "rl") as tracker:
        summary = _train(spark, config, model, on_iteration, tracker)
        tracker.log_metrics({"eval": summary["eval"]}, step=summary["iterations"])
        for name in ("summary.json", "config.yaml", "metrics.jsonl"):
            tracker.log_artifact(config.run_dir() / name)
        for path in sorted(Path(summary["report"]).parent.glob("*")):
            tracker.log_artifact(path, "report")
        tracker.log_artifact(summary["policy"], "model")
    return summary


def _train(spark: SparkSession, config: PipelineConfig, model: models.DlpipeModel,
           on_iteration: Callable[[dict], None] | None, tracker: Tracker) -> dict[str, Any]:
    rc = config.rl
    run_dir = config.run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(run_dir / "config.yaml", to_yaml(config))
    optimizer = torch.optim.Adam(model.parameters(), lr=rc.lr, eps=1e-5)
    history = resume(run_dir / "checkpoints", fingerprint(config), model, optimizer)
    spec = RolloutSpec(rc.env_id, rc.envs_per_actor, rc.steps_per_env, rc.seed)
    progress = on_iteration or IterationProgress(rc.iterations)
    describe(spark, f"rl rollouts ({rc.num_actors} actors, {rc.env_id})")
    if history:
        print(f"dlpipe rl {config.run_id}: resuming after iteration {history[-1]['iteration']}", flush=True)
    for iteration in range(len(history), rc.iterations):
        started = time.monotonic()
        table = collect(spark, spec, policy_to_bytes(model), iteration, rc.num_actors, rc.rollout_timeout_s)
        rollout_s = time.monotonic() - started
        steps = to_steps(table, rc.num_actors * rc.envs_per_actor, rc.steps_per_env)
        started = time.monotonic()
        losses = learn(model, optimizer, steps, config, iteration)
        update_s = time.monotonic() - started
        record = iteration_record(iteration, history, steps, losses, rollout_s, update_s, optimizer)
        history.append(record)
        save_checkpoint(run_dir / "checkpoints", {"epoch": iteration + 1, "model": model.state_dict(),
                                                  "optimizer": optimizer.state_dict(), "history": json.dumps(history),
                                                  "manifest_hash": fingerprint(config)})
        write_text_atomic(run_dir / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in history))
        progress(record)
        tracker.log_metrics({k: v for k, v in record.items() if k != "iteration"}, step=record["iteration"])
    return finish(config, run_dir, model, history)


def learn(model: models.DlpipeModel, optimizer: torch.optim.Optimizer, steps: dict[str, np.ndarray],
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
    """The policy ``model.name`` names, initialised from ``rl.seed``; a ConfigError unless it is a policy."""
    torch.manual_seed(config.rl.seed)
    model = models.build(config.model.name, feature_shape=obs_shape, num_classes=num_actions, **config.model.params)
    if not callable(getattr(model, "act", None)):
        raise ConfigError(f"config key 'model.name' = {config.model.name!r} is not a policy model (it has no "
                          "`act`); dlpipe rl needs one, e.g. model.name=mlp_policy")
    return model


def fingerprint(config: PipelineConfig) -> str:
    """What a checkpoint must share with this run to be resumed: everything that shapes the rollouts
    and updates (not the iteration count, evaluation or timeouts)."""
    rc = config.to_dict()["rl"]
    for key in ("iterations", "eval_episodes", "save_trajectories", "rollout_timeout_s"):
        rc.pop(key)
    blob = json.dumps({"rl": rc, "model": config.to_dict()["model"]}, sort_keys=True).encode()
    return "rl-" + hashlib.sha256(blob).hexdigest()[:16]


def resume(folder: Path, expected: str, model: models.DlpipeModel, optimizer: torch.optim.Optimizer) -> list[dict]:
    """Load the newest checkpoint in ``folder`` into ``model`` and ``optimizer``; its metrics history
    ([] when there is none)."""
    try:
        state = latest_checkpoint(folder, expected)
    except ValueError:
        raise ConfigError(f"the checkpoints in {folder} were made with other rl/model settings: use a new "
                          f"run_id, or delete {folder} to start over") from None
    if state is None:
        return []
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return json.loads(state["history"])


def collect(spark: SparkSession, spec: RolloutSpec, policy: bytes, iteration: int, num_actors: int,
            timeout_s: float) -> pa.Table:
    """One Spark job: ``num_actors`` tasks each run ``rollout`` with the broadcast policy; all steps
    as one Arrow table ordered by (actor, env, step). Cancelled after ``timeout_s``."""
    sc = spark.sparkContext
    # Broadcast rather than a closure variable: fetched once per executor, not once per task.
    weights = sc.broadcast(policy)

    def actor_task(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        from pipelines.rl.rollout import policy_from_bytes, rollout

        model = policy_from_bytes(weights.value)
        for b in batches:
            for actor in b.column(0).to_pylist():
                yield rollout(spec, model, iteration, actor)

    frame = spark.range(num_actors, numPartitions=num_actors).mapInArrow(actor_task, SPARK_SCHEMA)
    group = f"dlpipe-rl-{uuid.uuid4().hex[:8]}"
    sc.setJobGroup(group, f"dlpipe rl rollouts, iteration {iteration}", interruptOnCancel=True)
    timer = threading.Timer(timeout_s, sc.cancelJobGroup, [group])
    timer.start()
    try:
        batches = frame._collect_as_arrow()  # pyspark 3.5 has no public DataFrame.toArrow
    except Exception as e:
        if not timer.is_alive():
            raise RolloutError(f"iteration {iteration}: the {num_actors} rollout tasks did not finish within "
                               f"rl.rollout_timeout_s={timeout_s:g}s and were cancelled: check that the cluster "
                               "has free task slots, or lower rl.steps_per_env / raise rl.rollout_timeout_s") from e
        raise
    finally:
        timer.cancel()
        sc.setLocalProperty("spark.jobGroup.id", None)
        weights.destroy()
    table = pa.Table.from_batches(batches, schema=schema())
    return table.sort_by([("actor", "ascending"), ("env", "ascending"), ("step", "ascending")])


def to_steps(table: pa.Table, envs: int, steps: int) -> dict[str, np.ndarray]:
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


def iteration_record(iteration: int, history: list[dict], steps: dict[str, np.ndarray], losses: dict[str, float],
                     rollout_s: float, update_s: float, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """One line of ``metrics.jsonl``."""
    returns, lengths = gae_lib.episode_stats(steps["reward"], steps["terminated"], steps["truncated"])
    collected = int(steps["reward"].size)
    return {
        "iteration": iteration + 1,
        "env_steps": (history[-1]["env_steps"] if history else 0) + collected,
        "episodes": len(returns),
        "mean_return": float(np.mean(returns)) if returns else None,
        "mean_length": float(np.mean(lengths)) if lengths else None,
        **{k: round(v, 6) for k, v in losses.items()},
        "lr": optimizer.param_groups[0]["lr"],
        "rollout_s": round(rollout_s, 3),
        "update_s": round(update_s, 3),
        "env_steps_per_s": round(collected / rollout_s, 1),
    }


def finish(config: PipelineConfig, run_dir: Path, model: models.DlpipeModel, history: list[dict]) -> dict[str, Any]:
    """Greedy evaluation, the trajectories (``rl.save_trajectories``), the policy file, report, summary."""
    rc = config.rl
    model.eval()
    started = time.monotonic()
    played = run_episodes(lambda obs: model.act(torch.from_numpy(obs).reshape(len(obs), *model.feature_shape),
                                                greedy=True)["actions"].numpy(),
                          rc.env_id, rc.eval_episodes, seed=rc.seed + 1_000_000, record=rc.save_trajectories)
    evaluation = {"episodes": rc.eval_episodes, "mean_return": float(np.mean(played["returns"])),
                  "std_return": float(np.std(played["returns"])), "mean_length": float(np.mean(played["lengths"])),
                  "seconds": round(time.monotonic() - started, 2)}
    policy_path = run_dir / "model" / POLICY_FILE
    policy_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = policy_path.with_name(f".{POLICY_FILE}.tmp-{uuid.uuid4().hex[:8]}")
    torch.save(models.to_artifact_dict(model), tmp)
    tmp.replace(policy_path)
    summary: dict[str, Any] = {"run_id": config.run_id, "env_id": rc.env_id, "model": config.model.name,
                               "num_actors": rc.num_actors, "iterations": len(history),
                               "env_steps": history[-1]["env_steps"] if history else 0,
                               "train_seconds": round(sum(h["rollout_s"] + h["update_s"] for h in history), 1),
                               "final": history[-1] if history else {}, "eval": evaluation,
                               "policy": str(policy_path), "status": "ok"}
    if rc.save_trajectories:
        summary["trajectories"] = str(write_trajectories(run_dir / "trajectories", played))
    summary["report"] = str(write_rl_report(run_dir, history, evaluation, rc.env_id))
    write_json_atomic(run_dir / "summary.json", summary)
    print(f"dlpipe rl {config.run_id}: greedy evaluation over {rc.eval_episodes} episodes: mean return "
          f"{evaluation['mean_return']:.1f} +- {evaluation['std_return']:.1f}", flush=True)
    return summary


def write_trajectories(folder: Path, played: dict[str, Any]) -> Path:
    """Evaluation episodes as a tabular Parquet source for the ETL: ``id`` (episode-step), one float
    column per observation value (``obs_0``...), ``action`` (the greedy action: the label)."""
    obs = played["obs"]
    columns = {"id": pa.array([f"ep{e:05d}-t{s:05d}" for e, s in zip(played["episode"], played["step"])])}
    columns.update({f"obs_{i}": pa.array(obs[:, i].astype(np.float32)) for i in range(obs.shape[1])})
    columns["action"] = pa.array(played["action"].astype(np.int64))
    with atomic_dir(folder) as tmp:
        pq.write_table(pa.table(columns), tmp / "part-00000.parquet")
    return folder
