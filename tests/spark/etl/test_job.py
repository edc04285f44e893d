"""ETL job on real Spark (local[2]) and real Parquet: validation reasons, splits, layout, manifest."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from testkit import needs_petastorm
from PIL import Image

from pipelines import dataset as ds
from pipelines.etl import job as etl
from pipelines.etl import validate as etl_validate
from pipelines.config import ConfigError, load_config
from pipelines.etl.sources import EtlError
from pipelines.etl.write import mark_duplicates

DIGIT_IDS = [f"images/digit_{i:04d}.png" for i in range(1797)]
NO_REASONS = {r: 0 for r in etl_validate.REASONS}


def run_etl(spark, workdir: Path, *overrides: str) -> ds.Manifest:
    config = load_config(None, [f"workdir={workdir}", *overrides])
    return etl.main(spark, config)


def version_dir(dataset: Path) -> Path:
    """The folder of the dataset's newest committed version."""
    return dataset / ds.read_head(str(dataset)).versions[-1].folder


def read_split(dataset: Path, split: str) -> pa.Table:
    return ds.read_split(ds.open_dataset(str(dataset)).splits[split], ("id", "label", "features"))


def quarantine(dataset: Path) -> pa.Table:
    return pq.read_table(version_dir(dataset) / "quarantine")


def quarantine_reasons(dataset: Path) -> dict[str, str]:
    table = quarantine(dataset)
    return dict(zip(table.column("id").to_pylist(), table.column("reason").to_pylist()))


def reasons(**counts: int) -> dict[str, int]:
    return {**NO_REASONS, **counts}


# --- the bundled digits -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits_run(spark, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits")
    manifest = run_etl(spark, workdir)
    return manifest, workdir / "datasets" / "digits"


def test_digits_counts_reconcile(digits_run):
    manifest, dataset = digits_run
    assert manifest.records_in == manifest.accepted + manifest.quarantined == 1797
    assert manifest.accepted == 1797 and manifest.quarantine_by_reason == NO_REASONS
    assert manifest.label_names == [str(d) for d in range(10)]
    assert manifest.feature_shape == [1, 8, 8] and manifest.dtype == "float32"
    assert sum(s.count for s in manifest.splits.values()) == 1797
    for split in manifest.splits.values():
        assert sum(split.per_class.values()) == split.count
    assert ds.read_manifest(str(version_dir(dataset))) == manifest
    assert quarantine(dataset).num_rows == 0


def test_digits_parquet_matches_manifest(digits_run):
    manifest, dataset = digits_run
    rows_per_group = manifest.rows_per_row_group
    seen: list[str] = []
    for name, info in manifest.splits.items():
        table = read_split(dataset, name)
        assert table.schema.field("features").type == pa.list_(pa.float32())
        assert table.schema.field("label").type == pa.int64()
        assert table.num_rows == info.count
        features = np.stack(table.column("features").to_numpy(zero_copy_only=False))
        assert features.shape == (info.count, 64) and features.dtype == np.float32
        assert features.min() >= 0.0 and features.max() <= 1.0
        counts = np.bincount(table.column("label").to_numpy(), minlength=10)
        assert dict(zip(manifest.label_names, counts.tolist())) == info.per_class
        version = version_dir(dataset)
        assert sorted(f"{name}/{p.name}" for p in (version / name).iterdir()) == [f.path for f in info.files]
        groups = 0
        for file in info.files:
            meta = pq.ParquetFile(version / file.path).metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
            assert sizes == file.row_groups  # the manifest records each file's row groups
            assert all(s == rows_per_group for s in sizes[:-1]) and 0 < sizes[-1] <= rows_per_group
            groups += len(sizes)
        assert groups == info.row_groups
        seen += table.column("id").to_pylist()
        if name == "train":
            norm = manifest.normalization
            assert norm.mode == "global"
            assert norm.mean == pytest.approx([features.astype(np.float64).mean()], abs=1e-4)
            assert norm.std == pytest.approx([features.astype(np.float64).std()], abs=1e-4)
    assert sorted(seen) == DIGIT_IDS  # every image exactly once, in exactly one split


def test_digits_labels_follow_labels_csv(digits_run, digits_dir):
    _, dataset = digits_run
    expected = dict(line.split(",") for line in (digits_dir / "labels.csv").read_text().split()[1:])
    table = pa.concat_tables([read_split(dataset, s) for s in ("train", "val", "test")])
    for image_id, label in zip(table.column("id").to_pylist(), table.column("label").to_pylist()):
        assert str(label) == expected[image_id]  # label names are "0".."9": index == digit


@needs_petastorm
def test_petastorm_reads_train_split(digits_run):
    from petastorm import make_batch_reader

    manifest, dataset = digits_run
    rows = 0
    with make_batch_reader(f"file://{version_dir(dataset) / 'train'}", num_epochs=1, workers_count=1) as reader:
        for batch in reader:
            assert batch.features.shape[1:] == (64,) and batch.features.dtype == np.float32
            rows += len(batch.label)
    assert rows == manifest.splits["train"].count


def test_rerun_replaces_instead_of_duplicating(spark, digits_run):
    manifest, dataset = digits_run
    before = {s: sorted(read_split(dataset, s).column("id").to_pylist()) for s in manifest.splits}
    again = run_etl(spark, dataset.parent.parent)
    after = {s: sorted(read_split(dataset, s).column("id").to_pylist()) for s in manifest.splits}
    assert after == before
    assert dataclasses.replace(again, created_at="") == dataclasses.replace(manifest, created_at="")
    assert again.identity() == manifest.identity()  # the same data: checkpoints made on it stay valid
    assert [p.name for p in dataset.parent.iterdir()] == ["digits"]  # no temp or old folders left
    version = version_dir(dataset)
    # the old version is gone; each ETL committed a new numbered head (none replaced)
    assert sorted(p.name for p in dataset.iterdir()) == sorted([ds.head_name(1), ds.head_name(2), version.name])
    assert sorted(p.name for p in version.iterdir()) == sorted(["train", "val", "test", "quarantine", "manifest.json",
                                                                "inputs.parquet", "_sources"])
    assert again.summary == manifest.summary and again.summary.rows == manifest.accepted  # the same drift summary


# --- bad records ------------------------------------------------------------------------------

def make_image_folder(root: Path, digits_dir: Path) -> None:
    """12 good digits, an RGB image of another size, a corrupt file, and labels.csv problems."""
    (root / "img").mkdir(parents=True)
    for i in range(12):
        shutil.copy(digits_dir / "images" / f"digit_{i:04d}.png", root / "img" / f"d{i}.png")
    Image.new("RGB", (20, 16), (255, 255, 255)).save(root / "img" / "rgb.jpg")  # converted + resized
    (root / "img" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    lines = ["file,label"] + [f"img/d{i}.png,{i % 10}" for i in range(10)]
    lines += [
        "img/rgb.jpg,1",
        "img/corrupt.png,3",  # decode_error
        "./img/d10.png,banana",  # unknown_label (leading ./ is accepted)
        "img/d3.png,3",  # listed twice -> duplicate_id
        "img/missing.png,4",  # no such file -> decode_error
    ]  # img/d11.png is not listed -> missing_label
    (root / "labels.csv").write_text("\n".join(lines) + "\n")


def test_image_folder_bad_records(spark, tmp_path, digits_dir):
    make_image_folder(tmp_path / "src", digits_dir)
    manifest = run_etl(
        spark, tmp_path / "work",
        f"etl.source.path={tmp_path / 'src'}",
        "etl.source.label_names=['0','1','2','3','4','5','6','7','8','9']",
        "etl.max_quarantine_fraction=0.5",
    )
    expected = reasons(decode_error=2, missing_label=1, unknown_label=1, duplicate_id=1)
    assert manifest.quarantine_by_reason == expected
    # 14 files + 1 extra labels.csv row for d3 + 1 row naming a missing file = 16 records
    assert manifest.records_in == 16 and manifest.accepted == 11 and manifest.quarantined == 5
    dataset = tmp_path / "work" / "datasets" / "digits"
    assert quarantine_reasons(dataset) == {
        "img/corrupt.png": "decode_error",
        "img/missing.png": "decode_error",
        "img/d11.png": "missing_label",
        "img/d10.png": "unknown_label",
        "img/d3.png": "duplicate_id",
    }
    accepted = pa.concat_tables([read_split(dataset, s) for s in manifest.splits])
    ids = accepted.column("id").to_pylist()
    assert sorted(ids) == sorted([f"img/d{i}.png" for i in range(10)] + ["img/rgb.jpg"])
    rgb = accepted.filter(pa.compute.equal(accepted.column("id"), "img/rgb.jpg"))
    assert rgb.column("features").to_pylist()[0] == [1.0] * 64  # white RGB -> L, 20x16 -> 8x8


def sub_folders_of_digits(digits_dir: Path, src: Path, *folders: str) -> Path:
    """Five bundled digit PNGs in each of ``folders`` under ``src`` (labels from folder names)."""
    for k, name in enumerate(folders):
        (src / name).mkdir(parents=True)
        for i in range(5 * k, 5 * k + 5):
            shutil.copy(digits_dir / "images" / f"digit_{i:04d}.png", src / name / f"{i}.png")
    return src


def test_labels_from_sub_folders(spark, tmp_path, digits_dir):
    src = sub_folders_of_digits(digits_dir, tmp_path / "src", "cat", "dog")
    shutil.copy(digits_dir / "images" / "digit_0010.png", src / "loose.png")  # no folder -> no label
    manifest = run_etl(
        spark, tmp_path / "work", f"etl.source.path={src}", "etl.source.labels_csv=''",
        "etl.max_quarantine_fraction=0.2", "etl.source.channels=3", "etl.source.image_shape=[4,6]",
    )
    assert manifest.label_names == ["cat", "dog"]
    assert manifest.feature_shape == [3, 4, 6]
    assert manifest.quarantine_by_reason == reasons(missing_label=1)
    assert manifest.accepted == 10
    assert sum(s.per_class["dog"] for s in manifest.splits.values()) == 5
    assert len(manifest.normalization.mean) == 1


def test_every_listed_image_file_is_a_record_empty_and_truncated_ones_quarantined(spark, tmp_path, digits_dir):
    """Spark's scan skips zero-byte files: they must still be counted and quarantined."""
    src = sub_folders_of_digits(digits_dir, tmp_path / "src", "a", "b")
    (src / "a" / "empty.png").write_bytes(b"")
    (src / "b" / "empty2.PNG").write_bytes(b"")
    whole = (digits_dir / "images" / "digit_0011.png").read_bytes()
    (src / "a" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (src / "b" / "notes.png").write_text("this is not an image")
    (src / "b" / "README.txt").write_text("not an image extension: not an input")
    listed = [p for p in src.rglob("*") if p.is_file() and p.suffix.lower() == ".png"]
    manifest = run_etl(spark, tmp_path / "work", f"etl.source.path={src}", "etl.source.labels_csv=''",
                       "etl.max_quarantine_fraction=0.5")
    assert manifest.records_in == len(listed) == 14
    assert manifest.accepted == 10 and manifest.quarantine_by_reason == reasons(decode_error=4)
    assert manifest.input_files.to_dict() == {"listed": 14, "empty": 2,
                                              "empty_examples": ["a/empty.png", "b/empty2.PNG"]}
    table = quarantine(tmp_path / "work" / "datasets" / "digits")
    details = dict(zip(table.column("id").to_pylist(), table.column("detail").to_pylist()))
    assert details["a/empty.png"] == details["b/empty2.PNG"] == "empty file (0 bytes)"
    assert "truncated" in details["a/truncated.png"]
    assert "cannot decode image" in details["b/notes.png"]
    assert table.column("source").to_pylist()[table.column("id").to_pylist().index("a/empty.png")].endswith(
        "src/a/empty.png")


def test_empty_and_header_only_tabular_files_hold_no_records_and_are_reported(spark, tmp_path, capsys):
    src = tmp_path / "csvs"
    src.mkdir()
    (src / "a.csv").write_text("f1,f2,label\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(20)))
    (src / "b.csv").write_text("f1,f2,label\n")  # header only: zero records, not an error
    (src / "c.csv").write_bytes(b"")  # zero bytes: reported
    manifest = run_etl(spark, tmp_path / "work", "etl.source.kind=csv", f"etl.source.path={src}",
                       "etl.splits={train: 1.0}")
    assert manifest.records_in == manifest.accepted == 20 and manifest.quarantined == 0
    assert manifest.input_files.to_dict() == {"listed": 3, "empty": 1, "empty_examples": ["c.csv"]}
    assert "1 of 3 input files are empty (0 bytes; they hold no records): c.csv" in capsys.readouterr().out


CSV_GOOD = [f"{i},{i * 0.5},{-i},{i % 3},{i % 2}" for i in range(30)]
CSV_BAD = [
    "1,NaN,3,4,0",  # nan_or_inf
    "1,2,inf,4,1",  # nan_or_inf
    "1,2,3,0",  # too few fields -> wrong_shape
    "1,2,3,4,5,1",  # too many fields -> wrong_shape
    "1,,3,4,1",  # empty feature -> wrong_shape
    "1,abc,3,4,0",  # decode_error
    "7,7,7,7,",  # missing_label
    "0,0.0,0,0,0",  # identical to the first good row -> same content id -> duplicate_id
]


def test_csv_bad_records(spark, tmp_path):
    src = tmp_path / "table.csv"
    src.write_text("\n".join(["a,b,c,d,label", *CSV_GOOD, *CSV_BAD]) + "\n")
    manifest = run_etl(
        spark, tmp_path / "work", "etl.source.kind=csv", f"etl.source.path={src}",
        "etl.source.feature_columns=[a,b,c,d]", "etl.max_quarantine_fraction=0.3",
        "etl.normalization=per_feature", "etl.rows_per_row_group=4", "etl.output_files=2",
    )
    expected = reasons(decode_error=1, wrong_shape=3, nan_or_inf=2, missing_label=1, duplicate_id=1)
    assert manifest.quarantine_by_reason == expected
    assert manifest.records_in == 38 == manifest.accepted + manifest.quarantined
    assert manifest.accepted == 30 and manifest.feature_shape == [4]
    assert manifest.label_names == ["0", "1"]
    dataset = tmp_path / "work" / "datasets" / "digits"
    rejected = quarantine(dataset).to_pylist()
    assert all(q["source"].endswith("table.csv") and q["detail"] for q in rejected)
    assert any("'b' value 'abc' is not a number" in q["detail"] for q in rejected)
    train = read_split(dataset, "train")
    features = np.stack(train.column("features").to_numpy(zero_copy_only=False)).astype(np.float64)
    norm = manifest.normalization
    assert norm.mode == "per_feature" and len(norm.mean) == 4
    assert norm.mean == pytest.approx(features.mean(axis=0).tolist(), abs=1e-4)
    assert norm.std == pytest.approx(np.maximum(features.std(axis=0), 1e-6).tolist(), abs=1e-4)


def test_json_array_column_bad_records(spark, tmp_path):
    lines = [json.dumps({"key": f"r{i}", "x": [i, i + 1, i + 2], "y": i % 2}) for i in range(20)]
    lines += [
        "{not json",  # decode_error
        json.dumps({"key": "short", "x": [1, 2], "y": 0}),  # wrong_shape
        json.dumps({"key": "null", "x": [1, None, 2], "y": 0}),  # wrong_shape
        json.dumps({"key": "r3", "x": [9, 9, 9], "y": 0}),  # same id as r3 -> one of the two is duplicate_id
        json.dumps({"key": "", "x": [1, 2, 3], "y": 1}),  # missing_id
        json.dumps({"key": "lab", "x": [1, 2, 3], "y": 7}),  # unknown_label
    ]
    src = tmp_path / "data.jsonl"
    src.write_text("\n".join(lines) + "\n")
    manifest = run_etl(
        spark, tmp_path / "work", "etl.source.kind=json", f"etl.source.path={src}",
        "etl.source.feature_columns=[x]", "etl.source.label_column=y", "etl.source.id_column=key",
        "etl.source.label_names=['0','1']", "etl.max_quarantine_fraction=0.5",
    )
    expected = reasons(decode_error=1, wrong_shape=2, unknown_label=1, missing_id=1, duplicate_id=1)
    assert manifest.quarantine_by_reason == expected
    assert manifest.records_in == 26 and manifest.accepted == 20
    assert manifest.feature_shape == [3]
    # Both r3 records come from one JSON file (no row numbers): the next tie-break is the label, "0" < "1".
    dataset = tmp_path / "work" / "datasets" / "digits"
    kept = pa.concat_tables([read_split(dataset, s) for s in manifest.splits]).to_pylist()
    assert [(r["features"], r["label"]) for r in kept if r["id"] == "r3"] == [([9.0, 9.0, 9.0], 0)]


def test_a_label_seen_only_on_rejected_records_is_not_a_class(spark, tmp_path):
    """The survey sees every label; the files are rewritten when one belongs to rejected records only."""
    rows = [f"{i},{i + 1},{['2', '10'][i % 2]}" for i in range(20)] + ["1,NaN,5", "2,,7"]  # 5 and 7: rejected only
    src = tmp_path / "t.csv"
    src.write_text("\n".join(["a,b,label", *rows]) + "\n")
    manifest = run_etl(spark, tmp_path / "work", "etl.source.kind=csv", f"etl.source.path={src}",
                       "etl.max_quarantine_fraction=0.2", "etl.rows_per_row_group=3")
    assert manifest.label_names == ["2", "10"]  # not ["2", "5", "7", "10"]
    assert manifest.quarantine_by_reason == reasons(nan_or_inf=1, wrong_shape=1)
    dataset = tmp_path / "work" / "datasets" / "digits"
    table = pa.concat_tables([read_split(dataset, s) for s in manifest.splits])
    by_id = {}
    for line in rows[:20]:
        a, b, label = line.split(",")
        by_id[f"{float(a)},{float(b)}"] = label
    for features, index in zip(table.column("features").to_pylist(), table.column("label").to_pylist()):
        assert manifest.label_names[index] == by_id[f"{features[0]},{features[1]}"]
    for name, info in manifest.splits.items():
        assert sum(info.per_class.values()) == info.count
        for file in info.files:
            sizes = dataset_row_groups(version_dir(dataset) / file.path)
            assert all(size == 3 for size in sizes[:-1]) and sizes == file.row_groups
    configured = run_etl(spark, tmp_path / "work", "etl.source.kind=csv", f"etl.source.path={src}",
                         "etl.max_quarantine_fraction=0.2", "etl.source.label_names=['10','5','2','7']")
    assert configured.label_names == ["10", "5", "2", "7"]  # configured: kept, even classes without records
    per_class = {k: sum(s.per_class[k] for s in configured.splits.values()) for k in ["10", "5", "2", "7"]}
    assert per_class == {"10": 10, "5": 0, "2": 10, "7": 0}


def dataset_row_groups(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]


def test_a_wrong_guess_of_the_array_length_is_corrected_by_a_second_write(spark, tmp_path, monkeypatch, capsys):
    """The length is guessed from the first records; the writer counts all of them."""
    monkeypatch.setattr(etl_validate, "SHAPE_SAMPLE", 4)
    short = [{"rid": f"s{i}", "vec": [1.0, 2.0, 3.0], "cls": 0} for i in range(5)]  # first in the file
    long = [{"rid": f"l{i}", "vec": [1.0, 2.0, 3.0, float(i)], "cls": i % 2} for i in range(20)]
    pq.write_table(pa.Table.from_pylist(short + long), tmp_path / "src.parquet")
    manifest = run_etl(spark, tmp_path / "work", "etl.source.kind=parquet", f"etl.source.path={tmp_path / 'src.parquet'}",
                       "etl.source.feature_columns=[vec]", "etl.source.label_column=cls", "etl.source.id_column=rid",
                       "etl.max_quarantine_fraction=0.25")
    assert "suggested feature shape [3], but over all records it is [4]: validating and writing again" in capsys.readouterr().out
    assert manifest.feature_shape == [4] and manifest.accepted == 20
    assert manifest.quarantine_by_reason == reasons(wrong_shape=5)
    dataset = tmp_path / "work" / "datasets" / "digits"
    assert sorted(quarantine_reasons(dataset)) == [f"s{i}" for i in range(5)]
    assert sorted(pa.concat_tables([read_split(dataset, s) for s in manifest.splits]).column("id").to_pylist()) == sorted(
        f"l{i}" for i in range(20))


# --- failure publishes nothing ----------------------------------------------------------------

def test_too_many_rejects_raise_and_keep_previous_dataset(spark, tmp_path):
    src = tmp_path / "table.csv"
    src.write_text("\n".join(["a,b,c,d,label", *CSV_GOOD]) + "\n")
    args = ["etl.source.kind=csv", f"etl.source.path={src}", "etl.max_quarantine_fraction=0.1"]
    first = run_etl(spark, tmp_path / "work", *args)
    dataset = tmp_path / "work" / "datasets" / "digits"
    before = {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()}

    src.write_text("\n".join(["a,b,c,d,label", *CSV_GOOD, *CSV_BAD]) + "\n")  # 8 of 38 bad: 21%
    with pytest.raises(EtlError) as failure:
        run_etl(spark, tmp_path / "work", *args)
    message = str(failure.value)
    for text in ("8 of 38", "etl.max_quarantine_fraction=0.1", "decode_error=1", "wrong_shape=3",
                 "nan_or_inf=2", "missing_label=1", "duplicate_id=1", "Nothing was published"):
        assert text in message
    after = {p.relative_to(dataset): p.read_bytes() for p in dataset.rglob("*") if p.is_file()}
    assert after == before and first.accepted == 30
    assert [p.name for p in dataset.parent.iterdir()] == ["digits"]


def test_errors_name_the_setting_and_the_fix(spark, tmp_path):
    src = tmp_path / "table.csv"
    src.write_text("a,b,klass\n1,2,0\n")
    with pytest.raises(EtlError, match=r"etl.source.label_column='label': no such column .*\['a', 'b', 'klass'\]"):
        run_etl(spark, tmp_path / "work", "etl.source.kind=csv", f"etl.source.path={src}")
    with pytest.raises(EtlError, match="etl.source.path='nowhere/at/all' does not exist"):
        run_etl(spark, tmp_path / "work", "etl.source.path=nowhere/at/all")
    with pytest.raises(ConfigError, match="must sum to 1"):
        run_etl(spark, tmp_path / "work", "etl.splits={train: 0.7, val: 0.2}")
    header_only = tmp_path / "empty.csv"
    header_only.write_text("a,b,label\n")
    with pytest.raises(EtlError, match=r"no records found in csv source .*empty.csv.* \(etl.source.path\)"):
        run_etl(spark, tmp_path / "work", "etl.source.kind=csv", f"etl.source.path={header_only}")
    assert not (tmp_path / "work" / "datasets").exists()


# --- splits -----------------------------------------------------------------------------------

def test_split_does_not_depend_on_input_partitioning(spark, tmp_path):
    rng = np.random.default_rng(0)
    n = 400
    table = pa.table({
        "rid": [f"row-{i}" for i in range(n)],
        "vec": pa.array(list(rng.random((n, 6), dtype=np.float32)), type=pa.list_(pa.float32())),
        "cls": rng.integers(0, 3, n),
    })
    for files in (1, 5):
        folder = tmp_path / f"src{files}"
        folder.mkdir()
        for k, chunk in enumerate(np.array_split(rng.permutation(n), files)):
            pq.write_table(table.take(pa.array(chunk)), folder / f"f{k}.parquet")
        run_etl(
            spark, tmp_path / "work", f"dataset=p{files}", "etl.source.kind=parquet", f"etl.source.path={folder}",
            "etl.source.feature_columns=[vec]", "etl.source.label_column=cls", "etl.source.id_column=rid",
            "etl.source.image_shape=[2,3]", "etl.output_files=3", "etl.rows_per_row_group=16",
        )
    one, five = (tmp_path / "work" / "datasets" / f"p{k}" for k in (1, 5))
    m1, m5 = (ds.read_manifest(str(version_dir(d))) for d in (one, five))
    assert m1.feature_shape == [1, 2, 3]  # 6 == channels * 2 * 3
    assert m1.splits == m5.splits and m1.normalization == m5.normalization
    for split in m1.splits:
        for file in m1.splits[split].files:  # same rows, same order, same row groups
            assert pq.read_table(version_dir(one) / file.path).equals(pq.read_table(version_dir(five) / file.path))


# --- transforms on tiny DataFrames ------------------------------------------------------------

def test_classify_then_mark_duplicates_in_the_job_order(spark):
    rows = [
        # id, source, row, label, n_features, decode, null, nonfinite, fingerprint
        ("a", "f1", 0, "1", 3, None, None, None, 1),
        ("a", "f1", 1, "1", 3, None, None, None, 2),  # duplicate of the row above
        ("b", "f1", 2, "1", None, "cannot decode", None, None, 3),
        ("c", "f1", 3, "1", 2, None, None, None, 4),
        ("d", "f1", 4, None, 3, None, None, None, 5),
        ("e", "f1", 5, "9", 3, None, None, None, 6),
        ("f", "f1", 6, "1", 3, None, None, "features contain NaN", 7),
        ("a", "f0", 9, "0", 3, "bad", None, None, 8),  # invalid: not a competitor for id a
        (None, "f1", 7, "1", 3, None, None, None, 9),
    ]
    df = spark.createDataFrame(
        rows,
        "id string, source string, row long, label string, n_features int, decode_detail string, "
        "null_detail string, nonfinite_detail string, fingerprint long",
    )
    classified = etl_validate.classify(df, 3, ["0", "1"]).orderBy("id", *etl_validate.DUPLICATE_ORDER)
    decided, _ = mark_duplicates(pa.Table.from_pylist([r.asDict() for r in classified.collect()]))
    got = {(r["id"], r["row"]): r["reason"] for r in decided.to_pylist()}
    assert got == {
        ("a", 0): None, ("a", 1): "duplicate_id", ("b", 2): "decode_error", ("c", 3): "wrong_shape",
        ("d", 4): "missing_label", ("e", 5): "unknown_label", ("f", 6): "nan_or_inf",
        ("a", 9): "decode_error", (None, 7): "missing_id",
    }
    detail = {(r["id"], r["row"]): r["detail"] for r in decided.to_pylist()}
    assert detail[("c", 3)] == "expected 3 feature values, got 2"
    assert detail[("a", 1)] == "same id as the record kept from f1"


def test_split_column_is_a_function_of_the_id(spark):
    splits = {"train": 0.7, "val": 0.2, "test": 0.1}
    ids = spark.range(20000).selectExpr("concat('id-', id) as id")
    one = etl_validate.assign_split(ids.coalesce(1), splits)
    many = etl_validate.assign_split(ids.repartition(7), splits)
    assert one.exceptAll(many).count() == 0
    counts = {r.split: r["count"] for r in one.groupBy("split").count().collect()}
    assert counts["train"] == pytest.approx(14000, rel=0.05)
    assert counts["val"] == pytest.approx(4000, rel=0.1) and counts["test"] == pytest.approx(2000, rel=0.1)


def test_label_names_sort_numerically():
    assert etl_validate.sort_label_names(["10", "2", "1"]) == ["1", "2", "10"]
    assert etl_validate.sort_label_names(["b", "a", "10"]) == ["10", "a", "b"]
