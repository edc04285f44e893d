"""What ranks meet through: the driver-side rendezvous a caller of ``run_ranks`` chooses.

The launcher belongs to no training library: it plans the ranks, starts the rendezvous it is
given, hands every rank its address (and the environment variables its library reads), and
closes it. Training strategies bring their own (``pipelines.train.rendezvous``: Horovod's Gloo
rendezvous server, a torch.distributed store); :class:`NoRendezvous` serves entries that talk to
no peer.

Every rendezvous binds to the driver's address (``spark.driver.host``), never all interfaces.
"""
from __future__ import annotations

from typing import Protocol

from pipelines.launcher.plan import RankSlot


class Rendezvous(Protocol):
    """Driver side of how the ranks find each other; one object per launch."""

    name: str  # for messages: "horovod", "torch.distributed"

    def start(self, host: str, slots: list[RankSlot]) -> int:
        """Start serving on ``host`` for ranks ``slots``; the port it listens on."""

    def rank_env(self, slot: RankSlot, host: str, port: int, iface: str) -> dict[str, str]:
        """Environment variables the rank's library reads to join (``iface``: the network interface)."""

    def all_joined(self) -> None:
        """Every rank has joined: a rendezvous nobody needs any more may stop listening now."""

    def close(self) -> None:
        """Stop serving (idempotent)."""


class NoRendezvous:
    """For entries whose ranks do not talk to each other."""

    name = "none"

    def start(self, host: str, slots: list[RankSlot]) -> int:
        return 0

    def rank_env(self, slot: RankSlot, host: str, port: int, iface: str) -> dict[str, str]:
        return {}

    def all_joined(self) -> None:
        pass

    def close(self) -> None:
        pass
