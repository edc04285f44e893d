"""The rl benchmark runs end to end at ``--size tiny`` and writes its figures (nothing is timed here)."""
from __future__ import annotations

import json
import math

import pytest

import benchmarks
from testkit import make_config


@pytest.mark.slow
def test_rl_benchmark_writes_its_json_with_every_contender_and_ratio(spark, tmp_path):
    docs_path = tmp_path / "benchmarks.md"
    results = benchmarks.run(spark, make_config(tmp_path), "rl", "tiny", docs_path=docs_path)
    written = json.loads((tmp_path / "bench" / "rl.json").read_text())
    assert written["ratios"] == results["rl"]["ratios"] and written["size"] == "tiny"
    assert set(written["contenders"]) == {"dlpipe_spark_actors", "sync_vector_env_1_process",
                                         "async_vector_env_N_processes", "spark_job_noop"}
    assert written["params"]["env_steps_per_iteration"] == 2 * 2 * 64
    for key in ("ratio_vs_async_vector_env", "ratio_vs_sync_vector_env", "spark_overhead_fraction"):
        assert math.isfinite(written["ratios"][key]) and written["ratios"][key] > 0, key
    assert written["targets"] == {"ratio_vs_async_vector_env": ">= 0.8"}
    assert "## rl" in docs_path.read_text()
