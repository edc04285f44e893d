"""The whole pipeline with no shared disk: workdir and raw data in S3 (a real moto server process on
127.0.0.1; no Hadoop connector: everything goes through pipelines.storage, on the driver, inside
Spark tasks and in the ranks)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import pyarrow.parquet as pq

from testkit import DIGITS_DIR, REPO_ROOT
from pipelines import storage
from pipelines.config import load_config
from pipelines.lineage import lineage
from pipelines.publish import committed_files
from pipelines.tracking import TRACKING_OFF

pytestmark = pytest.mark.slow
BUCKET = "dlpipe-test"
IMAGES = 240  # of the bundled 1,797 digits: uploading each is one PUT (~35 ms against moto)


@pytest.fixture(scope="module")
def bucket(s3):
    """The bucket with a subset of the bundled digits (images and labels.csv) and a folder of new images."""
    s3.make_bucket(BUCKET)
    root = f"s3://{BUCKET}"
    lines = (DIGITS_DIR / "labels.csv").read_text().splitlines()
    kept = lines[1:IMAGES + 1]
    storage.write_text(f"{root}/digits/labels.csv", "\n".join([lines[0], *kept]) + "\n")
    for line in kept:
        name = line.split(",")[0]
        storage.write_bytes(f"{root}/digits/{name}", (DIGITS_DIR / name).read_bytes())
    for line in lines[IMAGES + 1:IMAGES + 21]:  # 20 images the model never saw, for scoring
        name = line.split(",")[0]
        storage.write_bytes(f"{root}/incoming/{name.rsplit('/', 1)[-1]}", (DIGITS_DIR / name).read_bytes())
    storage.write_bytes(f"{root}/incoming/broken.png", b"\x89PNG not really")
    return root


def _dlpipe(s3, *args: str) -> subprocess.Popen:
    env = {**os.environ, **s3.env, "SPARK_LOCAL_IP": "127.0.0.1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipelines", *args], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


RUN = ["run", "--config", "pipelines/configs/digits_cnn.yaml", "--run-id", "s3-run", "master=local[2]",
       f"workdir=s3://{BUCKET}/work", f"etl.source.path=s3://{BUCKET}/digits", "train.epochs=4", "train.batch_size=16",
       "tracking.mlflow=false", "tracking.tensorboard=false"]


@pytest.fixture(scope="module")
def resumed_run(s3, bucket) -> tuple[list[str], list[str], bool, str]:
    """``dlpipe run`` on S3 killed (the whole process group) after epoch 2, then run again with the same
    id: (the killed run's output, its checkpoints, whether it had finished, the second run's output)."""
    first = _dlpipe(s3, *RUN)
    deadline = time.monotonic() + 300
    seen = []
    try:
        for line in first.stdout:
            seen.append(line)
            if line.startswith("epoch 2/4 done") or time.monotonic() > deadline:
                break
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # driver, JVM and ranks: nothing finishes the run
        first.wait()
    run = f"{bucket}/work/runs/s3-run"
    checkpoints = [storage.name(e.location) for e in storage.list_files(f"{run}/checkpoints")]
    finished = storage.exists(f"{run}/summary.json") and \
        json.loads(storage.read_text(f"{run}/summary.json"))["status"] == "ok"
    again = _dlpipe(s3, *RUN)
    out, _ = again.communicate(timeout=400)
    assert again.returncode == 0, out[-4000:]
    return seen, checkpoints, finished, out


def test_a_run_on_s3_killed_mid_training_resumes_from_the_checkpoint_in_the_bucket(bucket, resumed_run):
    seen, checkpoints, finished, out = resumed_run
    assert any(line.startswith("epoch 2/4 done") for line in seen), "".join(seen[-40:])
    assert checkpoints and all(name.startswith("epoch-") for name in checkpoints), checkpoints
    assert not finished  # the killed run left no summary that says it finished
    run = f"{bucket}/work/runs/s3-run"
    assert "resuming from checkpoint after epoch" in out
    summary = json.loads(storage.read_text(f"{run}/summary.json"))
    assert summary["status"] == "ok" and summary["train"]["epochs_completed"] == 4
    assert summary["etl"]["records_in"] == summary["etl"]["accepted"] == IMAGES
    assert summary["eval"]["accuracy"] > 0.5 and summary["infer"]["bad_rows"] == 0
    assert [json.loads(x)["epoch"] for x in storage.read_text(f"{run}/metrics.jsonl").splitlines()] == [1, 2, 3, 4]
    predictions = committed_files(f"{run}/predictions", ".parquet")
    with storage.open_input(predictions[0]) as f:
        assert "prediction" in pq.read_schema(f).names
    assert storage.is_file(f"{run}/model/model.pt") and storage.is_file(f"{run}/report/report.md")
    lease = json.loads(storage.read_text(f"{run}/_lease.json"))
    assert lease["released"] is True and lease["fence"] == 2  # the killed run's, then its resume's: released
    assert "workdir s3://dlpipe-test/work is a store" not in out  # tracking off: nothing to say
    assert not [line for line in out.splitlines() if "secret" in line.lower()]


def test_the_store_secret_reaches_no_output_of_a_killed_and_a_whole_run(s3, bucket, resumed_run):
    """The S3 secret key is in the credential chain (the environment) of a run killed mid-training
    and of its resume: no byte either wrote has it: their console, every object in the bucket
    (config.yaml, checkpoints, summary, report, predictions, leases), the Spark and rank log files."""
    import tempfile
    from pathlib import Path

    secret = s3.env["AWS_SECRET_ACCESS_KEY"]
    assert len(secret) >= 16 and secret in os.environ.get("AWS_SECRET_ACCESS_KEY", "")
    seen, _, _, out = resumed_run
    assert secret not in "".join(seen) + out
    objects = storage.list_files(f"{bucket}/work", include_hidden=True)
    assert len(objects) > 20
    holding = [e.location for e in objects if secret.encode() in storage.read_bytes(e.location)]
    assert holding == []
    logs = [p for folder in ("dlpipe-logs", "dlpipe-ranks") for p in Path(tempfile.gettempdir(), folder).glob("*.log")]
    assert logs and [str(p) for p in logs if secret.encode() in p.read_bytes()] == []


def test_raw_files_in_the_bucket_are_scored_and_a_frozen_server_is_a_clear_error_then_a_rerun_completes(
        s3, spark, resumed_run):
    from pipelines.infer import job as infer

    def scoring(run_id: str):
        return load_config(None, [f"workdir=s3://{BUCKET}/work", f"run_id={run_id}", "infer.model_run=s3-run",
                                  "infer.source.kind=images", f"infer.source.path=s3://{BUCKET}/incoming",
                                  "master=local[2]", *TRACKING_OFF])

    result = infer.main(spark, scoring("score-1"))
    assert (result.rows, result.bad_rows) == (21, 1)
    files = committed_files(result.predictions, ".parquet")
    rows = [r for f in files for r in _read(f).to_pylist()]
    assert sorted(r["id"] for r in rows if r["error"]) == ["broken.png"]

    s3.pause()  # the store stops answering mid-job
    try:
        started = time.monotonic()
        with pytest.raises((storage.StorageError, OSError, RuntimeError)) as err:
            infer.main(spark, scoring("score-2"))
        assert time.monotonic() - started < 120  # bounded: request timeouts, not a hang
        message = str(err.value)
        assert len(message.splitlines()) == 1, message  # one line, not a stack
        assert f"s3://{BUCKET}" in message or "127.0.0.1" in message, message
        assert s3.env["AWS_SECRET_ACCESS_KEY"] not in message  # no credential in the error
    finally:
        s3.resume()
    again = infer.main(spark, scoring("score-2"))  # the same job once the store is back
    assert (again.rows, again.bad_rows) == (21, 1)
    # Lineage from the bucket alone: a prediction -> the model that made it -> its data -> the raw file.
    scored = next(r for r in rows if not r["error"])
    assert scored["model_run"] == "s3-run" and len(scored["model_digest"]) == 64
    chain = lineage(f"s3://{BUCKET}/work", "score-1", prediction=scored["id"])
    assert f"  input: raw file s3://{BUCKET}/incoming/{scored['id']}" in chain
    assert f"model of run s3-run: s3://{BUCKET}/work/runs/s3-run/model/model.pt, sha256 {scored['model_digest']}" \
        in chain[3]
    assert chain[4].startswith("  trained on dataset digits versions v1 (v000001-")


def _read(location: str):
    with storage.open_input(location) as f:
        return pq.read_table(f)


def test_rl_with_its_workdir_in_s3(s3, bucket, spark):
    from pipelines.rl import job

    config = load_config(REPO_ROOT / "pipelines" / "configs" / "cartpole_ppo.yaml", [
        f"workdir=s3://{BUCKET}/rl", "run_id=ppo", "rl.num_actors=2", "rl.envs_per_actor=2", "rl.steps_per_env=32",
        "rl.iterations=2", "rl.minibatches=4", "rl.eval_episodes=3", "rl.save_trajectories=true", *TRACKING_OFF])
    summary = job.main(spark, config, on_iteration=lambda r: None)
    run = f"s3://{BUCKET}/rl/runs/ppo"
    assert summary.iterations == 2 and storage.is_file(f"{run}/model/policy.pt")
    assert sorted(storage.name(e.location) for e in storage.list_files(f"{run}/checkpoints")) == [
        "epoch-0001.pt", "epoch-0002.pt"]
    assert len(storage.read_text(f"{run}/metrics.jsonl").splitlines()) == 2
    assert committed_files(f"{run}/trajectories", ".parquet")
    again = job.main(spark, config, on_iteration=lambda r: pytest.fail("nothing left to train"))
    assert again.iterations == 2  # resumed from the bucket: complete


RACES = int(os.environ.get("DLPIPE_FAULT_SWEEP", "0")) or 1  # rounds in make test (~45 s each); the sweep runs more


@pytest.mark.slow
def test_two_appends_started_together_on_s3_land_each_record_once_and_lose_no_version(s3, bucket):
    """Each round a new day's CSV lands in the bucket and two `dlpipe etl etl.mode=append` processes
    start together (a scheduler's retry beside the original): the lease lets one append the day, the
    other then finds nothing new and succeeds too. Waits: each pair 300 s at most (~25 s quiet)."""
    from pipelines import dataset as ds

    src, work = f"s3://{BUCKET}/race-src", f"s3://{BUCKET}/race-work"
    common = ["etl", "--config", "pipelines/configs/digits_cnn.yaml", "master=local[1]", f"workdir={work}",
              "dataset=race", "etl.source.kind=csv", f"etl.source.path={src}", "etl.source.id_column=rid",
              "etl.mode=append", "etl.rows_per_row_group=8", "lease.wait_s=300", *TRACKING_OFF]
    for day in range(RACES):
        rows = "".join(f"d{day}r{i},{i % 5},{day},{i % 2}\n" for i in range(30))
        storage.write_text(f"{src}/day{day}.csv", "rid,a,b,label\n" + rows)
        jobs = [_dlpipe(s3, *common, f"--run-id=race{day}{who}") for who in "ab"]
        outs = [job.communicate(timeout=300)[0] for job in jobs]
        assert [job.returncode for job in jobs] == [0, 0], outs
        assert sum("etl: nothing new in" in out for out in outs) == 1, outs  # one appended, one found it done
        head = ds.read_head(f"{work}/datasets/race")
        assert [v.version for v in head.versions] == list(range(1, day + 2))  # one version a day, none lost
        ids = [i for split in ds.open_dataset(f"{work}/datasets/race").splits.values()
               for i in ds.read_split(split, ("id",)).column("id").to_pylist()]
        assert len(ids) == len(set(ids)) == 30 * (day + 1)  # every record exactly once


def test_two_inferences_to_one_output_on_s3_never_show_a_partial_set(s3, bucket, resumed_run):
    """Two `dlpipe infer` processes to one output (a retry beside the original), while a reader polls
    the output: every set it sees committed is whole (all 21 rows, every file there), both jobs
    succeed (the second waits for the run's lease), and one attempt is left. Waits: 300 s each."""
    import threading

    from pipelines.publish import read_commit

    target = f"{bucket}/work/runs/score-race/predictions"
    args = ["infer", "--run-id", "score-race", f"workdir={bucket}/work", "infer.model_run=s3-run",
            "infer.source.kind=images", f"infer.source.path={bucket}/incoming", "master=local[1]", "lease.wait_s=300",
            *TRACKING_OFF]
    seen: list[int] = []
    half_visible: list[str] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            commit = read_commit(target)
            if commit is not None:
                try:
                    seen.append(sum(_rows(f) for f in committed_files(target, ".parquet")))
                except (OSError, storage.StorageError) as e:
                    if read_commit(target) == commit:  # not superseded meanwhile: a file of the set is missing
                        half_visible.append(str(e))
            time.sleep(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    jobs = [_dlpipe(s3, *args) for _ in range(2)]
    outs = [job.communicate(timeout=300)[0] for job in jobs]
    stop.set()
    poller.join(timeout=30)
    assert [job.returncode for job in jobs] == [0, 0], [out[-3000:] for out in outs]
    assert not half_visible, half_visible
    assert seen and set(seen) == {21}, sorted(set(seen))  # every set a reader saw: all of it
    assert sum(_rows(f) for f in committed_files(target, ".parquet")) == 21
    attempts = [d for d in storage.list_dirs(target) if storage.name(d).startswith("a-")]
    assert len(attempts) == 1, attempts  # the superseded attempt is gone (no reader holds it)


def _rows(location: str) -> int:
    with storage.open_input(location) as f:
        return pq.read_metadata(f).num_rows


def test_a_full_etl_beside_a_training_on_s3_keeps_its_version_and_the_training_finishes(s3, spark, resumed_run):
    """The nightly-rebuild race on S3: at the end of epoch 2 a `dlpipe etl` (full) of the dataset a
    training reads commits a new version; the old one stays (the training's read lease) and the
    training finishes on it. Waits: the ETL 300 s at most (~25 s quiet)."""
    from pipelines import dataset, events
    from pipelines.train import driver as train

    workdir = f"s3://{BUCKET}/work"
    config = load_config(REPO_ROOT / "pipelines" / "configs" / "digits_cnn.yaml", [
        f"workdir={workdir}", "run_id=reader-s3", "master=local[2]", "train.epochs=3", "train.batch_size=16",
        "train.failure_timeout_s=600", *TRACKING_OFF])
    root = config.dataset_dir
    before = dataset.read_head(root)
    old = before.versions[-1].folder
    seen: dict[str, object] = {}

    def rebuild_at_epoch_2(event):
        if isinstance(event, events.EpochEnded) and event.record.epoch == 2 and "etl" not in seen:
            etl = _dlpipe(s3, "etl", "--config", "pipelines/configs/digits_cnn.yaml", f"workdir={workdir}",
                          f"etl.source.path=s3://{BUCKET}/digits", "master=local[1]", *TRACKING_OFF)
            seen["etl"] = (etl.communicate(timeout=300)[0], etl.returncode)
            seen["old_files"] = storage.list_files(storage.join(root, old))
            seen["head"] = dataset.read_head(root)

    result = train.main(spark, config, on_event=rebuild_at_epoch_2)
    out, code = seen["etl"]
    assert code == 0, out[-3000:]
    assert f"etl: kept the superseded {old} (" in out and "dlpipe train (run reader-s3)" in out
    assert seen["head"].number > before.number and seen["head"].versions[-1].folder != old
    assert seen["old_files"]  # committed a new version, yet the old one is whole in the bucket
    assert result.epochs_completed == 3 and result.dataset_version == before.versions[-1].version
