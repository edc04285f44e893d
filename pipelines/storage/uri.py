"""Location strings: plain local paths and store URIs (parsing, joining, validation, redaction).

Pure string work: no filesystem access and no pyarrow import, so configs can be checked anywhere.
A location is either a plain local path ("/data/x", "work", "C:\\x") or a URI with one of SCHEMES.
"""
from __future__ import annotations

import os
import posixpath
import re
from typing import NamedTuple
from urllib.parse import parse_qsl, unquote

#: schemes dlpipe reads and writes; plain paths are local files
SCHEMES = ("file", "s3", "gs", "hdfs", "abfs", "abfss", "az")
OBJECT_STORES = ("s3", "gs", "abfs", "abfss", "az")  # no directories, no atomic rename
# Schemes that people copy from Spark/Hadoop configs: say which one dlpipe wants instead.
_SCHEME_HINTS = {"s3a": "s3", "s3n": "s3", "gcs": "gs", "wasb": "az", "wasbs": "az", "adl": "abfs"}
# Azure's "container@account" authority is not a credential; anywhere else userinfo is.
_AT_IS_CONTAINER = ("abfs", "abfss")

_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]+):")
_URI_IN_TEXT_RE = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]+)://([^\s'\"<>]*)")
_SECRET_KEY_WORDS = ("access_key", "accesskey", "accountkey", "secret", "token", "password", "passwd", "signature",
                     "credential", "sas", "sig", "apikey", "api_key")


class StorageError(RuntimeError):
    """One-line, user-facing storage problem: names the location (redacted), the config key when known,
    and what to do."""


class Parts(NamedTuple):
    """A URI split up: ``scheme://authority/path?query``; ``path`` is "" or starts with "/"."""
    scheme: str
    authority: str
    path: str
    query: str


def fail(location: str, key: str | None, problem: str) -> StorageError:
    """A StorageError reading "KEY=LOCATION: PROBLEM" (location redacted; no key: "LOCATION: PROBLEM")."""
    where = f"{key}={redact(location)}" if key else redact(location)
    return StorageError(f"{where}: {problem}")


def is_uri(text: str) -> bool:
    """True when ``text`` has a URI scheme ("s3://b/k", "file:/x"); plain and "C:\\" style paths are not."""
    match = _SCHEME_RE.match(text)
    return match is not None and (text[match.end():].startswith("//") or match.group(1).lower() == "file")


def scheme(location: str) -> str:
    """"file" for plain paths and file: URIs, else the URI's scheme (lower case)."""
    match = _SCHEME_RE.match(location) if is_uri(location) else None
    return match.group(1).lower() if match else "file"


def is_local(location: str) -> bool:
    """True for plain paths and file: URIs."""
    return scheme(location) == "file"


def split(location: str) -> Parts:
    """Split a remote URI into ``Parts`` (scheme lower-cased; the path keeps its leading "/")."""
    sch = scheme(location)
    rest = location[len(sch) + 1:]
    if rest.startswith("//"):
        rest = rest[2:]
        end = authority_end(rest)
        authority, path = rest[:end], rest[end:]
    else:  # "file:/x"
        authority, path = "", rest
    path, _, query = path.partition("?")
    if "?" in authority:  # "s3://bucket?x=1"
        authority, _, query = authority.partition("?")
    return Parts(sch, authority, path, query)


def authority_end(rest: str) -> int:
    """Where the authority of ``rest`` (a URI after "scheme://") ends. Normally at the first "/";
    but a secret holding "/" (common in AWS secret keys: ``s3://AKIA:ab/cd@bucket/k``) would cut
    the userinfo there and leave the secret in the path, so when the first segment looks like
    ``user:secret`` (not ``host:port``) and an "@" follows, the authority runs to that "@"'s host."""
    head = rest.split("?", 1)[0]
    first = head.split("/", 1)[0]
    user, colon, after = first.partition(":")
    if "/" in head and colon and "@" not in first and not after.isdigit() and "@" in head[len(first):]:
        at = head.index("@", len(first))
        slash = head.find("/", at)
        return slash if slash >= 0 else len(head)
    slash = head.find("/")
    return slash if slash >= 0 else len(head)


def _clean_path(path: str) -> str:
    """Collapse "//", drop "." segments and trailing slashes; keeps "" for a store's root."""
    segments = [s for s in path.split("/") if s not in ("", ".")]
    return "/" + "/".join(segments) if segments else ""


def _unsplit(parts: Parts) -> str:
    text = f"{parts.scheme}://{parts.authority}{parts.path}"
    if parts.scheme == "hdfs" and not parts.authority and not parts.path:
        text = "hdfs:///"  # the default filesystem's root: "hdfs://" alone names nothing
    return text + (f"?{parts.query}" if parts.query else "")


def _local_path(location: str) -> str:
    """The plain path of a local location (file: URIs decoded); not made absolute."""
    if not is_uri(location):
        return location
    parts = split(location)
    if parts.authority not in ("", "localhost"):
        raise fail(location, None, f"file: URIs name this machine only, not host '{parts.authority}'; "
                                   "use file:///absolute/path or a plain path")
    return unquote(parts.path) or "/"


def normalize(location: str, base: str | None = None) -> str:
    """Canonical form of ``location``.

    Local: an absolute plain path (relative paths resolved against ``base`` or the cwd, file: URIs decoded).
    Remote: ``scheme://authority/path`` without trailing slash or duplicate slashes ("hdfs:///p" kept).
    A relative plain path with a remote ``base`` is joined onto it.
    """
    if is_local(location):
        path = os.path.expanduser(_local_path(location))
        if not os.path.isabs(path):
            if base is not None and not is_local(base):
                return normalize(join(base, path))
            path = os.path.join(normalize(base) if base is not None else os.getcwd(), path)
        return os.path.normpath(path)
    parts = split(location)
    return _unsplit(parts._replace(path=_clean_path(parts.path)))


def _relative_parts(parts: tuple[str, ...]) -> list[str]:
    return [seg for part in parts for seg in part.replace("\\", "/").split("/") if seg not in ("", ".")]


def join(base: str, *parts: str) -> str:
    """``base`` followed by ``parts`` (each taken as relative, even with a leading "/")."""
    segments = _relative_parts(parts)
    if is_local(base):
        path = _local_path(base)
        return os.path.join(path, *segments) if segments else path
    p = split(base)
    return _unsplit(p._replace(path=_clean_path(p.path + "/" + "/".join(segments))))


def parent(location: str) -> str:
    """The folder holding ``location`` (a root is its own parent)."""
    if is_local(location):
        path = normalize(location)
        return os.path.dirname(path)
    p = split(normalize(location))
    return _unsplit(p._replace(path=_clean_path(posixpath.dirname(p.path))))


def name(location: str) -> str:
    """Last component of ``location`` (for a bucket or container root: its name)."""
    if is_local(location):
        return os.path.basename(normalize(location))
    p = split(normalize(location))
    if p.path:
        return posixpath.basename(p.path)
    return p.authority.split("@")[0]


def relative(location: str, base: str) -> str:
    """Path of ``location`` below ``base`` with "/" separators ("a/b.parquet"; "" when equal).

    Raises StorageError when ``location`` is not under ``base``.
    """
    loc, root = normalize(location), normalize(base)
    if is_local(loc) != is_local(root):
        raise fail(location, None, f"is not under {redact(base)}")
    if is_local(loc):
        rel = os.path.relpath(loc, root)
        if rel == os.curdir:
            return ""
        if rel == os.pardir or rel.startswith(os.pardir + os.sep):
            raise fail(location, None, f"is not under {redact(base)}")
        return rel.replace(os.sep, "/")
    lp, rp = split(loc), split(root)
    if (lp.scheme, lp.authority) != (rp.scheme, rp.authority):
        raise fail(location, None, f"is not under {redact(base)}")
    lpath, rpath = _clean_path(lp.path), _clean_path(rp.path)  # "hdfs:///" has the path "/"
    if lpath == rpath:
        return ""
    if not lpath.startswith(rpath + "/"):
        raise fail(location, None, f"is not under {redact(base)}")
    return lpath[len(rpath) + 1:]


def _secret_query_keys(query: str) -> list[str]:
    keys = [k for k, _ in parse_qsl(query, keep_blank_values=True)]
    return [k for k in keys if any(word in k.lower().replace("-", "_") for word in _SECRET_KEY_WORDS)]


def _has_userinfo_secret(sch: str, authority: str) -> bool:
    if "@" not in authority:
        return False
    userinfo = authority.rsplit("@", 1)[0]
    return ":" in userinfo or sch not in _AT_IS_CONTAINER


def bucket_of(parts: Parts) -> str:
    """The bucket (s3, gs) or container (abfs, az) a remote URI names."""
    if parts.scheme in _AT_IS_CONTAINER:
        return parts.authority.split("@", 1)[0]
    return parts.authority


_CREDENTIAL_CHAINS = {
    "s3": "the AWS credential chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, an instance or pod role)",
    "gs": "Google application default credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud auth "
          "application-default login)",
    "hdfs": "the Hadoop configuration and Kerberos (kinit)",
    "abfs": "the Azure credential chain (AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_CONNECTION_STRING, "
            "AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, a managed identity or az login)",
}


def check_uri(location: str, key: str) -> None:
    """Refuse locations dlpipe cannot or must not use; raise StorageError naming ``key``.

    Refused: unknown schemes; credentials inside the URI (userinfo or secret query parameters);
    other query parameters; s3/gs bucket names shorter than 3 characters; abfs without container@account;
    az without a container.
    """
    if not is_uri(location):
        match = _SCHEME_RE.match(location)
        if match and match.group(1).lower() in (*SCHEMES, *_SCHEME_HINTS):  # "s3:/bucket": a typo, not a path
            raise fail(location, key, f"malformed URI: write {match.group(1).lower()}://...")
        return
    sch = scheme(location)
    if sch not in SCHEMES:
        hint = f" (use {_SCHEME_HINTS[sch]}:// instead of {sch}://)" if sch in _SCHEME_HINTS else ""
        raise fail(location, key, f"unknown scheme '{sch}'{hint}: supported are "
                                  f"{', '.join(s + '://' for s in SCHEMES)} and plain local paths")
    if sch == "file":
        host = split(location).authority
        if host not in ("", "localhost"):
            raise fail(location, key, f"file: URIs name this machine only, not host '{host}'; "
                                      "use file:///absolute/path or a plain path")
        return
    parts = split(location)
    chain = _CREDENTIAL_CHAINS["abfs" if sch in OBJECT_STORES[2:] else sch]
    if _has_userinfo_secret(sch, parts.authority) or _secret_query_keys(parts.query):
        raise fail(location, key, f"credentials must not be written into the location; remove them "
                                  f"and use {chain}")
    if parts.query:
        raise fail(location, key, "query parameters are not supported; remove '?...' and set endpoint/region "
                                  "in the storage options or the standard environment variables")
    bucket = bucket_of(parts)
    if sch in ("s3", "gs") and len(bucket) < 3:
        what = f"bucket name '{bucket}' is too short" if bucket else "no bucket"
        raise fail(location, key, f"{what}: write {sch}://BUCKET/prefix with a bucket name of 3 to 63 characters")
    if sch in _AT_IS_CONTAINER:
        container, at, account = parts.authority.partition("@")
        if not (container and at and account):
            raise fail(location, key, f"write {sch}://CONTAINER@ACCOUNT.dfs.core.windows.net/path "
                                      "(or az://CONTAINER/path with the storage option azure_account)")
    if sch == "az" and not bucket:
        raise fail(location, key, "no container: write az://CONTAINER/path")


def uri_problem(location: str) -> str | None:
    """What :func:`check_uri` would refuse in ``location`` (for config rules), or None."""
    try:
        check_uri(location, "")
    except StorageError as e:
        return "is refused: " + str(e).split(": ", 1)[-1]
    return None


def _redact_uri(match: re.Match[str]) -> str:
    sch, rest = match.group(1), match.group(2)
    end = authority_end(rest)
    authority, slash, tail = rest[:end], rest[end:end + 1], rest[end + 1:]
    if "?" in authority and not slash:
        authority, _, q = authority.partition("?")
        tail, slash = "?" + q, ""
    if _has_userinfo_secret(sch.lower(), authority):
        authority = "***@" + authority.rsplit("@", 1)[1]
    path, qmark, query = tail.partition("?")
    if qmark:
        secret = set(_secret_query_keys(query))
        query = "&".join(
            f"{k}=***" if k in secret else item
            for item in query.split("&") for k in [unquote(item.partition("=")[0])])
    return f"{sch}://{authority}{slash}{path}{qmark}{query}"


def holds_credentials(url: str) -> bool:
    """Whether a URL of any scheme (``https://alice:pw@host``, ``https://TOKEN@host``,
    ``s3://AKIA:ab/cd@b``) carries credentials in its userinfo or a secret query parameter."""
    found = _URI_IN_TEXT_RE.match(url.strip())
    if not found:
        return False
    rest = found.group(2)
    authority = rest[:authority_end(rest)]
    # as redact() sees it: any userinfo but an Azure container (a bare token is a credential too)
    return _has_userinfo_secret(found.group(1).lower(), authority) or bool(_secret_query_keys(rest.partition("?")[2]))


# A query parameter outside a whole URI, as libraries quote a request ("url: /?access_token=..."),
# and secret-looking key=value pairs of a connection string ("AccountKey=...;").
_LOOSE_PARAM_RE = re.compile(r"(?<=[?&;])([A-Za-z0-9_.\-]+)=([^&;\s'\"<>]+)")


def _redact_loose_param(match: re.Match[str]) -> str:
    key = match.group(1)
    return f"{key}=***" if _secret_query_keys(f"{key}=") else match.group(0)


def redact(text: str) -> str:
    """``text`` with credentials inside any URI it holds (userinfo, secret query values), and secret
    query parameters quoted outside a URI, replaced by "***"."""
    return _LOOSE_PARAM_RE.sub(_redact_loose_param, _URI_IN_TEXT_RE.sub(_redact_uri, text))
