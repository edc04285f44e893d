"""The benchmark docs page and table from fixture JSON, and the harness's pure pieces (no Spark, nothing measured)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest

from benchmarks import data, docs, harness, workers
from benchmarks import etl as etl_bench

MACHINE = {"cores": 2, "cpu": "AMD EPYC", "memory_gib": 23.4, "os": "Linux-6.1-x86_64", "python": "3.11.7",
           "pyspark": "3.5.9", "pyarrow": "14.0.2", "torch": "2.13.0", "petastorm": "0.12.1", "horovod": "0.28.1"}


def _result(name: str, ratios: dict, contenders: dict, **extra) -> dict:
    report = harness.Report(name, "small", params={"batch_size": 64})
    for key, (values, unit) in contenders.items():
        report.add(key, values, unit, f"what {key} does")
    report.ratios = ratios
    result = report.to_dict()
    result.update(machine=MACHINE, seconds=12.5, load_average={"before": [1.25, 1, 1], "after": [1.5, 1, 1]}, **extra)
    return result


@pytest.fixture
def bench_dir(tmp_path):
    loader = _result("loader", {"ratio_vs_pyarrow": 0.5}, {"dlpipe_petastorm": ([40.0, 50.0, 60.0], "samples/s"),
                                                           "pyarrow_numpy_torch": ([100.0, 100.0], "samples/s")})
    loader["limits"] = {"ratio_vs_pyarrow": "Petastorm copies every row twice."}
    memory = _result("memory", {"rss_growth": 0.02}, {"peak_rss_base": ([400.0], "MiB"), "peak_rss_10x": ([408.0], "MiB")})
    infer = _result("infer", {"ratio_vs_torch": 0.9, "ratio_vs_predict_batch_udf": None},
                    {"dlpipe_infer": ([9.0e3], "rows/s"), "torch_1_process": ([1.0e4], "rows/s")})
    infer["unavailable"] = {"predict_batch_udf": "ImportError: no pyspark.ml"}
    tiny_etl = _result("etl", {"ratio_vs_plain_spark": 0.3}, {"dlpipe_etl": ([1.0], "rows/s")})
    tiny_etl["size"] = "tiny"
    for r in (loader, memory, infer, tiny_etl):
        (tmp_path / f"{r['benchmark']}.json").write_text(json.dumps(r))
    return tmp_path


def test_summarize_gives_median_and_relative_spread():
    s = harness.summarize([3.0, 1.0, 2.0])
    assert (s["median"], s["min"], s["max"]) == (2.0, 1.0, 3.0)
    assert s["spread"] == pytest.approx(1.0)
    assert s["values"] == [3.0, 1.0, 2.0]


def test_ratios_and_targets():
    assert harness.ratio(3.0, 4.0) == 0.75
    assert harness.ratio(3.0, None) is None and harness.ratio(3.0, 0.0) is None
    assert harness.meets("ratio_vs_pyarrow", 0.9) is True
    assert harness.meets("ratio_vs_pyarrow", 0.89) is False
    assert harness.meets("rss_growth", 0.1) is True and harness.meets("rss_growth", 0.2) is False
    assert harness.meets("launch_seconds", 3.0) is None
    assert harness.target_text("ratio_vs_ddp") == ">= 1"


def test_load_keeps_only_the_requested_size_in_benchmark_order(bench_dir):
    assert list(docs.load(bench_dir, "small")) == ["loader", "infer", "memory"]
    assert list(docs.load(bench_dir, "tiny")) == ["etl"]


def test_page_has_machine_commands_summary_targets_and_limits(bench_dir):
    page = docs.render(docs.load(bench_dir, "small"), "small")
    assert "2 cores: AMD EPYC; 23.4 GiB memory" in page
    assert "make bench" in page and "python -m benchmarks loader --size small" in page
    assert "| loader | `ratio_vs_pyarrow` | 0.5 | >= 0.9 | **missed** |" in page
    assert "| memory | `rss_growth` | 0.02 | <= 0.1 | met |" in page
    assert "| infer | `ratio_vs_predict_batch_udf` | n/a | >= 1 |  |" in page
    assert "| `dlpipe_petastorm` | 50 | 40.0% | 3 | samples/s | what dlpipe_petastorm does |" in page
    assert "could not run here: ImportError: no pyspark.ml" in page
    assert "**What limits `ratio_vs_pyarrow`.** Petastorm copies every row twice." in page
    assert "etl" not in page.split("## Summary")[1].split("## loader")[0]  # the tiny result is left out


def test_write_renders_to_the_given_path(bench_dir, tmp_path):
    out = docs.write(bench_dir, tmp_path / "docs" / "benchmarks.md", "small")
    assert out.read_text().startswith("# Benchmarks")
    empty = docs.render({}, "large")
    assert "No benchmark results at size `large`" in empty


def test_console_table_marks_missed_targets(bench_dir):
    result = json.loads((bench_dir / "loader.json").read_text())
    table = harness.format_table(result)
    assert "ratio_vs_pyarrow = 0.5  (target >= 0.9)  MISSED" in table
    assert "dlpipe_petastorm" in table and math.isfinite(result["contenders"]["dlpipe_petastorm"]["median"])


def test_docs_page_lives_in_the_repository_docs_folder():
    assert docs.DEFAULT_PATH == Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"
    assert docs.DEFAULT_PATH.is_file()


def test_derive_applies_overrides_like_the_command_line(tmp_path):
    from testkit import make_config

    base = make_config(tmp_path)
    derived = data.derive(base, "train.batch_size=128", "etl.splits={train: 0.9, val: 0.1}")
    assert derived.train.batch_size == 128 and derived.etl.splits == {"train": 0.9, "val": 0.1}
    assert derived.model == base.model and base.train.batch_size != 128


def test_etl_phases_are_timed_through_the_stage_listeners():
    from pipelines import session

    calls = []
    spark = SimpleNamespace(sparkContext=SimpleNamespace(setJobDescription=calls.append))
    with etl_bench._phase_clock() as marks:
        session.describe(spark, "etl: survey")
        session.describe(spark, "generate")  # not an ETL phase
        session.describe(spark, "etl: validate and write")
    session.describe(spark, "etl: after the clock")
    assert [m[0] for m in marks] == ["survey", "validate and write"]
    assert calls[0] == "dlpipe etl: survey" and session.STAGE_LISTENERS == []


def test_etl_limit_says_whether_the_shuffle_alone_misses_the_target():
    phases = {"survey": 0.6, "validate and write": 4.4}
    text = etl_bench.etl_limit(1_000_000, copy_rate=300_000, sorted_rate=200_000, phases=phases, spark_side_s=2.5)
    assert "(3.3 s)" in text and "would have 4.8 s" in text and "survey 0.6 s, validate and write 4.4 s" in text
    assert "the Spark side alone (into a noop sink, dlpipe_pass_to_noop) takes 2.5 s" in text
    assert "takes 5.0 s, 0.67x the plain copy's rate: the shuffle alone misses the target" in text
    text = etl_bench.etl_limit(1_000_000, copy_rate=300_000, sorted_rate=250_000, phases=phases, spark_side_s=2.5)
    assert "0.83x the plain copy's rate; the rest of the gap is the ETL's own work" in text


def _report(name: str, medians: dict[str, float], ratios: dict[str, float]) -> harness.Report:
    return harness.Report(name, "small", contenders={k: {"median": v} for k, v in medians.items()}, ratios=ratios)


def test_accumulate_limit_compares_dlpipe_with_plain_horovod_at_the_same_setting():
    from benchmarks import train as train_bench

    medians = {"horovod_2_processes_accumulate4": 3600.0, "dlpipe_2_ranks_accumulate4": 3420.0,
               "dlpipe_2_ranks": 2900.0, "dlpipe_2_ranks_ddp_accumulate4": 3700.0}
    text = train_bench.accumulate_limit(_report("train", medians, {"horovod_vs_ddp_accumulate4": 0.9}))
    assert "reaches 0.90x plain DDP" in text and "reach 0.95x that plain Horovod run" in text
    assert "dlpipe adds little to it" in text and "`dlpipe_2_ranks_ddp_accumulate4`" in text
    medians["dlpipe_2_ranks_accumulate4"] = 2800.0
    text = train_bench.accumulate_limit(_report("train", medians, {"horovod_vs_ddp_accumulate4": 0.9}))
    assert "reach 0.78x" in text and "the rest is dlpipe's data path" in text


def test_append_limit_says_when_the_append_is_all_fixed_cost_and_where_the_target_is_met():
    from benchmarks import append as append_bench

    medians = {"append_1_record": 1.2, "append_1pct": 1.25, "full_etl_everything": 5.0}
    text = append_bench._append_limit(_report("append", medians, {"fixed_cost_share_of_append": 0.96}),
                                      delta_rows=10_000, base_rows=989_999)
    assert "within the runs' spread: at this size the append is all fixed cost" in text
    assert "once a full ETL takes about 30 s, a dataset of about 6,000,000 records" in text
    medians["append_1pct"] = 2.0
    text = append_bench._append_limit(_report("append", medians, {"fixed_cost_share_of_append": 0.6}),
                                      delta_rows=10_000, base_rows=989_999)
    assert "What follows the data is the difference, 0.8 s for 10000 records" in text


@pytest.mark.parametrize("model_name", ["cnn", "autoencoder", "vae"])
def test_baselines_use_only_the_model_contract(model_name):
    import torch

    manifest = {"feature_shape": [1, 8, 8], "label_names": [str(d) for d in range(10)]}
    model = data.build_model(model_name, {}, manifest)
    features, labels = torch.randn(5, 1, 8, 8), torch.randint(0, 10, (5,))
    loss, _ = workers._loss_module(model)(features, labels)  # what plain PyTorch and DDP train on
    loss.backward()
    schema = model.output_schema()
    columns = workers.arrow_outputs(model.predict(features), schema)
    assert list(columns) == list(schema) and all(len(c) == 5 for c in columns.values())
