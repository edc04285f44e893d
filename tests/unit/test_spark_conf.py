"""What spark-conf/ ships for GPU clusters: the discovery script's output, and GPUs off by default."""
from __future__ import annotations

import json
import os
import shutil
import subprocess

from testkit import REPO_ROOT

CONF = REPO_ROOT / "spark-conf"


def test_the_discovery_script_prints_the_nodes_gpus_as_spark_resource_json(tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\nprintf '0\\n1\\n 3\\n'\n")  # --query-gpu=index --format=csv,noheader
    smi.chmod(0o755)
    done = subprocess.run(["bash", CONF / "getGpusResources.sh"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"name": "gpu", "addresses": ["0", "1", "3"]}


def test_the_discovery_script_fails_loudly_without_nvidia_smi(tmp_path):
    (tmp_path / "hostname").symlink_to(shutil.which("hostname"))  # a PATH with no nvidia-smi, even on a GPU host
    done = subprocess.run([shutil.which("bash"), CONF / "getGpusResources.sh"], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PATH": str(tmp_path)})
    assert done.returncode != 0 and "nvidia-smi not found" in done.stderr


def _settings(path) -> dict[str, str]:
    lines = [line.split("#")[0].split() for line in path.read_text().splitlines()]
    return {words[0]: words[1] for words in lines if len(words) >= 2}


def test_gpus_are_off_in_the_defaults_and_only_commented_in_the_gpu_template():
    assert not any("resource.gpu" in key for key in _settings(CONF / "spark-defaults.conf"))
    assert _settings(CONF / "spark-defaults.gpu.conf") == {}  # a template: every line commented
    template = (CONF / "spark-defaults.gpu.conf").read_text()
    for key in ("spark.executor.resource.gpu.amount", "spark.executor.resource.gpu.discoveryScript",
                "spark.task.resource.gpu.amount", "spark.worker.resource.gpu.amount"):
        assert f"#{key} " in template, key
