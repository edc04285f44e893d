"""Scoring new raw records with the training's own preprocessing, pass-through columns, and the UDF.

A model trained on the bundled 8x8 digits scores a folder of new 16x16 PNGs (plus a truncated, a
non-image and an empty file); the good ones must score exactly as the same images do through the
ETL, because both decode with ``pipelines.preprocess``.
"""
from __future__ import annotations

import datetime

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pyspark.sql import functions as F
from pyspark.sql import types as T

import models
from testkit import DIGITS_DIR, REPO_ROOT, make_config, predictions_frame, split_files
from pipelines.artifact import artifact_meta, load_metadata, save_artifact
from pipelines.dataset import DatasetView, open_dataset
from pipelines.config import ConfigError, load_config
from pipelines.etl import job as etl
from pipelines.infer import inputs, model_udf
from pipelines.infer import job as infer
from pipelines.infer.scoring import image_features
from pipelines.train import driver as train

BAD = {"bad/truncated.png": "decode_error: image file is truncated",
       "bad/notes.txt": "decode_error: not an image file (Pillow cannot identify its format)",
       "bad/empty.png": "decode_error: empty file (0 bytes)"}


@pytest.fixture(scope="module")
def trained(spark, digits_workdir):
    config = make_config(digits_workdir, "run_id=infer-cnn", "train.epochs=3")
    train.main(spark, config)
    return config


@pytest.fixture(scope="module")
def new_images(tmp_path_factory):
    """(incoming folder: 20 digits resized to 16x16 under <label>/ plus bad/ files, ETL copy of the good ones)."""
    root = tmp_path_factory.mktemp("new-images")
    incoming, good_only = root / "incoming", root / "etl-copy"
    labels = pd.read_csv(DIGITS_DIR / "labels.csv").head(20)
    for row in labels.itertuples():
        name = f"{row.label}/{row.file.rsplit('/', 1)[-1]}"
        for folder in (incoming, good_only):
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            Image.open(DIGITS_DIR / row.file).resize((16, 16), Image.NEAREST).save(folder / name)
    (incoming / "bad").mkdir()
    whole = (incoming / name).read_bytes()
    (incoming / "bad" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (incoming / "bad" / "notes.txt").write_text("not an image\n")
    (incoming / "bad" / "empty.png").write_bytes(b"")
    return incoming, good_only


@pytest.fixture(scope="module")
def scored(spark, trained, new_images, tmp_path_factory):
    """The daily scoring job (the bundled config) on the incoming folder, and the same images via the ETL."""
    incoming, good_only = new_images
    workdir = trained.workdir
    config = load_config(REPO_ROOT / "pipelines" / "configs" / "digits_score_daily.yaml", [
        f"workdir={workdir}", "master=local[2]", "run_id=score-day1", "infer.model_run=infer-cnn",
        f"infer.source.path={incoming}"])
    result = infer.main(spark, config)
    predictions = predictions_frame(spark, result.predictions).toPandas().set_index("id")
    etl_workdir = tmp_path_factory.mktemp("etl-new-images")
    etl_config = make_config(etl_workdir, "dataset=new-digits", f"etl.source.path={good_only}",
                             "etl.source.labels_csv=''", "etl.splits={train: 1.0}")
    etl.main(spark, etl_config)
    etl_split = spark.read.parquet(*split_files(etl_workdir, "train", "new-digits"))
    return result, predictions, etl_split, config


def test_every_file_gets_one_row_and_the_bad_ones_an_error(scored, new_images, capsys):
    result, predictions, _, _ = scored
    files = sorted(p.relative_to(new_images[0]).as_posix() for p in new_images[0].rglob("*") if p.is_file())
    assert sorted(predictions.index) == files and len(files) == 23
    assert result.rows == 23 and result.bad_rows == 3 and result.eval is None
    for name, error in BAD.items():
        assert predictions.loc[name, "error"] == error
        assert pd.isna(predictions.loc[name, "prediction"]) and predictions.loc[name, "probabilities"] is None
    good = predictions.drop(index=list(BAD))
    assert good["error"].isna().all() and good["prediction"].notna().all()
    assert list(predictions.columns) == ["prediction", "probabilities", "error", "model_run", "model_digest",
                                         "path"]  # path: kept by default
    assert all(path.endswith("/incoming/" + name) for name, path in predictions["path"].items())


def test_new_images_score_exactly_as_the_same_images_through_the_etl(spark, scored, trained):
    result, predictions, etl_split, config = scored
    # The features: the scorer's decoding of the files the job read (the artifact's recorded
    # preprocessing, pipelines.preprocess) and the ETL's, bit for bit the same.
    meta = load_metadata(result.artifact)
    raw = inputs.read_input(spark, config, meta).frame.filter("content IS NOT NULL").select("id", "content").collect()
    features, _ = image_features([r["content"] for r in raw], meta.preprocessing)
    ours = {r["id"]: np.asarray(f, dtype=np.float32) for r, f in zip(raw, features.to_pylist()) if f is not None}
    theirs = {r["id"]: np.asarray(r["features"], dtype=np.float32) for r in etl_split.collect()}
    assert sorted(ours) == sorted(theirs) and len(theirs) == 20
    for key in theirs:
        assert ours[key].tobytes() == theirs[key].tobytes(), key
    # The predictions: the job's for the raw files equal scoring the ETL's features.
    via_etl, _ = infer.predict(spark, etl_split, result.artifact)
    expected = via_etl.toPandas().set_index("id").sort_index()
    good = predictions.drop(index=list(BAD)).sort_index()
    assert good["prediction"].astype(int).tolist() == expected["prediction"].tolist()
    np.testing.assert_allclose(np.stack(good["probabilities"]), np.stack(expected["probabilities"]), atol=1e-6)


def test_the_udf_scores_as_the_job_from_dataframe_code_and_sql(spark, scored, new_images):
    result, predictions, etl_split, _ = scored
    expected = predictions.drop(index=list(BAD)).sort_index()
    digits_cnn = model_udf(spark, result.artifact)
    frames = {"dataframe": etl_split.withColumn("pred", digits_cnn("features")).select("id", "pred.*")}
    etl_split.createOrReplaceTempView("new_digits")
    spark.udf.register("digits_cnn", digits_cnn)
    frames["sql"] = spark.sql("SELECT id, p.* FROM (SELECT id, digits_cnn(features) AS p FROM new_digits)")
    for how, frame in frames.items():
        got = frame.toPandas().set_index("id").sort_index()
        assert list(got.columns) == ["prediction", "probabilities", "error"], how
        assert got.index.tolist() == expected.index.tolist(), how
        assert got["error"].isna().all(), how
        assert got["prediction"].tolist() == expected["prediction"].astype(int).tolist(), how
        np.testing.assert_allclose(np.stack(got["probabilities"]), np.stack(expected["probabilities"]), atol=1e-6)
    # Raw image bytes in users' own frames: decoded by the same preprocessing, bad files get an error.
    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(new_images[0]))
    base = len("file:" + str(new_images[0])) + 2
    from_bytes = (files.select(F.col("path").substr(base, 1000).alias("id"), digits_cnn("content").alias("p"))
                  .select("id", "p.*").toPandas().set_index("id").sort_index())
    assert from_bytes.loc["bad/truncated.png", "error"] == BAD["bad/truncated.png"]
    assert from_bytes.loc["bad/notes.txt", "error"] == BAD["bad/notes.txt"]
    good = from_bytes.drop(index=["bad/truncated.png", "bad/notes.txt"])  # Spark's scan skips the empty file
    assert good["prediction"].tolist() == expected["prediction"].astype(int).tolist()
    assert len(digits_cnn.loads.value) <= 2  # at most once per worker process (local[2])


def test_a_parquet_with_extra_columns_keeps_every_one_unchanged(spark, trained, digits_workdir, tmp_path):
    split = spark.read.parquet(*split_files(digits_workdir, "test")).orderBy("id").limit(30)
    rows = [(None if i == 0 else r["id"], f"customer-{i}", i * 1.25, datetime.date(2026, 11, 1 + i % 28),
             ["a", str(i)], {"k": i}, r["features"]) for i, r in enumerate(split.collect())]
    schema = ("id string, customer string, amount double, day date, tags array<string>, "
              "extra map<string,int>, features array<float>")
    source = spark.createDataFrame(rows, schema)
    source.write.parquet(str(tmp_path / "input"))
    config = make_config(digits_workdir, "run_id=infer-cnn", f"infer.input={tmp_path / 'input'}",
                         f"infer.output={tmp_path / 'out'}")
    result = infer.main(spark, config)
    out = predictions_frame(spark, result.predictions)
    assert out.columns == ["id", "prediction", "probabilities", "error", "model_run", "model_digest", "customer",
                           "amount", "day", "tags", "extra"]
    assert result.rows == 30 and result.bad_rows == 0 and result.eval is None
    got = {r["customer"]: r for r in out.collect()}
    for r in source.collect():
        kept = got[r["customer"]]
        assert (kept["id"], kept["amount"], kept["day"], kept["tags"], kept["extra"]) == \
            (r["id"], r["amount"], r["day"], r["tags"], r["extra"])
        assert kept["prediction"] is not None
    assert got["customer-0"]["id"] is None
    # Only what infer.keep_columns names; a name the input lacks is a config error naming it.
    config = make_config(digits_workdir, "run_id=infer-cnn", f"infer.input={tmp_path / 'input'}",
                         f"infer.output={tmp_path / 'out2'}", "infer.keep_columns=[customer]")
    assert predictions_frame(spark, infer.main(spark, config).predictions).columns == \
        ["id", "prediction", "probabilities", "error", "model_run", "model_digest", "customer"]
    config.infer.keep_columns = ["customer", "nope"]
    with pytest.raises(ConfigError, match=r"infer.keep_columns names \['nope'\], not column\(s\) of"):
        infer.main(spark, config)


@pytest.fixture(scope="module")
def table_model(spark, tmp_path_factory):
    """A CSV dataset (features f0..f9, id column rid, label) through the ETL, and an MLP artifact for it."""
    root = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    values = np.round(rng.random((60, 10)) * 10 - 5, 3)
    train_csv = pd.DataFrame(values, columns=[f"f{i}" for i in range(10)])
    train_csv.insert(0, "rid", [f"r{i}" for i in range(60)])
    train_csv["label"] = [f"class{i % 3}" for i in range(60)]
    (root / "train").mkdir()
    train_csv.to_csv(root / "train" / "part.csv", index=False)
    config = make_config(root / "work", "dataset=table", "etl.source.kind=csv", f"etl.source.path={root / 'train'}",
                         "etl.source.id_column=rid", "etl.splits={train: 1.0}", "model.name=mlp")
    manifest = etl.main(spark, config)
    torch.manual_seed(0)
    model = models.build("mlp", feature_shape=tuple(manifest.feature_shape), num_classes=3)
    artifact = str(root / "model.pt")
    save_artifact(artifact, model, artifact_meta(model, DatasetView("", 1, manifest, {}, manifest.identity()), config))
    return root, train_csv, config, artifact


def test_raw_csv_is_preprocessed_as_the_etl_did_whatever_the_column_order(spark, table_model, tmp_path):
    root, train_csv, config, artifact = table_model
    new = train_csv[["rid", *[f"f{i}" for i in reversed(range(10))], "label"]].astype(str)
    new["customer"] = [f"c{i}" for i in range(60)]
    new.loc[60] = ["bad1", *["1"] * 6, "abc", *["1"] * 3, "class0", "c60"]  # f3: the 7th feature column from the left
    new.loc[61] = ["bad2", *["1"] * 4, "", *["1"] * 5, "class1", "c61"]  # f5 missing
    (tmp_path / "new").mkdir()
    new.to_csv(tmp_path / "new" / "day.csv", index=False)
    score = make_config(root / "work", "dataset=table", "run_id=day1", "infer.source.kind=csv",
                        f"infer.source.path={tmp_path / 'new'}", f"infer.artifact={artifact}",
                        f"infer.output={tmp_path / 'out'}")
    result = infer.main(spark, score)
    got = predictions_frame(spark, result.predictions).toPandas().set_index("id")
    assert result.rows == 62 and result.bad_rows == 2
    assert got.loc["bad1", "error"] == "decode_error: column 'f3' value 'abc' is not a number"
    assert got.loc["bad2", "error"] == "wrong_shape: missing value in column(s): f5"
    assert list(got.columns) == ["prediction", "probabilities", "error", "model_run", "model_digest", "rid", "label",
                                 "customer"]
    assert got["customer"].tolist() == new.set_index("rid").loc[got.index, "customer"].tolist()
    expected, _ = infer.predict(spark, spark.read.parquet(*open_dataset(config.dataset_dir).splits["train"].files),
                                artifact)
    expected = expected.toPandas().set_index("id").sort_index()
    good = got.drop(index=["bad1", "bad2"]).sort_index()
    assert good.index.tolist() == expected.index.tolist()
    assert good["prediction"].astype(int).tolist() == expected["prediction"].tolist()
    # The raw labels (names) are evaluated against the class indices the model predicts.
    truth = train_csv.set_index("rid")["label"]
    accuracy = np.mean([truth[i] == f"class{int(p)}" for i, p in good["prediction"].items()])
    assert result.eval.rows == 60 and result.eval.accuracy == pytest.approx(accuracy)
    # The UDF on numeric columns in a struct (by the model's column names): the same predictions.
    numeric = spark.createDataFrame(train_csv.drop(columns=["label"]))
    udf = model_udf(spark, artifact)
    by_struct = (numeric.select("rid", udf(F.struct(*[f"f{i}" for i in reversed(range(10))])).alias("p"))
                 .select("rid", "p.*").toPandas().set_index("rid").sort_index())
    assert by_struct["prediction"].tolist() == expected["prediction"].tolist()


def test_images_cannot_be_scored_by_a_tabular_model(spark, table_model, new_images):
    root, _, _, artifact = table_model
    config = make_config(root / "work", "dataset=table", "run_id=day1", "infer.source.kind=images",
                         f"infer.source.path={new_images[0]}", f"infer.artifact={artifact}")
    with pytest.raises(ConfigError, match="infer.source.kind='images' but the model was trained on csv records"):
        infer.main(spark, config)
