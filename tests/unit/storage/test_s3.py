"""Storage operations against a real S3 endpoint (moto's server as a child process), and Petastorm reading
sharded batches from it through the legacy-filesystem adapter."""
from __future__ import annotations

import pickle
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from testkit import needs_petastorm

from pipelines import storage
from pipelines.storage import FileEntry, StorageError, StorageOptions
from benchmarks.s3server import S3Server, free_port

BUCKET = "dlpipe-test"


@pytest.fixture(scope="module")
def bucket(s3: S3Server) -> str:
    s3.make_bucket(BUCKET)
    return f"s3://{BUCKET}"


@pytest.fixture
def prefix(bucket: str) -> str:
    """A fresh, empty prefix per test."""
    return f"{bucket}/t-{uuid.uuid4().hex[:8]}"


def test_write_read_and_list_after_write(prefix):
    storage.write_bytes(f"{prefix}/a/b.bin", b"12345")
    storage.write_json(f"{prefix}/meta.json", {"z": 1, "a": 2})
    storage.write_text(f"{prefix}/_SUCCESS", "")
    assert storage.read_bytes(f"{prefix}/a/b.bin") == b"12345"
    meta = '{\n  "a": 2,\n  "z": 1\n}\n'
    assert storage.read_text(f"{prefix}/meta.json") == meta
    assert storage.list_files(prefix) == [FileEntry(f"{prefix}/a/b.bin", 5), FileEntry(f"{prefix}/meta.json", len(meta))]
    assert storage.list_files(f"{prefix}/", recursive=False) == [FileEntry(f"{prefix}/meta.json", len(meta))]
    assert [e.location for e in storage.list_files(prefix, include_hidden=True)] == [
        f"{prefix}/_SUCCESS", f"{prefix}/a/b.bin", f"{prefix}/meta.json"]
    assert storage.list_files(prefix, suffix=".json") == [FileEntry(f"{prefix}/meta.json", len(meta))]
    assert storage.list_files(f"{prefix}/a/b.bin") == [FileEntry(f"{prefix}/a/b.bin", 5)]
    assert storage.list_files(f"{prefix}/nothing") == []


def test_exists_is_file_is_dir(prefix, bucket):
    storage.write_bytes(f"{prefix}/d/x.bin", b"x")
    assert (storage.exists(prefix), storage.is_dir(prefix), storage.is_file(prefix)) == (True, True, False)
    assert (storage.exists(f"{prefix}/d/x.bin"), storage.is_file(f"{prefix}/d/x.bin")) == (True, True)
    assert (storage.exists(f"{prefix}/none"), storage.is_dir(f"{prefix}/none")) == (False, False)
    assert storage.is_dir(bucket) is True


def test_read_missing_object_raises_file_not_found(prefix):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(f"{prefix}/missing.bin")


def test_open_output_parquet_and_open_input(prefix):
    table = pa.table({"id": ["a", "b", "c"], "label": pa.array([1, 2, 3], pa.int64())})
    target = f"{prefix}/part-0.parquet"
    with storage.open_output(target) as stream:
        pq.write_table(table, stream, row_group_size=2)
    with storage.open_input(target) as f:
        parquet = pq.ParquetFile(f)
        assert parquet.num_row_groups == 2
        assert parquet.read().to_pydict() == table.to_pydict()


def test_open_output_error_deletes_the_object(prefix):
    target = f"{prefix}/broken.bin"
    with pytest.raises(RuntimeError, match="boom"):
        with storage.open_output(target) as stream:
            stream.write(b"partial data")
            raise RuntimeError("boom")
    assert storage.exists(target) is False
    assert storage.list_files(prefix, include_hidden=True) == []


def test_delete_and_delete_dir(prefix):
    for rel in ("a/1.bin", "a/b/2.bin", "c.bin"):
        storage.write_bytes(f"{prefix}/{rel}", b"x")
    storage.delete(f"{prefix}/c.bin")
    storage.delete(f"{prefix}/c.bin")  # missing is fine
    assert [e.location for e in storage.list_files(prefix)] == [f"{prefix}/a/1.bin", f"{prefix}/a/b/2.bin"]
    storage.delete_dir(f"{prefix}/a")
    storage.delete_dir(f"{prefix}/a")  # missing is fine
    assert storage.list_files(prefix) == [] and storage.exists(f"{prefix}/a") is False
    # (pyarrow 14 re-creates an empty "prefix/" marker object for the parent after a delete: a folder to it)
    storage.mkdirs(f"{prefix}/x")  # object stores: nothing to do
    assert storage.exists(f"{prefix}/x") is False


def test_filesystem_is_cached_and_honours_the_endpoint(s3, bucket):
    fs, path = storage.filesystem(f"{bucket}/x/y")
    assert path == f"{BUCKET}/x/y"
    assert storage.filesystem(f"{bucket}/z")[0] is fs
    # AWS_ENDPOINT_URL alone (no option) is enough too
    with storage.using_options(StorageOptions()):
        storage.write_bytes(f"{bucket}/env-only.bin", b"ok")
        assert storage.read_bytes(f"{bucket}/env-only.bin") == b"ok"


def test_check_location_ok_and_leaves_no_probe(prefix):
    storage.check_location(prefix, "workdir")  # prefix does not exist yet: its parent is listed
    storage.write_bytes(f"{prefix}/x.bin", b"x")
    storage.check_location(prefix, "workdir")
    storage.check_location(prefix, "data.source", write=False)
    assert [e.location for e in storage.list_files(prefix, include_hidden=True)] == [f"{prefix}/x.bin"]


def test_check_location_missing_bucket(s3):
    with pytest.raises(StorageError) as info:
        storage.check_location("s3://no-such-bucket/work", "workdir")
    assert str(info.value) == ("workdir=s3://no-such-bucket/work: the bucket 'no-such-bucket' does not exist: "
                               "create it or fix the name")


def test_check_location_on_an_object(prefix):
    storage.write_bytes(f"{prefix}/file.bin", b"x")
    with pytest.raises(StorageError, match=r"^workdir=s3://.*/file.bin: is a file, not a folder"):
        storage.check_location(f"{prefix}/file.bin", "workdir")


def test_check_location_unreachable_endpoint_fails_fast(s3):
    closed = f"http://127.0.0.1:{free_port()}"  # nobody listens there
    start = time.monotonic()
    with storage.using_options(StorageOptions(s3_endpoint=closed)), pytest.raises(StorageError) as info:
        storage.check_location(f"s3://{BUCKET}/work", "workdir")
    elapsed = time.monotonic() - start
    assert elapsed < 10, elapsed
    assert str(info.value).startswith(f"workdir=s3://{BUCKET}/work: endpoint unreachable: nothing answers at "
                                      f"{closed}")


def test_operations_after_the_server_stops_raise_storage_errors(s3, prefix):
    """A server that goes away mid-run: calls fail with a readable StorageError, then work again after a restart."""
    storage.write_bytes(f"{prefix}/x.bin", b"x")
    s3.stop()
    try:
        with pytest.raises(StorageError, match="endpoint unreachable"):
            storage.list_files(prefix)
    finally:
        s3.start()
    # moto keeps its data in memory: a restarted server is empty again
    s3.make_bucket(BUCKET)
    storage.write_bytes(f"{prefix}/y.bin", b"y")
    assert storage.list_files(prefix) == [FileEntry(f"{prefix}/y.bin", 1)]


# --- Petastorm through the legacy-filesystem adapter ------------------------------------------------------

def _write_dataset(folder: str, files: int, row_groups: int, rows_per_group: int) -> list[list[int]]:
    """Parquet files id/label/features; label = global row number. Returns each row group's labels, in
    Petastorm's order (files sorted by path, row groups in file order)."""
    schema = pa.schema([("id", pa.string()), ("label", pa.int64()), ("features", pa.list_(pa.float32()))])
    groups, row = [], 0
    for f in range(files):
        labels = np.arange(row, row + row_groups * rows_per_group)
        row += len(labels)
        table = pa.table({"id": [f"r{x}" for x in labels], "label": labels.astype(np.int64),
                          "features": [[float(x), float(x) / 2] for x in labels]}, schema=schema)
        with storage.open_output(f"{folder}/part-{f:05d}.parquet") as stream:
            pq.write_table(table, stream, row_group_size=rows_per_group)
        groups += [labels[i:i + rows_per_group].tolist() for i in range(0, len(labels), rows_per_group)]
    storage.write_text(f"{folder}/_SUCCESS", "")  # Spark's marker: must be skipped by the reader
    return groups


def _read_labels(url_or_urls, adapter, cur_shard: int, shard_count: int = 2) -> list[int]:
    from petastorm import make_batch_reader

    labels = []
    with make_batch_reader(url_or_urls, filesystem=adapter, cur_shard=cur_shard, shard_count=shard_count,
                           shuffle_row_groups=True, schema_fields=["features", "label"], num_epochs=1,
                           workers_count=1, reader_pool_type="thread") as reader:
        for batch in reader:
            assert sorted(batch._fields) == ["features", "label"]
            for label, features in zip(batch.label, batch.features):
                assert list(features) == [float(label), float(label) / 2]
            labels += batch.label.tolist()
    return labels


@needs_petastorm
@pytest.mark.filterwarnings("ignore")  # Petastorm's and legacy pyarrow's deprecation chatter
def test_petastorm_reads_shards_from_s3(prefix):
    folder = f"{prefix}/train"
    groups = _write_dataset(folder, files=3, row_groups=3, rows_per_group=20)
    adapter = storage.petastorm_filesystem(folder)
    urls = [storage.petastorm_url(e.location) for e in storage.list_files(folder, suffix=".parquet")]
    assert urls[0] == f"{folder}/part-00000.parquet"
    for cur_shard in (0, 1):
        expected = sorted(x for i, g in enumerate(groups) if i % 2 == cur_shard for x in g)
        assert sorted(_read_labels(urls, adapter, cur_shard)) == expected  # list of file URLs
        assert sorted(_read_labels(storage.petastorm_url(folder), adapter, cur_shard)) == expected  # one folder URL


@needs_petastorm
@pytest.mark.filterwarnings("ignore")
def test_petastorm_reads_local_folders_too(tmp_path):
    folder = str(tmp_path / "train")
    groups = _write_dataset(folder, files=2, row_groups=2, rows_per_group=5)
    assert storage.petastorm_url(folder) == f"file://{folder}"
    expected = sorted(x for i, g in enumerate(groups) if i % 2 == 0 for x in g)
    assert sorted(_read_labels(storage.petastorm_url(folder), storage.petastorm_filesystem(folder), 0)) == expected


@needs_petastorm
def test_petastorm_adapter_pickles_as_location_and_options(bucket):
    adapter = storage.petastorm_filesystem(f"{bucket}/data")
    adapter.fs  # built
    clone = pickle.loads(pickle.dumps(adapter))
    assert clone._fs is None  # no network client travelled
    assert (clone._location, clone._options) == (f"{bucket}/data", storage.current_options().resolved())
    storage.write_bytes(f"{bucket}/data/p.bin", b"p")
    assert clone.isfile(f"{BUCKET}/data/p.bin") and clone.isdir(f"{BUCKET}/data")
    assert clone.ls(f"{BUCKET}/data") == [f"{BUCKET}/data/p.bin"]
    assert list(clone.walk(f"{BUCKET}/data")) == [(f"{BUCKET}/data", [], ["p.bin"])]


@pytest.fixture
def read_aheads(monkeypatch) -> list:
    """Every ``storage.ReadAhead`` the loader makes from now on (to count their misses)."""
    from pipelines.storage import readahead

    made = []

    class Recording(readahead.ReadAhead):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(readahead, "ReadAhead", Recording)
    return made


@needs_petastorm
@pytest.mark.filterwarnings("ignore")
def test_the_loader_reads_row_groups_ahead_in_petastorms_own_order(prefix, read_aheads):
    """Read-ahead fetches each row group before Petastorm asks for it: the order it predicts is the
    reader's (a Petastorm that ordered otherwise fails here) and no read misses it."""
    from pipelines.dataset import SplitFiles
    from pipelines.train import loader

    folder = f"{prefix}/train"
    groups = _write_dataset(folder, files=3, row_groups=3, rows_per_group=20)
    split = SplitFiles([e.location for e in storage.list_files(folder, suffix=".parquet")], [[20, 20, 20]] * 3)
    made = read_aheads
    for shard, seed in ((0, 11), (1, 11), (1, 12)):
        with loader._reader(split, shard=shard, shards=2, seed=seed, shuffle=True) as reader:
            read = [labels.tolist() for _, labels in reader]
        assert read == [groups[i] for i in loader.petastorm_order(9, shard, 2, seed, shuffle=True)]
        assert made[-1].misses == 0 and len(made) == [(0, 11), (1, 11), (1, 12)].index((shard, seed)) + 1


def test_the_arrow_loader_reads_the_same_batches_from_s3_as_from_local_disk_all_read_ahead(prefix, tmp_path,
                                                                                            read_aheads):
    """``train.loader=arrow`` on a store: pyarrow reads each row group from the read-ahead (no miss),
    and the batches are those of the same files on local disk."""
    from pipelines.artifact import Normalizer
    from pipelines.dataset import Normalization, SplitFiles
    from pipelines.train import loader

    remote, local = f"{prefix}/train", str(tmp_path / "train")
    groups = _write_dataset(remote, files=3, row_groups=3, rows_per_group=20)
    assert _write_dataset(local, files=3, row_groups=3, rows_per_group=20) == groups
    splits = {where: SplitFiles([e.location for e in storage.list_files(where, suffix=".parquet")], [[20] * 3] * 3)
              for where in (remote, local)}
    made = read_aheads
    normalize = Normalizer.from_stats(Normalization("global", [0.0], [1.0]), [2])
    for rank, seed, skip in ((0, 3, 0), (1, 3, 2), (1, 4, 0)):
        order = loader.BatchOrder(batch_size=16, steps=6, seed=seed, skip=skip)  # 96 rows: rank 1 (80) reads twice
        batches = {where: list(loader.epoch_batches(split, order, rank=rank, size=2, normalize=normalize,
                                                    loader="arrow")) for where, split in splits.items()}
        assert len(batches[remote]) == 6 - skip
        for a, b in zip(batches[remote], batches[local]):
            assert np.array_equal(a["features"].numpy(), b["features"].numpy())
            assert np.array_equal(a["label"].numpy(), b["label"].numpy())
    with loader._arrow_reader(splits[remote], shard=1, shards=2, seed=11, shuffle=True) as chunks:
        read = [labels.tolist() for _, labels in chunks]
    assert read == [groups[i] for i in loader.petastorm_order(9, 1, 2, 11, shuffle=True)]
    assert len(made) == 1 + 2 + 2 + 1 and all(ahead.misses == 0 for ahead in made)  # one per pass over a shard
