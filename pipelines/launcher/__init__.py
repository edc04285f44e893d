"""N cooperating rank processes inside one barrier-mode Spark stage: no horovodrun, torchrun, mpirun or SSH.

The launcher belongs to no training library: its caller chooses what the ranks meet through
(``rendezvous``: training strategies bring Horovod's or a torch.distributed store).

Split by role: ``driver`` (coordination, progress; imports pyspark), ``task`` (runs inside each
barrier task and starts one rank process), ``rank`` (the rank process's entry point, which
imports no pyspark), ``plan`` (which rank each task runs), ``rendezvous`` (the interface a
rendezvous offers) and ``protocol`` (the typed messages between them).
"""
from typing import TYPE_CHECKING, Any

from pipelines.launcher.rank import RankContext

if TYPE_CHECKING:  # so callers' calls are checked against the driver's signatures
    from pipelines.launcher.driver import LaunchError, LaunchOptions, run_ranks

__all__ = ["LaunchError", "LaunchOptions", "RankContext", "run_ranks"]


def __getattr__(name: str) -> Any:
    # The driver side imports pyspark: loaded on first use, so a rank process never loads it.
    if name in ("LaunchError", "LaunchOptions", "run_ranks"):
        from pipelines.launcher import driver

        return getattr(driver, name)
    raise AttributeError(f"module 'pipelines.launcher' has no attribute {name!r}")
