"""The ``rl`` config section: validated with the rest, before Spark starts."""
from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipelines.config import ConfigError, load_config
from testkit import REPO_ROOT

CONFIG = "pipelines/configs/cartpole_ppo.yaml"


@pytest.mark.parametrize("override, message", [
    ("rl.num_actors=0", "config key 'rl.num_actors' = 0 must be >= 1"),
    ("rl.gamma=1.5", "config key 'rl.gamma' = 1.5 must be in [0, 1]"),
    ("rl.num_actor=3", "unknown config key 'rl.num_actor'; did you mean rl.num_actors"),
    ("rl.minibatches=9000", "config key 'rl.minibatches' = 9000 exceeds the 8192 steps an iteration collects"),
    ("model.params={hidden_sizes: [64], clip_coef: 2.0}", "clip_coef must be in (0, 1)"),
])
def test_bad_rl_settings_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(REPO_ROOT / CONFIG, [override])
    assert message in str(e.value)


def test_rl_check_prints_the_resolved_config_and_starts_nothing():
    done = subprocess.run([sys.executable, "-m", "pipelines", "rl", "--config", CONFIG, "--check", "rl.iterations=3"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = yaml.safe_load(done.stdout)
    assert resolved["rl"]["iterations"] == 3 and resolved["rl"]["env_id"] == "CartPole-v1"
    assert resolved["model"]["name"] == "mlp_policy"
    assert "SparkContext" not in done.stderr
