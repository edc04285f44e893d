"""What dlpipe runs on (``dlpipe env``, ``dlpipe --version``): the versions of the stack and how it
was built, so a bug report says which line it came from. Reads package metadata and asks Horovod and
torch how they were built; starts no Spark."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess

# (distribution, what it is to dlpipe), in the order the pipeline uses them
PACKAGES = (
    ("pyspark", "Spark (the Python side; a cluster runs its own Spark of the same line)"),
    ("pyarrow", "Arrow and Parquet, the storage layer's filesystems"),
    ("numpy", ""),
    ("pandas", "pandas UDFs"),
    ("torch", "models and training"),
    ("horovod", "the default training strategy"),
    ("petastorm", "the training loader"),
    ("mlflow-skinny", "tracking"),
    ("tensorboard", "tracking"),
    ("gymnasium", "dlpipe rl"),
)


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _torch_build() -> str:
    try:
        import torch
    except ImportError:
        return ""
    return f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"


def _horovod_build() -> str:
    try:
        import horovod.torch as hvd
    except ImportError as e:  # built without torch support, or not installed
        return f"not importable ({e})"
    built = [name for name, check in (("gloo", hvd.gloo_built), ("nccl", hvd.nccl_built), ("mpi", hvd.mpi_built))
             if check()]
    return "built with " + ", ".join(built) if built else "built with no controller"


def _java() -> str:
    try:
        done = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20)
    except FileNotFoundError:
        return "not found on PATH (Spark needs Java 8, 11 or 17)"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"java -version: {e}"
    lines = (done.stderr or done.stdout).strip().splitlines()
    return lines[0] if lines else "java (no version printed)"


def stack() -> list[tuple[str, str, str]]:
    """(name, version, note) for dlpipe, Python, Java and every package of the stack."""
    rows = [("dlpipe", _version("dlpipe"), ""), ("python", platform.python_version(), platform.platform()),
            ("java", _java(), "")]
    builds = {"torch": _torch_build(), "horovod": _horovod_build()}
    for name, role in PACKAGES:
        note = "; ".join(x for x in (builds.get(name, ""), role) if x)
        rows.append((name, _version(name), note))
    rows.append(("loader", "petastorm", "train reads Parquet through Petastorm with dlpipe's read-ahead"))
    return rows


def describe_stack() -> str:
    """The stack as aligned lines, one per component."""
    rows = stack()
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {version}" + (f"  ({note})" if note else "") for name, version, note in rows)
