"""The actor side: step Gymnasium environments with a given policy and return the steps as Arrow.

Runs inside a Spark task (``pipelines.rl.job`` calls :func:`rollout` from an RDD map), but imports
no pyspark, so it runs and is tested in a plain process too. An actor's environments live on
across iterations: each rollout continues them from the :class:`ActorState` the previous one
returned (pickled, through the driver), so an episode longer than ``rl.steps_per_env`` goes on in
the next iteration, and an episode's return is counted once it ends, whole. The state travels
with the task, so a task can run on any executor, and a retried task repeats exactly the same
rollout: the environments start from seeds of ``(seed, actor)``, actions from ``(seed, iteration, actor)``.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import cloudpickle
import numpy as np
import pyarrow as pa
import torch
from numpy.typing import NDArray

import models
from models.base import Acts, DlpipeModel
from pipelines.errors import ConfigError


@dataclass(frozen=True)
class RolloutSpec:
    """What every actor needs besides the weights: plain data, picklable."""

    env_id: str
    envs_per_actor: int
    steps_per_env: int
    seed: int


def schema() -> pa.Schema:
    """One row per environment step, ordered by (actor, env, step)."""
    return pa.schema([
        ("actor", pa.int32()), ("env", pa.int32()), ("step", pa.int32()),
        ("obs", pa.list_(pa.float32())),
        ("action", pa.int64()), ("logprob", pa.float32()), ("value", pa.float32()),
        ("next_value", pa.float32()),  # bootstrap value of the following observation (see pipelines.rl.gae)
        ("reward", pa.float32()), ("terminated", pa.bool_()), ("truncated", pa.bool_()),
    ])


def actor_seeds(seed: int, iteration: int, actor: int, envs: int) -> tuple[list[int], int]:
    """Environment reset seeds (used when the actor first makes its environments) and the
    action-sampling seed of one actor in one iteration.

    SeedSequence mixes the numbers, so neighbouring actors or iterations get unrelated streams.
    """
    resets = np.random.SeedSequence([seed, actor, 2**32 - 1]).generate_state(envs, dtype=np.uint32)
    action = np.random.SeedSequence([seed, iteration, actor]).generate_state(1, dtype=np.uint32)
    return [int(s) for s in resets], int(action[0])


@dataclass
class ActorState:
    """One actor's environments mid-episode: what the next rollout continues from."""

    envs: Any  # the vector environment (its episodes and random generators as they are)
    obs: NDArray[Any]  # (envs, *obs_shape): the observations the next step acts on (the env's Box dtype)
    episode_return: NDArray[np.float64]  # (envs,) reward so far in each running episode
    episode_length: NDArray[np.int64]  # (envs,) steps so far in each running episode

    def to_bytes(self) -> bytes:
        blob: bytes = cloudpickle.dumps(self)
        return blob

    @staticmethod
    def from_bytes(blob: bytes) -> ActorState:
        state: ActorState = cloudpickle.loads(blob)  # what to_bytes pickled
        return state


@dataclass(frozen=True)
class ActorResult:
    """What one actor's rollout sends back to the driver."""

    actor: int
    steps: bytes  # the steps as an Arrow IPC stream (:func:`schema`), ordered by (env, step)
    returns: list[float]  # episodes that ended in this rollout, whole (they may have begun earlier)
    lengths: list[int]
    state: bytes  # ActorState to continue from

    def table(self) -> pa.Table:
        return pa.ipc.open_stream(self.steps).read_all()


def env_spaces(env_id: str) -> tuple[tuple[int, ...], int]:
    """Observation shape and number of actions of ``env_id``; a ConfigError naming ``rl.env_id``
    unless it exists with vector (Box) observations and Discrete actions."""
    import gymnasium as gym

    try:
        env = gym.make(env_id)
    except gym.error.Error as e:
        raise ConfigError(f"config key 'rl.env_id' = {env_id!r} is not a registered Gymnasium environment "
                          f"({type(e).__name__}: {e})") from None
    try:
        obs, act = env.observation_space, env.action_space
        if not isinstance(obs, gym.spaces.Box) or not isinstance(act, gym.spaces.Discrete):
            raise ConfigError(f"config key 'rl.env_id' = {env_id!r} has {type(obs).__name__} observations and "
                              f"{type(act).__name__} actions; dlpipe rl needs Box (vector) observations and "
                              "Discrete actions (e.g. CartPole-v1, Acrobot-v1, LunarLander-v3)")
        return tuple(int(d) for d in obs.shape), int(act.n)
    finally:
        env.close()


def make_envs(env_id: str, n: int) -> Any:
    """``n`` copies of ``env_id`` stepped in this process; a finished episode resets in the same step
    (its final observation is in ``info['final_obs']``)."""
    import gymnasium as gym

    return gym.make_vec(env_id, num_envs=n, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP})


def policy_to_bytes(model: DlpipeModel) -> bytes:
    """The policy as bytes to ship to the actors (architecture and weights)."""
    buf = io.BytesIO()
    torch.save(models.to_artifact_dict(model), buf)
    return buf.getvalue()


def policy_from_bytes(blob: bytes) -> DlpipeModel:
    """The policy :func:`policy_to_bytes` shipped, in eval mode."""
    return models.from_artifact_dict(torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True))


def start_actor(spec: RolloutSpec, actor: int) -> ActorState:
    """An actor's environments, freshly reset with its seeds."""
    n = spec.envs_per_actor
    envs = make_envs(spec.env_id, n)
    resets, _ = actor_seeds(spec.seed, 0, actor, n)
    obs, _ = envs.reset(seed=resets)
    return ActorState(envs, obs, np.zeros(n), np.zeros(n, np.int64))


def rollout(spec: RolloutSpec, policy: DlpipeModel, iteration: int, actor: int,
            state: bytes | None = None) -> ActorResult:
    """Step the actor's environments ``spec.steps_per_env`` steps with ``policy``, continuing from
    ``state`` (None: the first rollout, fresh environments); one Arrow row per step (:func:`schema`)."""
    torch.set_num_threads(1)  # actors share the cores with each other: one thread each
    acting = cast(Acts, policy)  # dlpipe rl checked that the model acts before shipping it
    n, steps = spec.envs_per_actor, spec.steps_per_env
    current = ActorState.from_bytes(state) if state is not None else start_actor(spec, actor)
    envs, obs = current.envs, current.obs
    _, action_seed = actor_seeds(spec.seed, iteration, actor, n)
    generator = torch.Generator().manual_seed(action_seed)
    obs_size = int(np.prod(obs.shape[1:]))
    all_obs = np.zeros((steps, n, obs_size), np.float32)
    actions = np.zeros((steps, n), np.int64)
    logprobs, values, next_values, rewards = (np.zeros((steps, n), np.float32) for _ in range(4))
    terminated, truncated = np.zeros((steps, n), bool), np.zeros((steps, n), bool)
    running_return, running_length = current.episode_return.copy(), current.episode_length.copy()
    returns: list[float] = []
    lengths: list[int] = []
    for t in range(steps):
        x = torch.from_numpy(np.asarray(obs, np.float32))
        out = acting.act(x, generator)
        all_obs[t] = x.reshape(n, -1).numpy()
        actions[t], logprobs[t], values[t] = out["actions"].numpy(), out["logprobs"].numpy(), out["values"].numpy()
        obs, rewards[t], terminated[t], truncated[t], info = envs.step(actions[t])
        running_return += rewards[t]
        running_length += 1
        for i in np.flatnonzero(terminated[t] | truncated[t]):  # a whole episode ended: count it, start anew
            returns.append(float(running_return[i]))
            lengths.append(int(running_length[i]))
            running_return[i], running_length[i] = 0.0, 0
        cut = np.flatnonzero(truncated[t] & ~terminated[t])  # time limit: bootstrap from the true final obs
        if len(cut):
            final = np.stack([info["final_obs"][i] for i in cut]).astype(np.float32)
            next_values[t, cut] = acting.value(torch.from_numpy(final)).numpy()
    done = terminated | truncated
    next_values[:-1] = np.where(done[:-1], next_values[:-1], values[1:])
    last = acting.value(torch.from_numpy(np.asarray(obs, np.float32))).numpy()  # the rollout ends mid-episode
    next_values[-1] = np.where(done[-1], next_values[-1], last)
    batch = _steps_batch(actor, all_obs, actions, logprobs, values, next_values, rewards, terminated, truncated)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema()) as writer:
        writer.write_batch(batch)
    after = ActorState(envs, obs, running_return, running_length)
    return ActorResult(actor, sink.getvalue().to_pybytes(), returns, lengths, after.to_bytes())


def _steps_batch(actor: int, *arrays: NDArray[Any]) -> pa.RecordBatch:
    """(steps, envs) arrays -> rows ordered by env, then step."""
    steps, n = arrays[1].shape
    obs_size = arrays[0].shape[2]
    columns = [np.full(steps * n, actor, np.int32), np.repeat(np.arange(n, dtype=np.int32), steps),
               np.tile(np.arange(steps, dtype=np.int32), n)]
    flat = [a.swapaxes(0, 1).reshape(steps * n, *a.shape[2:]) for a in arrays]
    offsets = pa.array(np.arange(0, steps * n * obs_size + 1, obs_size, dtype=np.int32))
    obs_col = pa.ListArray.from_arrays(offsets, pa.array(flat[0].reshape(-1)))
    return pa.RecordBatch.from_arrays([pa.array(c) for c in columns] + [obs_col] + [pa.array(c) for c in flat[1:]],
                                      schema=schema())


def run_episodes(act: Callable[[NDArray[np.float32]], NDArray[np.int64]], env_id: str, episodes: int, seed: int,
                 record: bool = False) -> dict[str, Any]:
    """Play ``episodes`` whole episodes (one environment each, seeds ``seed + i``) choosing actions
    with ``act`` (observations (B, obs) float32 -> actions (B,)); their returns and lengths, and with
    ``record`` every step's observation and action (episode, step, obs, action)."""
    envs = make_envs(env_id, episodes)
    try:
        obs, _ = envs.reset(seed=[seed + i for i in range(episodes)])
        running = np.ones(episodes, bool)
        returns, lengths = np.zeros(episodes), np.zeros(episodes, np.int64)
        steps: list[tuple[NDArray[np.intp], NDArray[np.int64], NDArray[np.float32], NDArray[np.int64]]] = []
        while running.any():
            flat = np.asarray(obs, np.float32).reshape(episodes, -1)
            action = np.asarray(act(flat), np.int64)
            if record:
                live = np.flatnonzero(running)
                steps.append((live, lengths[live].copy(), flat[live], action[live]))
            obs, reward, term, trunc, _ = envs.step(action)
            returns += np.where(running, reward, 0.0)
            lengths += running
            running &= ~(term | trunc)  # an env that finished is reset by the wrapper: ignore it from now on
    finally:
        envs.close()
    result: dict[str, Any] = {"returns": returns.tolist(), "lengths": lengths.tolist()}
    if record:
        result["episode"] = np.concatenate([s[0] for s in steps])
        result["step"] = np.concatenate([s[1] for s in steps])
        result["obs"] = np.concatenate([s[2] for s in steps])
        result["action"] = np.concatenate([s[3] for s in steps])
    return result
