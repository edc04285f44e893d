"""What spark-conf/ ships: the GPU discovery script and template (GPUs off by default), and the secure profile."""
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


def _secure_conf(folder, **env) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO_ROOT / "scripts" / "secure-conf.sh"), str(folder)], capture_output=True,
                          text=True, timeout=30, env={**os.environ, **env})


def test_the_secure_profile_turns_on_authentication_encryption_and_ui_acls_with_a_private_secret(tmp_path):
    folder = tmp_path / "conf"
    done = _secure_conf(folder)
    assert done.returncode == 0, done.stderr
    settings = _settings(folder / "spark-defaults.conf")
    for key, value in {"spark.authenticate": "true", "spark.network.crypto.enabled": "true",
                       "spark.network.crypto.saslFallback": "false", "spark.io.encryption.enabled": "true",
                       "spark.acls.enable": "true", "spark.ui.killEnabled": "false"}.items():
        assert settings[key] == value, key
    base = _settings(CONF / "spark-defaults.conf")
    assert all(settings[k] == v for k, v in base.items())  # the base settings hold under the profile
    secret = settings["spark.authenticate.secret"]
    assert len(secret) == 64 and secret not in done.stdout + done.stderr
    assert (folder / "spark-defaults.conf").stat().st_mode & 0o777 == 0o600 and folder.stat().st_mode & 0o777 == 0o700
    assert (folder / "log4j2.properties").read_text() == (CONF / "log4j2.properties").read_text()
    assert "spark.authenticate.secret" not in (CONF / "secure" / "spark-defaults.conf").read_text().split("#")[0]

    # a re-run (after a profile change) keeps the cluster's secret; another folder gets another one
    assert _secure_conf(folder).returncode == 0
    assert _settings(folder / "spark-defaults.conf")["spark.authenticate.secret"] == secret
    assert _secure_conf(tmp_path / "other").returncode == 0
    assert _settings(tmp_path / "other" / "spark-defaults.conf")["spark.authenticate.secret"] != secret


def test_the_secure_profile_takes_a_given_secret_file_and_refuses_an_empty_one(tmp_path):
    given = tmp_path / "secret"
    given.write_text("abc123given\n")
    assert _secure_conf(tmp_path / "a", SPARK_AUTH_SECRET_FILE=str(given)).returncode == 0
    assert _settings(tmp_path / "a" / "spark-defaults.conf")["spark.authenticate.secret"] == "abc123given"
    given.write_text("\n")
    done = _secure_conf(tmp_path / "b", SPARK_AUTH_SECRET_FILE=str(given))
    assert done.returncode != 0 and f"{given} is empty" in done.stderr
