"""Which rank each barrier task runs: ranks grouped by host, in partition order (pure, no Spark).

A rank's place in the job is its global rank, its rank among the ranks on its host (local) and
its host's index among the hosts that have a rank with the same local rank (cross), each with
its size: what Horovod's Gloo contexts and torch.distributed need, and what ``horovodrun`` would
hand out for the same hosts.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pipelines.formats import Record


@dataclass(frozen=True)
class RankSlot(Record):
    """One rank's place in the job."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    cross_rank: int
    cross_size: int
    hostname: str


def assign_ranks(hosts: dict[int, str]) -> dict[int, RankSlot]:
    """Barrier partition -> its rank's slot, for ``hosts`` (partition -> the host its task runs on).

    Hosts are ordered by their first partition; ranks are numbered host by host, and within a host
    in partition order, so the ranks of one host are consecutive (as ``horovodrun -H`` numbers them).
    """
    by_host: dict[str, list[int]] = {}
    for partition in sorted(hosts):
        by_host.setdefault(hosts[partition], []).append(partition)
    size = len(hosts)
    host_names = list(by_host)
    slots: dict[int, RankSlot] = {}
    rank = 0
    for host, partitions in by_host.items():
        for local_rank, partition in enumerate(partitions):
            peers = [h for h in host_names if len(by_host[h]) > local_rank]  # hosts with this local rank
            slots[partition] = RankSlot(rank=rank, size=size, local_rank=local_rank, local_size=len(partitions),
                                        cross_rank=peers.index(host), cross_size=len(peers), hostname=host)
            rank += 1
    return slots


_LOCAL_MASTER = re.compile(r"local(?:\[(\d+|\*)(?:,\d+)?\])?")


def local_slots(master: str, task_cpus: int = 1) -> int | None:
    """Task slots of a ``local``/``local[N]``/``local[*]`` master (tasks that can run at once with
    ``task_cpus`` each); None for any other master (only the cluster knows)."""
    found = _LOCAL_MASTER.fullmatch(master.strip())
    if not found:
        return None
    cores = found.group(1) or "1"
    count = (os.cpu_count() or 1) if cores == "*" else int(cores)
    return count // max(1, task_cpus)
