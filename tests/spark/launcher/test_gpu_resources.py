"""Spark's GPU resources reach the rank: a real local-cluster whose workers discover (fake) GPUs
schedules one per barrier task (for every task of the application, or for the training stage alone
through its resource profile); each rank sees only its own in CUDA_VISIBLE_DEVICES."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from testkit import REPO_ROOT


def _launch(tmp_path, mode: str) -> dict:
    script = tmp_path / "fake_gpus.sh"  # what getGpusResources.sh prints on a node with 1 GPU
    script.write_text('#!/bin/sh\necho \'{"name": "gpu", "addresses": ["0"]}\'\n')
    script.chmod(0o755)
    out = tmp_path / "found.json"
    done = subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "gpu_resources.py"), str(out), str(script), mode],
                          capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def _each_rank_sees_its_own_gpu(ranks: list[dict]) -> None:
    assert [e["rank"] for e in ranks] == [0, 1]
    for e in ranks:
        assert e["cuda_visible_devices"] == "0" and e["task_gpus"] == ["0"]
        # torch here has no CUDA: auto falls back to the CPU and says why
        assert e["device"] == "cpu"
        assert e["reason"] == ("train.device=auto: Spark gave the task GPU 0 but torch sees no CUDA device "
                               f"(torch {torch.__version__}, CUDA build: no)")


def test_each_rank_sees_only_the_gpu_spark_gave_its_task(tmp_path):
    _each_rank_sees_its_own_gpu(_launch(tmp_path, "app")["ranks"])


def test_only_the_training_stage_asks_for_gpus_through_its_resource_profile(tmp_path):
    """train.gpus_per_rank: ordinary tasks of the same application hold no GPU; each rank gets its own."""
    found = _launch(tmp_path, "stage")
    assert found["ordinary_tasks"] == [[], [], [], []]
    _each_rank_sees_its_own_gpu(found["ranks"])
