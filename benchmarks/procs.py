"""Contenders in their own processes: ``python -m benchmarks.workers JSON``, one or several at once.

A contender that is not dlpipe (plain PyTorch, DDP, a single scoring process) runs in a fresh
interpreter with a fixed number of compute threads, so it gets the cores it would get on its own
and none of this driver's state (JVM, loaded models). Its last stdout line is its JSON result.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from benchmarks.harness import REPO_ROOT, BenchError

WORKERS = "benchmarks.workers"  # the contender entry module


def python_env(threads: int) -> dict[str, str]:
    """Environment of a contender process: this interpreter's imports, ``threads`` compute threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *[p for p in sys.path if p]])
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _command(job: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", WORKERS, json.dumps(job)]


def _result(code: int, output: str) -> dict[str, Any]:
    lines = output.strip().splitlines()
    if code != 0 or not lines:
        tail = "\n".join(lines[-20:])
        raise BenchError(f"{WORKERS} exited with code {code}; last lines:\n{tail}")
    result: dict[str, Any] = json.loads(lines[-1])  # the worker's last line: its JSON object
    return result


def run_worker(job: dict[str, Any], *, threads: int, timeout_s: float,
               env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run one contender process for ``job`` (its ``"job"`` key names the function) and return its JSON."""
    proc = subprocess.run(_command(job), capture_output=True, text=True, timeout=timeout_s,
                          env=env or python_env(threads), cwd=str(REPO_ROOT))
    if proc.returncode != 0:
        return _result(proc.returncode, proc.stdout + proc.stderr)
    return _result(0, proc.stdout)


def run_workers(jobs: list[dict[str, Any]], env: dict[str, str] | list[dict[str, str]],
                timeout_s: float = 900) -> list[dict[str, Any]]:
    """Run one contender process per job at the same time (DDP ranks, independent processes); their JSON.

    ``env``: one environment for all, or one per job (Horovod ranks learn their rank from it).
    """
    envs = env if isinstance(env, list) else [env] * len(jobs)
    procs = [subprocess.Popen(_command(job), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=e,
                              cwd=str(REPO_ROOT)) for job, e in zip(jobs, envs)]
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=timeout_s)
            outputs.append((p.returncode, out))
    finally:
        # One process failing or timing out must not leave its peers waiting in a collective.
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [_result(code, out) for code, out in outputs]


def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now (DDP's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]  # (host, port) of an AF_INET socket
        return port
