"""N cooperating rank processes inside one barrier-mode Spark stage: no horovodrun, torchrun, mpirun or SSH.

The ranks join Horovod (over Gloo) or torch.distributed through a rendezvous the driver runs.

Split by role: ``driver`` (rendezvous, coordination, progress), ``task`` (runs inside each
barrier task and starts one rank process), ``rank`` (the rank process's entry point), and
``protocol`` (the JSON-lines messages between them).
"""
from pipelines.launcher.driver import LaunchError, run_ranks
from pipelines.launcher.rank import RankContext

__all__ = ["LaunchError", "RankContext", "run_ranks"]
