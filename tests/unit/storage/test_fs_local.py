"""Storage operations on local paths and file:// URIs; HDFS URI handling and its clear error without Hadoop."""
from __future__ import annotations

import json
import os
import pickle

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipelines import storage
from pipelines.storage import FileEntry, StorageError, StorageOptions


def _all_files(root) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files)


def test_write_bytes_is_atomic_creates_parents_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "manifest.json"
    storage.write_bytes(str(target), b"first")
    storage.write_bytes(f"file://{target}", b"second")
    assert target.read_bytes() == b"second"
    assert _all_files(tmp_path) == ["a/b/manifest.json"]
    assert storage.read_bytes(str(target)) == b"second"


def test_text_and_json_round_trip(tmp_path):
    storage.write_text(str(tmp_path / "t.txt"), "héllo\n")
    assert storage.read_text(str(tmp_path / "t.txt")) == "héllo\n"
    storage.write_json(str(tmp_path / "m.json"), {"b": 1, "a": [1, 2]})
    assert (tmp_path / "m.json").read_text() == json.dumps({"a": [1, 2], "b": 1}, indent=2) + "\n"


def test_read_missing_file_raises_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        storage.read_bytes(str(tmp_path / "missing.bin"))


def test_open_output_streams_parquet_and_replaces_on_success(tmp_path):
    target = str(tmp_path / "out" / "part-0.parquet")
    table = pa.table({"id": ["a", "b"], "label": pa.array([0, 1], pa.int64())})
    with storage.open_output(target) as stream:
        writer = pq.ParquetWriter(stream, table.schema)
        writer.write_table(table)
        writer.close()
        assert not os.path.exists(target)  # invisible until the block ends
    assert _all_files(tmp_path) == ["out/part-0.parquet"]
    with storage.open_input(target) as f:
        assert pq.read_table(f).to_pydict() == {"id": ["a", "b"], "label": [0, 1]}


def test_open_output_error_leaves_nothing_and_keeps_old_content(tmp_path):
    target = tmp_path / "x.bin"
    with pytest.raises(ValueError, match="boom"):
        with storage.open_output(str(target)) as stream:
            stream.write(b"partial")
            raise ValueError("boom")
    assert _all_files(tmp_path) == []
    target.write_bytes(b"old")
    with pytest.raises(ValueError):
        with storage.open_output(str(target)) as stream:
            stream.write(b"new")
            raise ValueError("boom")
    assert target.read_bytes() == b"old" and _all_files(tmp_path) == ["x.bin"]


def _tree(root) -> None:
    for rel, data in {"b/2.parquet": b"22", "a.parquet": b"1", "b/c/3.parquet": b"333", "b/notes.txt": b"n",
                      "_SUCCESS": b"", ".a.parquet.crc": b"c", "b/_tmp/4.parquet": b"4444",
                      "b/.hidden/5.parquet": b"55555"}.items():
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)


def test_list_files_recursion_hidden_suffix_and_sorting(tmp_path):
    _tree(tmp_path)
    root = str(tmp_path)

    def rels(entries):
        return [(os.path.relpath(e.location, root), e.size) for e in entries]

    assert rels(storage.list_files(root)) == [
        ("a.parquet", 1), ("b/2.parquet", 2), ("b/c/3.parquet", 3), ("b/notes.txt", 1)]
    assert rels(storage.list_files(root, suffix=".parquet")) == [
        ("a.parquet", 1), ("b/2.parquet", 2), ("b/c/3.parquet", 3)]
    assert rels(storage.list_files(root, suffix=(".txt", "3.parquet"))) == [("b/c/3.parquet", 3), ("b/notes.txt", 1)]
    assert rels(storage.list_files(root, recursive=False)) == [("a.parquet", 1)]
    assert rels(storage.list_files(root, include_hidden=True)) == [
        (".a.parquet.crc", 1), ("_SUCCESS", 0), ("a.parquet", 1), ("b/.hidden/5.parquet", 5), ("b/2.parquet", 2),
        ("b/_tmp/4.parquet", 4), ("b/c/3.parquet", 3), ("b/notes.txt", 1)]
    # a file lists as itself; a missing folder lists as nothing; file:// gives plain paths back
    assert storage.list_files(os.path.join(root, "a.parquet")) == [FileEntry(os.path.join(root, "a.parquet"), 1)]
    assert storage.list_files(os.path.join(root, "nope")) == []
    assert storage.list_files(f"file://{root}/b/c") == [FileEntry(os.path.join(root, "b/c/3.parquet"), 3)]


def test_exists_is_file_is_dir(tmp_path):
    _tree(tmp_path)
    root = str(tmp_path)
    assert (storage.exists(root), storage.is_dir(root), storage.is_file(root)) == (True, True, False)
    f = os.path.join(root, "a.parquet")
    assert (storage.exists(f), storage.is_dir(f), storage.is_file(f)) == (True, False, True)
    missing = os.path.join(root, "missing")
    assert (storage.exists(missing), storage.is_dir(missing), storage.is_file(missing)) == (False, False, False)


def test_delete_and_delete_dir(tmp_path):
    _tree(tmp_path)
    root = str(tmp_path)
    storage.delete(os.path.join(root, "a.parquet"))
    storage.delete(os.path.join(root, "a.parquet"))  # missing is fine
    storage.delete_dir(os.path.join(root, "b"))
    storage.delete_dir(os.path.join(root, "b"))  # missing is fine
    assert _all_files(tmp_path) == [".a.parquet.crc", "_SUCCESS"]
    with pytest.raises(StorageError, match="is a file, not a folder"):
        storage.delete_dir(os.path.join(root, "_SUCCESS"))
    os.makedirs(os.path.join(root, "d"))
    with pytest.raises(StorageError, match="is a folder: use delete_dir"):
        storage.delete(os.path.join(root, "d"))
    with pytest.raises(StorageError, match="refusing to delete a filesystem root"):
        storage.delete_dir("/")


def test_mkdirs(tmp_path):
    storage.mkdirs(str(tmp_path / "x" / "y"))
    storage.mkdirs(str(tmp_path / "x" / "y"))
    assert (tmp_path / "x" / "y").is_dir()
    (tmp_path / "f").write_bytes(b"")
    with pytest.raises(StorageError, match="is a file, not a folder"):
        storage.mkdirs(str(tmp_path / "f"))


def test_filesystem_of_local_paths(tmp_path):
    fs, path = storage.filesystem(f"file://{tmp_path}/x")
    assert isinstance(fs, pafs.LocalFileSystem) and path == f"{tmp_path}/x"


def test_check_location_ok_creates_nothing(tmp_path):
    storage.check_location(str(tmp_path), "workdir")
    storage.check_location(str(tmp_path / "new" / "deeper"), "workdir")  # probes the nearest existing folder
    storage.check_location(str(tmp_path), "data.source", write=False)
    assert os.listdir(tmp_path) == []


def test_check_location_path_under_a_file(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(StorageError) as info:
        storage.check_location(str(tmp_path / "file" / "work"), "workdir")
    assert str(info.value) == (f"workdir={tmp_path}/file/work: {tmp_path}/file is a file, so no folder can be made "
                               "below it: choose another path")
    with pytest.raises(StorageError, match=r"^workdir=.*/file: is a file, not a folder"):
        storage.check_location(str(tmp_path / "file"), "workdir")


def test_check_location_read_only_folder():
    # Tests run as root, and root ignores permission bits (a 0o500 folder stays writable for it), so the
    # read-only folder is /proc: listing works, creating a file there fails for everyone.
    with pytest.raises(StorageError) as info:
        storage.check_location("/proc", "workdir")
    assert str(info.value).startswith("workdir=/proc: not writable: cannot create a file in /proc")
    storage.check_location("/proc", "workdir", write=False)  # reading is fine


def test_check_location_refuses_bad_uris_first():
    with pytest.raises(StorageError, match="^workdir=ftp://h/x: unknown scheme"):
        storage.check_location("ftp://h/x", "workdir")
    with pytest.raises(StorageError, match=r"^workdir=s3://\*\*\*@bkt/x: credentials must not"):
        storage.check_location("s3://ak:sk@bkt/x", "workdir")


def test_storage_options_resolved_from_environment():
    env = {"AWS_ENDPOINT_URL": "http://a:1", "AWS_REGION": "eu-west-1", "AZURE_STORAGE_ACCOUNT_NAME": "acct"}
    assert StorageOptions().resolved(env) == StorageOptions("http://a:1", "eu-west-1", "acct")
    env.update(AWS_ENDPOINT_URL_S3="http://s3only:2", AWS_DEFAULT_REGION="us-west-2")
    assert StorageOptions().resolved(env) == StorageOptions("http://s3only:2", "us-west-2", "acct")
    explicit = StorageOptions(s3_endpoint="http://mine:9", s3_region="ap-south-1", azure_account="me")
    assert explicit.resolved(env) == explicit
    assert StorageOptions().resolved({}) == StorageOptions()
    assert pickle.loads(pickle.dumps(explicit)) == explicit


def test_each_options_block_gets_filesystems_for_its_options(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    options = StorageOptions(s3_endpoint="http://127.0.0.1:9", s3_region="eu-west-1")
    with storage.using_options(options):
        assert storage.current_options() == options
        fs, path = storage.filesystem("s3://bkt/a/b")
        assert path == "bkt/a/b" and fs.region == "eu-west-1"
        assert storage.filesystem("s3://bkt/c")[0] is fs  # cached per bucket and options
    with storage.using_options(StorageOptions(s3_endpoint="http://127.0.0.1:9", s3_region="us-west-2")):
        assert storage.filesystem("s3://bkt/c")[0].region == "us-west-2"
    with storage.using_options(options):
        assert storage.filesystem("s3://bkt/c")[0] is fs  # the same options again: the same client
    with pytest.raises(TypeError, match="using_options wants a StorageOptions, got dict"):
        with storage.using_options({"s3_endpoint": "x"}):
            pass


def test_bad_endpoint_option_names_it():
    with storage.using_options(StorageOptions(s3_endpoint="ftp://host:1/x")), pytest.raises(
            StorageError, match=r"^workdir=s3://bkt/p: endpoint 'ftp://host:1/x' .*http\(s\)://host:port"):
        storage.check_location("s3://bkt/p", "workdir")


def test_azure_without_adlfs_says_how_to_install():
    try:  # adlfs is optional and not installed here
        import adlfs  # noqa: F401
        pytest.skip("adlfs is installed")
    except ImportError:
        pass
    with pytest.raises(StorageError, match=r"abfs://box@acct.dfs.core.windows.net/p: .*pip install adlfs"):
        storage.filesystem("abfs://box@acct.dfs.core.windows.net/p")
    with pytest.raises(StorageError, match=r"^workdir=az://box/p: .*pip install adlfs"):
        storage.check_location("az://box/p", "workdir")


# --- HDFS: only URI handling and the error without Hadoop (no JVM/libhdfs on these machines) ---------

def test_hdfs_paths_inside_the_filesystem():
    from pipelines.storage.fs import _fs_path
    from pipelines.storage.uri import split

    assert _fs_path(split("hdfs:///p/q")) == "/p/q"
    assert _fs_path(split("hdfs://nn:8020/p")) == "/p"
    assert _fs_path(split("hdfs:///")) == "/"
    assert storage.join("hdfs:///p", "part-0.parquet") == "hdfs:///p/part-0.parquet"


def test_hdfs_check_location_says_what_is_missing():
    with pytest.raises(StorageError) as info:
        storage.check_location("hdfs:///x", "workdir")
    text = str(info.value)
    assert text.startswith("workdir=hdfs:///x: hdfs: pyarrow found no libhdfs/JVM")
    assert "ARROW_LIBHDFS_DIR" in text and "CLASSPATH=$(hadoop classpath --glob)" in text and "\n" not in text
    with pytest.raises(StorageError, match="^hdfs://nn:8020/p: hdfs: pyarrow found no libhdfs/JVM"):
        storage.exists("hdfs://nn:8020/p")


@pytest.mark.parametrize("message, cause", [
    ("When getting information for bucket 'b': AWS Error NETWORK_CONNECTION during HeadBucket operation: "
     "curlCode: 7, Couldn't connect to server", "endpoint unreachable: nothing answers at http://e:1"),
    ("AWS Error NETWORK_CONNECTION during HeadBucket operation: curlCode: 6, Couldn't resolve host name",
     "cannot resolve the host of http://e:1"),
    ("AWS Error NETWORK_CONNECTION during ListObjectsV2: curlCode: 28, Timeout was reached", "no answer from http://e:1"),
    ("When initiating multiple part upload for key 'x' in bucket 'nobkt': AWS Error NO_SUCH_BUCKET during "
     "CreateMultipartUpload operation: The specified bucket does not exist", "the bucket does not exist"),
    ("AWS Error ACCESS_DENIED during HeadBucket operation: No response body.", "access denied"),
    ("AWS Error [code 15]: AccessDenied", "access denied"),
    ("AWS Error INVALID_ACCESS_KEY_ID during PutObject", "the store rejected the credentials"),
    ("something else\nsecond line s3://ak:sk@b/x", "something else"),
])
def test_store_errors_become_readable_causes(message, cause):
    from pipelines.storage.fs import _explain

    assert _explain(OSError(message), StorageOptions(s3_endpoint="http://e:1")).startswith(cause)


@pytest.mark.parametrize("location, names, setting", [
    ("gs://b/x", "the GCS endpoint", "check the network"),
    ("abfs://c@acct.dfs.core.windows.net/x", "the Azure storage account's endpoint", "azure_account"),
    ("hdfs://nn:8020/x", "the HDFS NameNode", "host:port"),
    ("s3://b/x", "http://e:1", "s3_endpoint"),
])
def test_an_unreachable_store_is_named_by_its_own_endpoint_and_setting(location, names, setting):
    from pipelines.storage.fs import _explain

    cause = _explain(OSError("curlCode: 6, Couldn't resolve host name"), StorageOptions(s3_endpoint="http://e:1"),
                     location)
    assert cause.startswith(f"cannot resolve the host of {names}") and setting in cause
    assert location.startswith("s3") or "AWS" not in cause and "s3_endpoint" not in cause
