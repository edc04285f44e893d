"""Horovod over Gloo inside one barrier-mode Spark stage: no horovodrun, no mpirun, no SSH.

Split by role: ``driver`` (rendezvous, coordination, progress), ``task`` (runs inside each
barrier task and starts one rank process), ``rank`` (the rank process's entry point), and
``protocol`` (the JSON-lines messages between them).
"""
from pipelines.launcher.driver import LaunchError, run_horovod
from pipelines.launcher.rank import RankContext

__all__ = ["LaunchError", "RankContext", "run_horovod"]
