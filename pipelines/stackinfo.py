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
    ("petastorm", "the training loader of train.loader=petastorm"),
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
    rows.append(("loader", *_loader()))
    rows.append(("line", _spark_line(), "README \"Spark lines\""))
    return rows


def _spark_line() -> str:
    """Which of dlpipe's Spark lines the installed pyspark belongs to (README "Spark lines")."""
    version = _version("pyspark")
    if version.startswith("3.5."):
        return "classic (Spark 3.5)"
    if version.startswith("4.0."):
        return "spark4 (Spark 4.0)"
    if version.startswith(("4.1.", "4.2.", "4.3.")):
        return f"current (Spark {version})"
    return f"none: pyspark {version} is outside dlpipe's lines (3.5, 4.0, 4.1-4.3)"


def _loader() -> tuple[str, str]:
    """The default config's ``train.loader``, and whether Petastorm (which train.loader=petastorm needs) imports."""
    from pipelines.choices import resolve_loader
    from pipelines.config import TrainConfig

    try:
        import petastorm  # noqa: F401 - imported only to see that it imports
        petastorm_state = "petastorm imports"
    except Exception as e:  # noqa: BLE001 - whatever breaks the import is what the report should say
        petastorm_state = f"petastorm does not import ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
    default = TrainConfig().loader
    return resolve_loader(default), (f"what train.loader={default} reads with here; {petastorm_state}; "
                                     "train.loader=arrow reads Parquet with pyarrow alone")


def describe_stack() -> str:
    """The stack as aligned lines, one per component."""
    rows = stack()
    width = max(len(name) for name, _, _ in rows)
    return "\n".join(f"{name:<{width}}  {version}" + (f"  ({note})" if note else "") for name, version, note in rows)
