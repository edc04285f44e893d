"""Location strings: parsing, normalizing, joining, validation and redaction (no I/O)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pipelines.storage import uri
from pipelines.storage.uri import StorageError

ABFS = "abfs://box@acct.dfs.core.windows.net"


@pytest.mark.parametrize("text, expected", [
    ("s3://bucket/key", True), ("gs://bucket", True), ("hdfs:///p", True), ("hdfs://nn:8020/p", True),
    (f"{ABFS}/p", True), ("az://box/p", True), ("file:///x", True), ("file:/x", True), ("ftp://h/x", True),
    ("/abs/path", False), ("rel/path", False), ("C:\\data\\x", False), ("C:/data", False), ("", False),
])
def test_is_uri(text, expected):
    assert uri.is_uri(text) is expected


@pytest.mark.parametrize("text, expected", [
    ("/x", "file"), ("x/y", "file"), ("file:///x", "file"), ("S3://b/k", "s3"), ("gs://bkt", "gs"),
    ("hdfs:///p", "hdfs"), (f"{ABFS}/p", "abfs"), ("az://box/p", "az"),
])
def test_scheme_and_is_local(text, expected):
    assert uri.scheme(text) == expected
    assert uri.is_local(text) is (expected == "file")


@pytest.mark.parametrize("text, expected", [
    ("/a/b/", "/a/b"),
    ("/a//b/./c", "/a/b/c"),
    ("file:///x/y/", "/x/y"),
    ("file:/x", "/x"),
    ("file://localhost/x%20y", "/x y"),
    ("s3://bkt/p//q/", "s3://bkt/p/q"),
    ("S3://bkt/", "s3://bkt"),
    ("gs://bkt/a/", "gs://bkt/a"),
    ("hdfs:///p/", "hdfs:///p"),
    ("hdfs:///", "hdfs:///"),
    ("hdfs://nn:8020/p/q/", "hdfs://nn:8020/p/q"),
    (f"{ABFS}/p/", f"{ABFS}/p"),
    ("az://box/p/", "az://box/p"),
])
def test_normalize(text, expected):
    assert uri.normalize(text) == expected


def test_normalize_relative_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert uri.normalize("work/x") == os.path.join(str(tmp_path), "work", "x")
    assert uri.normalize("x", base="/base/dir") == "/base/dir/x"
    assert uri.normalize("../x", base="/base/dir") == "/base/x"
    assert uri.normalize("x/y", base="s3://bkt/p/") == "s3://bkt/p/x/y"
    assert uri.normalize("/abs", base="/base") == "/abs"


@pytest.mark.parametrize("base, parts, expected", [
    ("/w", ("a", "b.json"), "/w/a/b.json"),
    ("rel", ("a",), "rel/a"),
    ("/w", ("/a/", "b"), "/w/a/b"),  # parts are always relative
    ("file:///w", ("a",), "/w/a"),
    ("s3://bkt", ("a", "b"), "s3://bkt/a/b"),
    ("s3://bkt/p/", ("a/b",), "s3://bkt/p/a/b"),
    ("gs://bkt/p", ("x",), "gs://bkt/p/x"),
    ("hdfs:///", ("p",), "hdfs:///p"),
    ("hdfs:///p", ("q",), "hdfs:///p/q"),
    ("hdfs://nn:8020/p", ("q",), "hdfs://nn:8020/p/q"),
    (ABFS, ("p", "q"), f"{ABFS}/p/q"),
    ("az://box", ("p",), "az://box/p"),
    ("s3://bkt/p", (), "s3://bkt/p"),
])
def test_join(base, parts, expected):
    assert uri.join(base, *parts) == expected


@pytest.mark.parametrize("location, parent, name", [
    ("/w/a/b.json", "/w/a", "b.json"),
    ("file:///w/a/", "/w", "a"),
    ("s3://bkt/p/x.parquet", "s3://bkt/p", "x.parquet"),
    ("s3://bkt/p", "s3://bkt", "p"),
    ("s3://bkt", "s3://bkt", "bkt"),
    ("gs://bkt/a/b/", "gs://bkt/a", "b"),
    ("hdfs:///p", "hdfs:///", "p"),
    ("hdfs://nn:8020/p/q", "hdfs://nn:8020/p", "q"),
    (f"{ABFS}/p/q", f"{ABFS}/p", "q"),
    (ABFS, ABFS, "box"),
    ("az://box/p", "az://box", "p"),
])
def test_parent_and_name(location, parent, name):
    assert uri.parent(location) == parent
    assert uri.name(location) == name


@pytest.mark.parametrize("location, base, expected", [
    ("/w/a/b.parquet", "/w", "a/b.parquet"),
    ("/w", "/w/", ""),
    ("file:///w/a", "/w", "a"),
    ("s3://bkt/p/a/b.parquet", "s3://bkt/p/", "a/b.parquet"),
    ("s3://bkt/a", "s3://bkt", "a"),
    ("hdfs:///p/x", "hdfs:///p", "x"),
    ("hdfs:///p/x", "hdfs:///", "p/x"),
    ("hdfs://nn:8020/p/x", "hdfs://nn:8020/p", "x"),
    (f"{ABFS}/p/x", f"{ABFS}/p", "x"),
    ("az://box/p/x/y", "az://box", "p/x/y"),
])
def test_relative(location, base, expected):
    assert uri.relative(location, base) == expected


@pytest.mark.parametrize("location, base", [
    ("/w2/a", "/w"), ("/a", "/w"), ("s3://bkt/pq/a", "s3://bkt/p"), ("s3://other/p/a", "s3://bkt/p"),
    ("/w/a", "s3://bkt/w"), ("hdfs://nn:8020/p/x", "hdfs:///p"),
])
def test_relative_refuses_outside_locations(location, base):
    with pytest.raises(StorageError, match="is not under"):
        uri.relative(location, base)


@pytest.mark.parametrize("location", [
    "/plain/path", "rel/path", "file:///x", "s3://bkt/p", "gs://bkt", "hdfs:///p", "hdfs://nn:8020/p",
    f"{ABFS}/p", "az://box/p", "abfss://box@acct.dfs.core.windows.net/p",
])
def test_check_uri_accepts(location):
    assert uri.check_uri(location, "workdir") is None


@pytest.mark.parametrize("location, message", [
    ("ftp://host/x", "unknown scheme 'ftp'.*supported are file://, s3://, gs://, hdfs://, abfs://"),
    ("s3a://bkt/x", r"use s3:// instead of s3a://"),
    ("s3:/bkt/x", "malformed URI"),
    ("s3://ab/x", "bucket name 'ab' is too short"),
    ("gs://x/y", "bucket name 'x' is too short"),
    ("s3:///x", "no bucket"),
    ("abfs://box/p", "CONTAINER@ACCOUNT"),
    ("abfs://@acct.dfs.core.windows.net/p", "CONTAINER@ACCOUNT"),
    ("az:///p", "no container"),
    ("s3://bkt/x?region=eu-west-1", "query parameters are not supported"),
    ("file://otherhost/x", "this machine only"),
])
def test_check_uri_refuses(location, message):
    with pytest.raises(StorageError, match=message) as info:
        uri.check_uri(location, "data.source")
    text = str(info.value)
    assert text.startswith("data.source=") and "\n" not in text


@pytest.mark.parametrize("location, secret, chain", [
    ("s3://AKIAXXX:s3cr3t@bkt/p", "s3cr3t", "AWS credential chain"),
    ("s3://AKIAXXX@bkt/p", "AKIAXXX", "AWS credential chain"),
    ("gs://user:pw@bkt/p", "pw", "application default credentials"),
    ("hdfs://alice:pw@nn:8020/p", "pw", "Kerberos"),
    ("abfs://box:key123@acct.dfs.core.windows.net/p", "key123", "Azure credential chain"),
    ("s3://bkt/p?access_key=AKIA&secret_key=s3cr3t", "s3cr3t", "AWS credential chain"),
    ("gs://bkt/p?token=tok123", "tok123", "application default credentials"),
    ("az://box/p?sv=2020&sig=sig123", "sig123", "Azure credential chain"),
    ("az://box/p?sas=sas123", "sas123", "Azure credential chain"),
    ("s3://bkt/p?password=pw123", "pw123", "AWS credential chain"),
    ("s3://bkt/p?X-Amz-Security-Token=tok999", "tok999", "AWS credential chain"),
])
def test_check_uri_refuses_credentials_without_echoing_them(location, secret, chain):
    with pytest.raises(StorageError) as info:
        uri.check_uri(location, "workdir")
    text = str(info.value)
    assert text.startswith("workdir=") and "credentials must not be written into the location" in text
    assert chain in text
    assert secret not in text and "***" in text


def test_redact():
    text = ("failed on s3://AKIA:SECRET@bkt/x?sig=abc&part=2 then https://h/x?token=zz&sv=1 "
            f"and {ABFS}/p and gs://user@bkt/y")
    assert uri.redact(text) == (
        "failed on s3://***@bkt/x?sig=***&part=2 then https://h/x?token=***&sv=1 "
        f"and {ABFS}/p and gs://***@bkt/y")
    assert uri.redact("no uri here: /plain/path") == "no uri here: /plain/path"
    assert uri.redact("abfs://box:k3y@acct.dfs.core.windows.net/p") == "abfs://***@acct.dfs.core.windows.net/p"


def test_uri_module_does_not_import_pyarrow():
    code = ("import sys; import pipelines.storage.uri, pipelines.storage; "
            "from pipelines.storage import normalize, StorageError; print('pyarrow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
    assert out.stdout.strip() == "False"
