"""The parallelism case study's arithmetic and page (pure); the bubble measurement on 2 real processes."""
from __future__ import annotations

import pytest

from benchmarks import bubble
from benchmarks.parallelism import communicated_bytes, render

ROW = {"test_accuracy": 0.97, "samples_per_s": 1234.0, "peak_rss_mib_by_rank": {0: 300.0, 1: 310.5},
       "parameters_by_rank": {0: 100, 1: 100}, "optimizer_kib_by_rank": {0: 1.5, 1: 1.5}, "sent_kib_per_step": 0.8}


def test_bytes_sent_per_step_follow_each_strategys_collectives():
    params, boundary, batch = 1000, 64, 32
    assert communicated_bytes("ddp", params, boundary, batch) == 2 * 0.5 * 1000 * 4  # ring all-reduce
    assert communicated_bytes("horovod", params, boundary, batch) == communicated_bytes("ddp", params, boundary, batch)
    assert communicated_bytes("fsdp", params, boundary, batch) == 3 * 0.5 * 1000 * 4  # 2 all-gathers + reduce-scatter
    assert communicated_bytes("pipeline", params, boundary, batch) == 32 * 64 * 4  # activations across the cut


def test_the_page_shows_every_strategy_and_the_bubble_against_the_formula():
    result = {"size": "small", "seconds": 12.0, "machine": {"cores": 2, "cpu": "x", "torch": "2.13"},
              "cases": [{"label": "digits8", "model": "cnn", "model_params": {}, "feature_shape": [1, 8, 8],
                         "train_rows": 1258, "epochs": 15, "parameters": 200,
                         "strategies": {s: ROW for s in ("horovod", "ddp", "fsdp", "pipeline")}}],
              "bubble": {"stages": 2, "batch": 256, "steps": 10, "parameters": 5,
                         "rows": [{"microbatches": 4, "idle_fraction": 0.25, "formula": 0.2, "step_ms": 12.0}]}}
    page = render(result)
    for strategy in ("horovod", "ddp", "fsdp", "pipeline"):
        assert f"| {strategy} | 0.970 | 1,234 | 300 / 310.5 | 100 / 100 | 1.5 / 1.5 | 0.8 |" in page
    assert "| 4 | 0.25 | 0.20 | 12.0 |" in page and "When each strategy pays off" in page


@pytest.mark.slow
def test_the_bubble_is_measured_on_two_real_stages():
    measured = bubble.measure([1, 4], steps=2)
    rows = {r["microbatches"]: r for r in measured["rows"]}
    assert rows[1]["formula"] == pytest.approx(0.5) and rows[4]["formula"] == pytest.approx(0.2)
    for r in rows.values():
        assert -0.5 < r["idle_fraction"] < 1.0 and r["step_ms"] > 0  # noise can make it dip below 0
