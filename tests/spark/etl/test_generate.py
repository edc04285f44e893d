"""Generate job: deterministic per sample id, right shapes, accepted by the ETL; and a run at scale."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipelines.etl import generate
from pipelines.etl import job as etl
from pipelines.config import load_config
from pipelines.publish import committed_folder

REPO_ROOT = Path(__file__).resolve().parents[2]


def committed(target: Path) -> Path:
    """The committed folder of a publication (``dlpipe generate`` commits its files under the output)."""
    return Path(committed_folder(str(target)))


def run_generate(spark, workdir: Path, *overrides: str) -> generate.GenerateResult:
    return generate.main(spark, load_config(None, [f"workdir={workdir}", *overrides]))


def test_uniforms_are_a_pure_function_of_seed_and_id():
    ids = np.array([5, 3, 1_000_000_007])
    u = generate.uniforms(7, ids, stream=2, count=4)
    assert np.array_equal(u[::-1], generate.uniforms(7, ids[::-1], stream=2, count=4))
    assert np.array_equal(u[1:2], generate.uniforms(7, ids[1:2], stream=2, count=4))
    assert not np.array_equal(u, generate.uniforms(8, ids, stream=2, count=4))
    assert ((u > 0) & (u < 1)).all()


@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    """The same 2,500 samples generated with 1 and with 3 partitions."""
    workdir = tmp_path_factory.mktemp("gen")
    outs = []
    for parts in (1, 3):
        out = workdir / f"p{parts}"
        run_generate(spark, workdir, "generate.num_samples=2500", "generate.image_size=8",
                     f"generate.partitions={parts}", f"generate.output={out}", "train.seed=3")
        outs.append(out)
    return outs


def test_same_samples_whatever_the_partitioning(generated):
    one, three = (pq.read_table(committed(p)).sort_by("id") for p in generated)
    assert len(list(committed(generated[0]).glob("part-*.parquet"))) == 1
    assert len(list(committed(generated[1]).glob("part-*.parquet"))) == 3
    assert one.equals(three)


def test_generated_shapes_labels_and_info(generated):
    out = committed(generated[1])
    table = pq.read_table(out)
    assert table.column_names == ["id", "label", "features"]
    ids = table.column("id").to_pylist()
    assert sorted(ids) == [f"gen-{i:09d}" for i in range(2500)]
    features = np.stack(table.column("features").to_numpy(zero_copy_only=False))
    assert features.shape == (2500, 64) and features.dtype == np.float32
    assert features.min() >= 0.0 and features.max() <= 1.0 and 0.1 < features.mean() < 0.6
    counts = np.bincount(table.column("label").to_numpy(), minlength=10)
    assert len(counts) == 10 and counts.min() > 150  # every digit, roughly evenly
    info = json.loads((out / generate.INFO_FILE).read_text())
    assert (info["n"], info["image_size"], info["seed"]) == (2500, 8, 3)
    assert generate.GenerateResult.from_dict(info).files == sorted(p.name for p in out.glob("part-*.parquet"))


def test_undeformed_samples_are_their_base_digit(monkeypatch):
    """With every deformation off, a sample is exactly one of the real digits, with its label."""
    monkeypatch.setattr(generate, "MAX_SCALE_CHANGE", 0.0)
    digits, labels = generate.load_digits()
    params = generate.Deformation(seed=3, num_samples=2500, image_size=8, max_rotation_deg=0,
                                  max_shift_px=0, elastic_alpha=0, noise_std=0)
    batch = generate.generate_block(0, params, digits, labels)
    x = np.stack(batch.column("features").to_numpy(zero_copy_only=False))
    distance = ((x[:, None, :] - digits.reshape(len(digits), -1)[None]) ** 2).sum(-1)
    assert np.allclose(distance.min(axis=1), 0.0, atol=1e-10)
    assert (labels[distance.argmin(axis=1)] == batch.column("label").to_numpy()).all()


def test_etl_accepts_generated_output(spark, generated, tmp_path):
    manifest = etl.main(spark, load_config(None, [
        f"workdir={tmp_path}", "dataset=gen", "etl.source.kind=parquet", f"etl.source.path={generated[1]}",
        "etl.source.feature_columns=[features]", "etl.source.id_column=id", "etl.source.image_shape=[8,8]",
    ]))
    assert manifest.records_in == manifest.accepted == 2500  # the publication's target: its committed files
    assert manifest.feature_shape == [1, 8, 8]
    assert manifest.label_names == [str(d) for d in range(10)]


@pytest.mark.slow
def test_generate_and_etl_larger_than_spark_memory(tmp_path):
    """150k 28x28 samples (~0.47 GB of float32 features, several times the under 130 MB of execution and storage
    memory a 512 MB JVM gives Spark) through generate and the ETL as CLI jobs."""
    n = int(os.environ.get("DLPIPE_SCALE_SAMPLES", "150000"))
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_CONF_DIR": str(REPO_ROOT / "spark-conf")}
    common = [f"workdir={tmp_path}", "master=local[2]", "spark.spark.driver.memory=512m",
              "spark.spark.ui.enabled=false", f"spark.spark.local.dir={tmp_path / 'spark-local'}"]
    out = tmp_path / "generated" / f"digits_28px_{n}"
    jobs = {
        "generate": ["pipelines", "generate", *common, f"generate.num_samples={n}", "generate.image_size=28"],
        "etl": ["pipelines", "etl", *common, "dataset=gen28", "etl.source.kind=parquet", f"etl.source.path={out}",
                "etl.source.feature_columns=[features]", "etl.source.id_column=id",
                "etl.source.image_shape=[28,28]", "etl.rows_per_row_group=1024"],
    }
    seconds = {}
    for name, args in jobs.items():  # one after the other: never two Spark JVMs at once
        start = time.monotonic()
        done = subprocess.run([sys.executable, "-m", *args], cwd=REPO_ROOT, env=env,
                              capture_output=True, text=True, timeout=900)
        seconds[name] = time.monotonic() - start
        assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    generated_bytes = sum(p.stat().st_size for p in committed(out).glob("*.parquet"))
    from pipelines.dataset import open_dataset

    manifest = open_dataset(str(tmp_path / "datasets" / "gen28")).manifest
    assert manifest.records_in == manifest.accepted + manifest.quarantined == n
    assert manifest.accepted == n and manifest.feature_shape == [1, 28, 28]
    assert sum(s.count for s in manifest.splits.values()) == n
    print(f"\nscale: {n} samples, {n * 784 * 4 / 1e9:.2f} GB float32 features, generated Parquet "
          f"{generated_bytes / 1e9:.2f} GB; generate {seconds['generate']:.0f} s, etl {seconds['etl']:.0f} s")
