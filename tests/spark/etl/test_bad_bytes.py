"""Bad bytes are records, not crashes: invalid UTF-8 is quarantined with its reason under both
readers, lines split on \\n and \\r\\n only, and the counts reconcile."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from pipelines import dataset as ds
from pipelines.config import load_config
from pipelines.etl import job as etl


def _csv(folder) -> None:
    """20 records, CRLF line ends; record 5 has an invalid byte in a feature, record 7 in its label;
    record 9's note holds a form feed and U+2028 (neither ends a line)."""
    rows = [b"key,a,b,label,note"]
    for i in range(20):
        a, label, note = str(i).encode(), str(i % 2).encode(), b"plain"
        if i == 5:
            a = b"5\xff"
        if i == 7:
            label = b"\xe9"
        if i == 9:
            note = "form\x0cfeed and\u2028line separator".encode()
        rows.append(b"%d,%s,%d,%s,%s" % (i, a, i * 2, label, note))
    (folder / "wine.csv").write_bytes(b"\r\n".join(rows) + b"\r\n")


@pytest.mark.parametrize("reader", ["spark", "python"])
def test_invalid_utf8_is_quarantined_with_its_reason_and_nothing_else_moves(spark, tmp_path, reader):
    src = tmp_path / "src"
    src.mkdir()
    _csv(src)
    manifest = etl.main(spark, load_config(None, [
        f"workdir={tmp_path / 'work'}", f"etl.source.path={src}", "etl.source.kind=csv", "etl.source.id_column=key",
        "etl.source.feature_columns=[a, b]", "etl.max_quarantine_fraction=0.5", "etl.rows_per_row_group=8",
        f"storage.reader={reader}"]))
    assert manifest.records_in == 20 and manifest.accepted == 18 and manifest.quarantined == 2  # reconciles
    assert manifest.quarantine_by_reason["decode_error"] == 2
    root = tmp_path / "work" / "datasets" / "digits"
    version = root / ds.read_head(str(root)).versions[-1].folder
    rejected = {r["id"]: r["detail"] for r in pq.read_table(version / "quarantine").to_pylist()}
    assert sorted(rejected) == ["5", "7"]
    if reader == "python":  # it read the bytes itself: it says where
        assert rejected["5"] == "invalid UTF-8 bytes in the record (line 7, byte 4)"
    assert all(detail.startswith("invalid UTF-8 bytes in the record") for detail in rejected.values())


@pytest.mark.parametrize("reader", ["spark", "python"])
def test_an_unreadable_parquet_file_is_quarantined_as_a_file_and_the_rest_is_read(spark, tmp_path, reader):
    import pyarrow as pa

    src = tmp_path / "src"
    src.mkdir()
    pq.write_table(pa.Table.from_pylist([{"a": float(i), "b": float(-i), "label": i % 2} for i in range(30)]),
                   src / "good.parquet")
    (src / "truncated.parquet").write_bytes((src / "good.parquet").read_bytes()[:100])
    manifest = etl.main(spark, load_config(None, [
        f"workdir={tmp_path / 'work'}", f"etl.source.path={src}", "etl.source.kind=parquet",
        "etl.max_quarantine_fraction=0.5", "etl.rows_per_row_group=8", f"storage.reader={reader}"]))
    assert manifest.records_in == 31 and manifest.accepted == 30 and manifest.quarantine_by_reason["decode_error"] == 1
    root = tmp_path / "work" / "datasets" / "digits"
    version = root / ds.read_head(str(root)).versions[-1].folder
    (rejected,) = pq.read_table(version / "quarantine").to_pylist()
    assert rejected["id"] == "truncated.parquet" and rejected["detail"].startswith("unreadable Parquet file: ")
