"""``dlpipe rl`` on real Spark (local[2]) with real Gymnasium: reproducibility, resume, timeouts, solving CartPole."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from pipelines import run
from pipelines.config import ConfigError, load_config
from pipelines.rl import evaluate, job
from pipelines.rl.job import RolloutError
from pipelines.runfolder import RunFolder
from pipelines.tracking import TRACKING_OFF
from testkit import REPO_ROOT

TIMINGS = {"rollout_s", "update_s", "env_steps_per_s"}
SMALL = ["rl.num_actors=2", "rl.envs_per_actor=2", "rl.steps_per_env=32", "rl.iterations=3", "rl.eval_episodes=3",
         "rl.minibatches=4", "rl.save_trajectories=false"]


def rl_config(workdir, run_id, *overrides):
    return load_config(REPO_ROOT / "pipelines" / "configs" / "cartpole_ppo.yaml",
                       [f"workdir={workdir}", f"run_id={run_id}", *SMALL, *TRACKING_OFF, *overrides])


def _metrics(run_dir):
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS} for line in lines]


def _weights(run_dir):
    return torch.load(RunFolder(str(run_dir)).policy, weights_only=True)["state_dict"]


def test_two_runs_with_the_same_seed_and_actors_give_identical_metrics_and_weights(spark, tmp_path):
    a = job.main(spark, rl_config(tmp_path, "a", "rl.iterations=1"), on_iteration=lambda r: None)
    b = job.main(spark, rl_config(tmp_path, "b", "rl.iterations=1"), on_iteration=lambda r: None)
    first_a, first_b = _metrics(tmp_path / "runs" / "a"), _metrics(tmp_path / "runs" / "b")
    assert first_a == first_b and first_a[0]["env_steps"] == 2 * 2 * 32
    wa, wb = _weights(tmp_path / "runs" / "a"), _weights(tmp_path / "runs" / "b")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert dataclasses.replace(a.eval, seconds=0) == dataclasses.replace(b.eval, seconds=0)
    other = job.main(spark, rl_config(tmp_path, "c", "rl.iterations=1", "rl.seed=1"), on_iteration=lambda r: None)
    assert _metrics(tmp_path / "runs" / "c") != first_a and other.eval.episodes == 3


def test_a_failed_run_resumes_from_its_last_checkpoint_and_ends_as_an_uninterrupted_run(spark, tmp_path):
    def fail_after_two(record):
        if record.iteration == 2:
            raise KeyboardInterrupt("simulated crash after iteration 2")

    with pytest.raises(KeyboardInterrupt):
        job.main(spark, rl_config(tmp_path, "crashed"), on_iteration=fail_after_two)
    run_dir = tmp_path / "runs" / "crashed"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-0001.pt", "epoch-0002.pt"]
    seen = []
    summary = job.main(spark, rl_config(tmp_path, "crashed"), on_iteration=seen.append)
    assert [r.iteration for r in seen] == [3]  # only the missing iteration ran
    job.main(spark, rl_config(tmp_path, "straight"), on_iteration=lambda r: None)
    assert _metrics(run_dir) == _metrics(tmp_path / "runs" / "straight")
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["epoch-0002.pt", "epoch-0003.pt"]
    assert summary.iterations == 3 and summary.env_steps == 3 * 128
    assert (run_dir / "report" / "return_curve.png").stat().st_size > 1000
    assert json.loads((run_dir / "summary.json").read_text())["eval"]["episodes"] == 3


def test_a_tampered_actor_state_is_refused_not_run(spark, tmp_path, capsys):
    """Whoever can write a run folder plants a pickle that would create a file when loaded: the
    resume refuses the actors' states (their MACs do not match), runs nothing, and trains on."""
    import cloudpickle

    job.main(spark, rl_config(tmp_path, "t", "rl.iterations=1"), on_iteration=lambda r: None)
    checkpoint = tmp_path / "runs" / "t" / "checkpoints" / "epoch-0001.pt"
    payload = torch.load(checkpoint, weights_only=True)
    assert len(payload["actors"]) == len(payload["actor_macs"]) == 2
    planted = tmp_path / "planted-code-ran"
    payload["actors"][0] = cloudpickle.dumps(_Planted(str(planted)))
    torch.save(payload, checkpoint)
    capsys.readouterr()
    summary = job.main(spark, rl_config(tmp_path, "t", "rl.iterations=2"), on_iteration=lambda r: None)
    out = capsys.readouterr().out
    assert not planted.exists()  # never unpickled, on the driver or an executor
    assert "environment states in the checkpoint are not signed with this job's key" in out
    assert "resuming after iteration 1" in out and summary.iterations == 2


class _Planted:
    """Unpickling it creates the file at ``path`` (what an attacker's code would do, harmlessly)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_resuming_with_other_settings_is_refused_naming_the_fix(spark, tmp_path):
    job.main(spark, rl_config(tmp_path, "r", "rl.iterations=1"), on_iteration=lambda r: None)
    with pytest.raises(ConfigError, match="other rl/model settings: use a new run_id"):
        job.main(spark, rl_config(tmp_path, "r", "rl.iterations=2", "rl.gamma=0.9"), on_iteration=lambda r: None)


def test_rollouts_past_their_timeout_are_cancelled_with_an_error_naming_the_setting(spark, tmp_path):
    config = rl_config(tmp_path, "t", "rl.rollout_timeout_s=0.05", "rl.steps_per_env=20000")
    with pytest.raises(RolloutError, match=r"rl.rollout_timeout_s=0.05s"):
        job.main(spark, config, on_iteration=lambda r: None)
    assert spark.range(4).count() == 4  # the session still works


def test_an_unusable_environment_is_a_config_error_naming_rl_env_id(spark, tmp_path):
    with pytest.raises(ConfigError, match="config key 'rl.env_id' = 'Pendulum-v1' has Box observations and Box actions"):
        job.main(spark, rl_config(tmp_path, "e", "rl.env_id=Pendulum-v1"))
    assert not (tmp_path / "runs" / "e").exists()  # checked before anything is written


def test_a_non_policy_model_is_a_config_error_before_spark(tmp_path):
    from pipelines.preflight import validate

    with pytest.raises(ConfigError, match="'model.name' = 'mlp' is a classifier, but dlpipe rl trains a policy"):
        validate(rl_config(tmp_path, "m", "model.name=mlp", "model.params={}"), "rl")


@pytest.fixture(scope="module")
def solved(spark, tmp_path_factory):
    """A short PPO run on CartPole with its greedy evaluation episodes saved (about 20 s)."""
    workdir = tmp_path_factory.mktemp("rl-solve")
    config = rl_config(workdir, "solve", "rl.envs_per_actor=4", "rl.steps_per_env=512", "rl.iterations=12",
                       "rl.minibatches=8", "rl.eval_episodes=20", "rl.save_trajectories=true")
    return workdir, job.main(spark, config, on_iteration=lambda r: None)


@pytest.mark.slow
def test_ppo_solves_cartpole_on_a_short_budget_and_saves_its_episodes(solved):
    workdir, summary = solved
    assert summary.eval.mean_return >= 195, summary.eval
    table = pq.read_table(summary.trajectories)
    assert table.column_names == ["id", "obs_0", "obs_1", "obs_2", "obs_3", "action"]
    assert table.num_rows == round(summary.eval.mean_length * 20)
    assert set(table.column("action").to_pylist()) == {0, 1}


@pytest.mark.slow
def test_behaviour_cloning_round_trip_through_the_etl_training_and_rl_eval(spark, solved):
    workdir, _ = solved
    overrides = [f"workdir={workdir}", f"etl.source.path={workdir / 'runs' / 'solve' / 'trajectories'}",
                 "train.epochs=10", "rl.eval_episodes=20", *TRACKING_OFF]
    bc = load_config(REPO_ROOT / "pipelines" / "configs" / "cartpole_bc.yaml", [*overrides, "run_id=bc"])
    summary = run.main(spark, bc)
    assert summary.etl.quarantined == 0 and summary.eval.accuracy > 0.9, summary.eval
    played = evaluate.main(spark, load_config(REPO_ROOT / "pipelines" / "configs" / "cartpole_bc.yaml",
                                              [*overrides, "run_id=bc-eval", "infer.model_run=bc"]))
    assert played.eval.mean_return >= 400, played
    assert json.loads((workdir / "runs" / "bc-eval" / "rl_eval.json").read_text())["eval"] == played.eval.to_dict()


def test_an_rl_run_is_tracked_one_mlflow_run_with_a_metric_per_iteration(spark, tmp_path):
    from pipelines.tracking.mlflow_sink import mlflow_client

    config = rl_config(tmp_path, "tracked", "tracking.mlflow=true", "tracking.tensorboard=true")
    summary = job.main(spark, config)
    client = mlflow_client((tmp_path / "mlruns").as_uri())
    runs = client.search_runs([client.get_experiment_by_name("dlpipe").experiment_id])
    assert [r.info.run_name for r in runs] == ["tracked"] and runs[0].info.status == "FINISHED"
    run = runs[0]
    assert run.data.params["rl.env_id"] == "CartPole-v1" and run.data.tags["dlpipe.job"] == "rl"
    history = client.get_metric_history(run.info.run_id, "env_steps")
    assert sorted((m.step, m.value) for m in history) == [(i, i * 2 * 2 * 32) for i in (1, 2, 3)]
    assert run.data.metrics["eval.mean_return"] == summary.eval.mean_return
    assert {f.path for f in client.list_artifacts(run.info.run_id, "model")} == {"model/policy.pt"}
    assert list((Path(config.run_dir()) / "tb").glob("events.out.tfevents.*"))
