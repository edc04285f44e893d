"""A real S3-compatible HTTP server for tests and benchmarks: moto's ``moto_server`` started as a child process.

    with s3_server() as server:
        server.make_bucket("data")
        ...  # s3://data/... at server.endpoint, with server.env for the AWS SDK

Only the process started here is ever signalled, by its PID.
"""
from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

START_TIMEOUT_S = 30.0
# moto accepts any credentials; the secret is one no output could hold by chance, so a test can
# grep everything a run wrote for it (tests/spark/test_s3.py)
ACCESS_KEY = "testing"
SECRET_KEY = "dlpipe-s3-secret-9f2c41d7e8b3"
REGION = "us-east-1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # (host, port) of an AF_INET socket
        return port


def _moto_server_command() -> list[str]:
    """The venv's moto_server script (beside this Python), else the one on PATH."""
    script = Path(sys.executable).with_name("moto_server")
    return [str(script)] if script.exists() else ["moto_server"]


class S3Server:
    """One moto_server process on 127.0.0.1:port; start() and stop() may be called repeatedly."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.env = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_EC2_METADATA_DISABLED": "true",  # never wait for an instance-metadata credential lookup
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._log = Path(tempfile.mkstemp(prefix=f"moto-{self.port}-", suffix=".log")[1])

    def _output_tail(self, chars: int = 2000) -> str:
        with contextlib.suppress(OSError):
            return self._log.read_text(errors="replace")[-chars:]
        return ""

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(self.endpoint + "/", timeout=1) as response:
                status: int = response.status  # an http.client.HTTPResponse
                return status < 500
        except urllib.error.HTTPError as exc:  # any HTTP answer means the server is up
            return exc.code < 500
        except OSError:
            return False

    def start(self) -> S3Server:
        """Start moto_server (in its own process group) and wait until it answers (at most 30 s)."""
        if self._proc is not None and self._proc.poll() is None:
            return self
        with open(self._log, "ab") as log:
            self._proc = subprocess.Popen(
                [*_moto_server_command(), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"moto_server on port {self.port} exited with {self._proc.returncode}: "
                                   f"{self._output_tail()}")
            if self._answers():
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto_server on port {self.port} did not answer within {START_TIMEOUT_S:.0f} s: "
                           f"{self._output_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the server by its PID, wait, then SIGKILL it if it is still there."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout)

    @property
    def pid(self) -> int | None:
        """The server process's PID while it runs (None when stopped)."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def pause(self) -> None:
        """Freeze the server (SIGSTOP by its PID): requests hang and time out, as with a network outage."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT): its buckets are as they were."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGCONT)

    def make_bucket(self, name: str) -> None:
        """Create bucket ``name`` (an existing one is fine)."""
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{self.port}", scheme="http", region=REGION,
                               access_key=ACCESS_KEY, secret_key=SECRET_KEY, allow_bucket_creation=True)
        fs.create_dir(name)

    def close(self) -> None:
        """Stop the server and remove its log."""
        self.stop()
        with contextlib.suppress(OSError):
            self._log.unlink()


@contextlib.contextmanager
def s3_server(port: int | None = None) -> Iterator[S3Server]:
    """A started moto S3 server, stopped on exit."""
    server = S3Server(port)
    try:
        yield server.start()
    finally:
        server.close()


@contextlib.contextmanager
def dlpipe_on_s3() -> Iterator[S3Server]:
    """A started server, with the AWS variables and dlpipe's storage options pointing at it; both are
    put back, and the server stopped, on exit."""
    from pipelines import storage

    with s3_server() as server, storage.using_options(storage.StorageOptions(s3_endpoint=server.endpoint)):
        saved_env = {k: os.environ.get(k) for k in server.env}
        os.environ.update(server.env)
        try:
            yield server
        finally:
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
