"""``python -m benchmarks rl``: rollout throughput (env steps/s) of dlpipe's Spark actors vs Gymnasium's vector envs.

Every contender collects the same number of environment steps per iteration (``rl.num_actors`` x
envs per actor x steps per env) with the same policy (``mlp_policy``, 64-64 tanh, one torch thread
per process), sampling actions as PPO does:

- ``dlpipe_spark_actors``: one iteration of ``dlpipe rl``'s collection, ``pipelines.rl.job.collect``:
  broadcast the policy, a Spark job of ``num_actors`` tasks each stepping its own ``SyncVectorEnv``
  (continued from the state the previous iteration returned, as ``dlpipe rl`` does), the steps back
  as Arrow, sorted; the whole wall time of the job counts;
- ``sync_vector_env_1_process``: one process stepping a ``SyncVectorEnv`` of all the environments,
  one batched policy call per step;
- ``async_vector_env_N_processes``: Gymnasium's ``AsyncVectorEnv`` with as many worker processes
  (one environment each) as dlpipe has actors; the policy runs in the parent, one batched call per step;
- ``spark_job_noop``: the same Spark job shape (broadcast, ``num_actors`` RDD tasks, one result each)
  with tasks that step nothing: the fixed per-iteration cost of a Spark job (seconds);
- the sweep ``dlpipe_A_actors_S_steps``: dlpipe's iteration for each number of actors and steps per env
  of the size, with the no-op job of the same actors beside it: Spark's share of the iteration
  (``spark_overhead_fraction``) as actors and steps grow.

``ratio_vs_async_vector_env`` and ``ratio_vs_sync_vector_env`` = dlpipe's env steps/s over theirs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

import models
from benchmarks import harness
from models.policy import MLPPolicy
from pipelines.config import PipelineConfig, RLConfig
from pipelines.rl.job import collect
from pipelines.rl.rollout import RolloutSpec, env_spaces, make_envs, policy_to_bytes, schema

NAME = "rl"


@dataclass(frozen=True)
class Size:
    """What one size of the benchmark runs: envs per actor, steps per env, repeats; the sweep's grid."""

    envs_per_actor: int
    steps_per_env: int
    repeats: int
    sweep_actors: tuple[int, ...]
    sweep_steps: tuple[int, ...]


SIZES = {
    "tiny": Size(envs_per_actor=2, steps_per_env=64, repeats=1, sweep_actors=(1, 2), sweep_steps=(32, 128)),
    "small": Size(envs_per_actor=8, steps_per_env=512, repeats=5, sweep_actors=(1, 2, 4),
                  sweep_steps=(128, 512, 2048)),
    "large": Size(envs_per_actor=16, steps_per_env=1024, repeats=5, sweep_actors=(1, 2, 4, 8),
                  sweep_steps=(256, 1024, 4096)),
}
SWEEP_REPEATS = 3


def run(spark: Any, config: PipelineConfig, size: str) -> dict[str, Any]:
    """Run the rl benchmark at ``size``; print its table, write ``rl.json``, return its JSON."""
    s = SIZES[size]
    rc = config.rl
    actors, envs, steps = rc.num_actors, s.envs_per_actor, s.steps_per_env
    total = actors * envs * steps
    obs_shape, num_actions = env_spaces(rc.env_id)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    # models.build is typed by the contract (DlpipeModel); "mlp_policy" builds an MLPPolicy, which acts.
    policy = cast(MLPPolicy, models.build("mlp_policy", feature_shape=obs_shape, num_classes=num_actions)).eval()
    blob = policy_to_bytes(policy)
    spec = RolloutSpec(rc.env_id, envs, steps, rc.seed)
    report = harness.Report(NAME, size)
    report.params = {"env_id": rc.env_id, "num_actors": actors, "envs_per_actor": envs, "steps_per_env": steps,
                     "env_steps_per_iteration": total, "repeats": s.repeats}
    figures = _measure(spark, rc, s, policy, blob, spec)
    _record(report, figures, actors, envs, steps)
    _overhead_sweep(spark, rc, policy, s, report)
    _ratios(report, total)
    return harness.finish(report, config)


def _measure(spark: Any, rc: RLConfig, s: Size, policy: MLPPolicy, blob: bytes,
             spec: RolloutSpec) -> dict[str, list[float]]:
    """The four contenders taking turns round by round (one warm-up round), on environments made here
    and closed after; dlpipe's actors continue from the states the previous iteration returned."""
    import gymnasium as gym

    actors, envs, steps = rc.num_actors, s.envs_per_actor, s.steps_per_env
    total = actors * envs * steps
    sync_envs = make_envs(rc.env_id, actors * envs)
    async_envs = gym.vector.AsyncVectorEnv([lambda: gym.make(rc.env_id)] * actors, context="spawn",
                                           autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    rounds: dict[str, Any] = {"n": 0, "states": [None] * actors}  # actors' environments live on, as in dlpipe rl

    def spark_actors() -> float:
        rounds["n"] += 1
        started = time.perf_counter()
        collected = collect(spark, spec, blob, rounds["n"], rounds["states"], rc.rollout_timeout_s)
        elapsed = time.perf_counter() - started
        assert collected.steps.num_rows == total
        rounds["states"] = list(collected.states)
        return total / elapsed

    try:
        harness.log(NAME, f"{total} env steps per iteration: {actors} actors x {envs} envs x {steps} steps")
        return harness.interleaved({
            "dlpipe_spark_actors": spark_actors,
            "sync_vector_env_1_process": lambda: total / step_envs(sync_envs, policy, steps, rc.seed),
            "async_vector_env_N_processes": lambda: total / step_envs(async_envs, policy, envs * steps, rc.seed),
            "spark_job_noop": lambda: noop_job(spark, blob, actors),
        }, repeats=s.repeats, warmup=1)
    finally:
        sync_envs.close()
        async_envs.close()


def _record(report: harness.Report, figures: dict[str, list[float]], actors: int, envs: int, steps: int) -> None:
    """Add the four contenders' figures to ``report``, each with the shape of what it stepped."""
    report.add("dlpipe_spark_actors", figures["dlpipe_spark_actors"], "env steps/s",
               f"{actors} Spark tasks x {envs} envs x {steps} steps, Arrow back to the driver")
    report.add("sync_vector_env_1_process", figures["sync_vector_env_1_process"], "env steps/s",
               f"one process, SyncVectorEnv of {actors * envs} envs x {steps} steps")
    report.add("async_vector_env_N_processes", figures["async_vector_env_N_processes"], "env steps/s",
               f"AsyncVectorEnv, {actors} worker processes x 1 env x {envs * steps} steps, policy in the parent")
    report.add("spark_job_noop", figures["spark_job_noop"], "s",
               f"broadcast + {actors} tasks that step nothing + Arrow collect: Spark's per-iteration overhead")


def _ratios(report: harness.Report, total: int) -> None:
    """dlpipe's actors against the vector envs, Spark's fixed share of an iteration, and what limits them."""
    dlpipe = report.median("dlpipe_spark_actors")
    report.ratios["ratio_vs_async_vector_env"] = harness.ratio(dlpipe, report.median("async_vector_env_N_processes"))
    report.ratios["ratio_vs_sync_vector_env"] = harness.ratio(dlpipe, report.median("sync_vector_env_1_process"))
    overhead = report.median("spark_job_noop") or 0.0
    report.ratios["spark_overhead_fraction"] = round(overhead * (dlpipe or 0.0) / total, 3)
    report.notes.append(
        f"One iteration collects {total} steps. The Spark job's fixed cost ({overhead:.2f} s, `spark_job_noop`) is "
        f"{report.ratios['spark_overhead_fraction']:.0%} of dlpipe's iteration time at this size; fewer, larger "
        "iterations amortise it. With 2 cores, 2 actors cannot beat 2 cores' worth of stepping: the ratio against "
        "one process measures what the parallelism buys after that overhead.")
    if harness.meets("ratio_vs_async_vector_env", report.ratios["ratio_vs_async_vector_env"]) is False:
        report.limits["ratio_vs_async_vector_env"] = (
            "Spark's per-iteration job cost (scheduling, broadcast, Python worker hand-off, Arrow collect) is "
            "fixed; at this many steps per iteration it outweighs the per-step IPC AsyncVectorEnv pays.")


def step_envs(envs: Any, policy: models.Acts, steps: int, seed: int) -> float:
    """Reset ``envs`` and step them ``steps`` times with sampled actions; seconds taken."""
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    obs, _ = envs.reset(seed=seed)
    for _ in range(steps):
        actions = policy.act(torch.from_numpy(np.asarray(obs, np.float32)), generator)["actions"].numpy()
        obs, *_ = envs.step(actions)
    return time.perf_counter() - started


def noop_job(spark: Any, blob: bytes, actors: int) -> float:
    """Seconds for a rollout-shaped Spark job whose tasks read the broadcast policy and step nothing:
    ``collect``'s shape (broadcast, one RDD task per actor, each returning one result) with empty steps."""
    sc = spark.sparkContext
    started = time.perf_counter()
    weights = sc.broadcast(blob)
    empty = _empty_steps()

    def task(actor: int) -> tuple[int, bytes]:
        assert weights.value
        return actor, empty

    results = sc.parallelize(range(actors), actors).map(task).collect()
    weights.destroy()
    assert len(results) == actors
    return time.perf_counter() - started


def _empty_steps() -> bytes:
    """An Arrow IPC stream of no steps, in the rollout schema: what a task of the no-op job returns."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema()) as writer:
        writer.write_table(schema().empty_table())
    stream: bytes = sink.getvalue().to_pybytes()
    return stream


def _overhead_sweep(spark: Any, rc: Any, policy: models.DlpipeModel, s: Size,
                    report: harness.Report) -> None:
    """The Spark job's share of an iteration as actors and steps per env grow: each grid point's
    env steps/s and, beside it, a no-op job of the same actors; ``spark_overhead_fraction`` per point."""
    blob = policy_to_bytes(policy)
    fractions = {}
    for actors in s.sweep_actors:
        for steps in s.sweep_steps:
            spec = RolloutSpec(rc.env_id, s.envs_per_actor, steps, rc.seed)
            total = actors * s.envs_per_actor * steps
            states: list[Any] = [None] * actors
            iteration_s, noop_s = [], []
            harness.log(NAME, f"sweep: {actors} actors x {s.envs_per_actor} envs x {steps} steps")
            for i in range(SWEEP_REPEATS + 1):  # the first is warm-up
                started = time.perf_counter()
                collected = collect(spark, spec, blob, i + 1, states, rc.rollout_timeout_s)
                elapsed = time.perf_counter() - started
                states = list(collected.states)
                noop = noop_job(spark, blob, actors)
                if i:
                    iteration_s.append(elapsed)
                    noop_s.append(noop)
            key = f"dlpipe_{actors}_actors_{steps}_steps"
            fraction = float(np.median(noop_s) / np.median(iteration_s))
            fractions[key] = fraction
            report.add(key, [total / t for t in iteration_s], "env steps/s",
                       f"{actors} actors x {s.envs_per_actor} envs x {steps} steps per iteration ({total} steps)",
                       spark_overhead_fraction=round(fraction, 3), noop_job_s=round(float(np.median(noop_s)), 3))
    first, last = next(iter(fractions)), list(fractions)[-1]
    report.ratios["sweep_overhead_fraction_fewest"] = round(fractions[first], 3)
    report.ratios["sweep_overhead_fraction_most"] = round(fractions[last], 3)
    report.notes.append("Spark's share of an iteration (`spark_overhead_fraction`: a no-op job of the same actors "
                        "over the iteration's time) by actors and steps per env: " + ", ".join(
                            f"{k.removeprefix('dlpipe_').replace('_', ' ')} {v:.0%}" for k, v in fractions.items())
                        + ". It falls as each task steps longer: the job's cost is fixed per iteration.")
