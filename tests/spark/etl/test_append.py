"""Appends (etl.mode=append): only new files are read, each append is a new version, old versions
stay as they were, splits and statistics equal those of a full ETL of everything."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from testkit import DIGITS_DIR
from pipelines import dataset as ds
from pipelines.config import load_config
from pipelines.etl import job as etl
from pipelines.etl.sources import EtlError

LABELS = (DIGITS_DIR / "labels.csv").read_text().splitlines()


def _images(folder: Path, rows: list[str]) -> None:
    """Copy the bundled digits named by ``rows`` (labels.csv lines) into ``folder`` and append them to
    its labels.csv (a folder that grows over days, as an upload area does)."""
    for row in rows:
        name = row.split(",")[0]
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DIGITS_DIR / name, folder / name)
    labels = folder / "labels.csv"
    before = labels.read_text().splitlines() if labels.exists() else [LABELS[0]]
    labels.write_text("\n".join(before + rows) + "\n")


def _etl(spark, workdir, src, *overrides):
    return etl.main(spark, load_config(None, [f"workdir={workdir}", f"etl.source.path={src}", "etl.mode=append",
                                              "etl.rows_per_row_group=16", *overrides]))


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_appends_read_only_new_files_keep_old_versions_and_equal_a_full_etl(spark, tmp_path):
    src, work = tmp_path / "src", tmp_path / "work"
    _images(src, LABELS[1:601])
    first = _etl(spark, work, src)
    assert (first.version, first.records_in, first.input_files.listed) == (1, 600, 600)
    dataset_dir = work / "datasets" / "digits"
    version_1 = dataset_dir / ds.read_head(str(dataset_dir)).versions[0].folder
    before = _files(version_1)

    _images(src, LABELS[601:901])
    second = _etl(spark, work, src)
    assert (second.version, second.records_in, second.input_files.listed) == (2, 300, 300)  # only the new files
    assert _files(version_1) == before  # version 1 is never rewritten
    again = _etl(spark, work, src)  # the same append twice: nothing new, nothing published
    assert again == second and len(ds.read_head(str(dataset_dir)).versions) == 2

    view = ds.open_dataset(str(dataset_dir))
    full = etl.main(spark, load_config(None, [f"workdir={tmp_path / 'full'}", f"etl.source.path={src}",
                                              "etl.rows_per_row_group=16"]))
    full_view = ds.open_dataset(str(tmp_path / "full" / "datasets" / "digits"))
    assert view.counts == full_view.counts  # every record in the split a full ETL gives it
    for split in view.splits:
        ids = sorted(ds.read_split(view.splits[split], ("id",)).column("id").to_pylist())
        assert ids == sorted(ds.read_split(full_view.splits[split], ("id",)).column("id").to_pylist()), split
    np.testing.assert_allclose(view.manifest.normalization.mean, full.normalization.mean, rtol=1e-9)
    np.testing.assert_allclose(view.manifest.normalization.std, full.normalization.std, rtol=1e-9)
    assert view.manifest.label_names == full.label_names
    assert ds.open_dataset(str(dataset_dir), 1).counts == {k: v.count for k, v in first.splits.items()}


def test_an_id_an_earlier_version_holds_is_a_duplicate_naming_that_version(spark, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    rows = lambda ids: "key,a,b,label\n" + "".join(f"{i},{i},{i * 2},{i % 2}\n" for i in ids)  # noqa: E731
    (src / "day1.csv").write_text(rows(range(40)))
    common = ["etl.source.kind=csv", "etl.source.id_column=key", "etl.max_quarantine_fraction=0.5"]
    _etl(spark, tmp_path / "work", src, *common)
    (src / "day2.csv").write_text(rows([5, 7, *range(40, 60)]))  # 5 and 7 came on day 1
    second = _etl(spark, tmp_path / "work", src, *common)
    assert second.records_in == 22 and second.accepted == 20 and second.quarantine_by_reason["duplicate_id"] == 2
    folder = tmp_path / "work" / "datasets" / "digits" / ds.read_head(str(tmp_path / "work" / "datasets" / "digits")).versions[1].folder
    rejected = pq.read_table(folder / "quarantine").to_pylist()
    assert sorted((r["id"], r["detail"]) for r in rejected) == [
        ("5", "id already in dataset version 1"), ("7", "id already in dataset version 1")]


def test_a_new_label_is_an_error_naming_the_version_unless_the_config_allows_it(spark, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "day1.csv").write_text("a,b,label\n" + "".join(f"{i},{i},x\n" for i in range(20)))
    _etl(spark, tmp_path / "work", src, "etl.source.kind=csv", "etl.splits={train: 1.0}")
    (src / "day2.csv").write_text("a,b,label\n" + "".join(f"{i},{-i},{'w' if i % 2 else 'x'}\n" for i in range(20, 30)))
    with pytest.raises(EtlError, match=r"dataset version 2 would add label\(s\) \['w'\] .*etl.allow_new_labels=true"):
        _etl(spark, tmp_path / "work", src, "etl.source.kind=csv", "etl.splits={train: 1.0}")
    assert len(ds.read_head(str(tmp_path / "work" / "datasets" / "digits")).versions) == 1  # nothing published
    grown = _etl(spark, tmp_path / "work", src, "etl.source.kind=csv", "etl.splits={train: 1.0}",
                 "etl.allow_new_labels=true")
    assert grown.label_names == ["x", "w"]  # the old label keeps index 0
    view = ds.open_dataset(str(tmp_path / "work" / "datasets" / "digits"))
    labels = ds.read_split(view.splits["train"], ("label",)).column("label").to_pylist()
    assert (labels.count(0), labels.count(1)) == (25, 5)  # day 1's 20 x, day 2's 5 x and 5 w


def test_a_run_trains_on_the_version_it_started_with(spark, tmp_path):
    from testkit import make_config
    from pipelines.train.job import plan_job, record_run_data

    src, work = tmp_path / "src", tmp_path / "work"
    _images(src, LABELS[1:201])
    _etl(spark, work, src)
    config = make_config(work, f"etl.source.path={src}", "run_id=r1")
    record_run_data(plan_job(config))
    _images(src, LABELS[201:301])
    _etl(spark, work, src)
    assert plan_job(config).data.version == 1  # the run's own version, not the newest
    assert plan_job(make_config(work, "run_id=r2")).data.version == 2
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match="run r1 trains on version 1 of dataset digits"):
        plan_job(make_config(work, "run_id=r1", "dataset_version=2"))
    assert json.loads((work / "runs" / "r1" / "dataset.json").read_text())["version"] == 1


@pytest.mark.parametrize("reader", ["spark", "python"])
def test_a_parquet_source_appends_its_new_files_alike_with_either_reader(spark, tmp_path, reader):
    src = tmp_path / "src"
    src.mkdir()

    def part(name: str, ids: range) -> None:
        pq.write_table(pa.table({"id": [f"r{i}" for i in ids], "label": [i % 2 for i in ids],
                                 "features": [[float(i), 1.0, 2.0, 3.0] for i in ids]}), src / name)

    common = ["etl.source.kind=parquet", "etl.source.feature_columns=[features]", "etl.source.id_column=id",
              "etl.source.image_shape=[2,2]", f"storage.reader={reader}"]
    part("day1.parquet", range(50))
    assert _etl(spark, tmp_path / "work", src, *common).records_in == 50
    part("day2.parquet", range(50, 80))
    second = _etl(spark, tmp_path / "work", src, *common)
    assert (second.version, second.records_in, second.accepted, second.input_files.listed) == (2, 30, 30, 1)


@pytest.mark.parametrize("kind", ["csv", "json", "parquet"])
def test_an_append_that_finds_nothing_new_succeeds_with_one_line_under_either_reader(spark, tmp_path, capsys, kind):
    """A scheduler runs the same append again (or a second job waited for the first's lease and then
    found its files ingested): success, one line, nothing published, for every source kind and reader."""
    src = tmp_path / "src"
    src.mkdir()
    rows = [{"a": float(i), "b": float(-i), "label": i % 2} for i in range(24)]
    if kind == "csv":
        (src / "day1.csv").write_text("a,b,label\n" + "".join(f"{r['a']},{r['b']},{r['label']}\n" for r in rows))
    elif kind == "json":
        (src / "day1.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), src / "day1.parquet")
    first = _etl(spark, tmp_path / "work", src, f"etl.source.kind={kind}")
    dataset_dir = str(tmp_path / "work" / "datasets" / "digits")
    head = ds.read_head(dataset_dir)
    capsys.readouterr()
    for reader in ("spark", "python"):
        again = _etl(spark, tmp_path / "work", src, f"etl.source.kind={kind}", f"storage.reader={reader}")
        assert again == first  # the newest version's manifest, as it was
        out = capsys.readouterr().out
        assert [line for line in out.splitlines() if line.startswith("etl:")] == [
            f"etl: nothing new in {src}: its 1 file(s) are in versions 1..1 of {dataset_dir}; nothing published"]
    assert ds.read_head(dataset_dir) == head  # no new head
