"""The rendezvous each training strategy brings to the launcher (driver side; see
``pipelines.launcher.rendezvous``): Horovod's Gloo rendezvous, or a torch.distributed store.

Both bind to the driver's address only, and neither can authenticate a client: Horovod's Gloo
client and torch's store client send no credentials. What is exposed and for how long:

- Horovod (``train.strategy=horovod``): an HTTP key-value store on ``spark.driver.host``, from the
  moment every barrier task has registered until every rank has joined (Gloo needs it only while
  its contexts connect: ``horovod/common/gloo/gloo_context.cc``); seconds, then it is shut down.
- torch.distributed (ddp, fsdp, pipeline): a ``TCPStore`` on ``spark.driver.host`` for the whole
  training stage (torch uses it for the process group's lifetime).

Anyone who can reach that address and port in that window can read and write rendezvous keys:
keep the driver on a network only the cluster reaches (security groups, a Kubernetes network
policy), and set ``spark.authenticate`` for Spark's own RPC.
"""
from __future__ import annotations

import datetime
import socket
import threading
from typing import Any

from pipelines.launcher.plan import RankSlot


def horovod_http_server(host: str, slots: list[RankSlot]) -> Any:
    """Horovod's rendezvous HTTP server for ``slots``, listening on ``host`` at a free port.

    The one use of Horovod's runner internals: ``RendezvousServer.start`` binds every interface,
    so dlpipe builds the same server on the driver's address itself. ``init`` reads each slot's
    ``size``, ``hostname``, ``local_size``, ``local_rank`` and ``cross_size`` (RankSlot has them);
    ``tests/unit/train/test_rendezvous.py`` fails loudly when Horovod changes any of it.
    """
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

    server = RendezvousHTTPServer((host, 0), RendezvousHandler, 0)
    server.init(slots)
    return server


class HorovodRendezvous:
    """Horovod's Gloo rendezvous (an HTTP key-value store), served by the driver until every rank joined."""

    name = "horovod"

    def __init__(self, timeout_s: float = 120.0) -> None:
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self, host: str, slots: list[RankSlot]) -> int:
        self._server = horovod_http_server(host, slots)
        self._thread = threading.Thread(target=self._server.serve_forever, name="dlpipe-horovod-rendezvous",
                                        daemon=True)
        self._thread.start()
        port: int = self._server.server_address[1]  # (host, port): an http.server.HTTPServer's address
        return port

    def rank_env(self, slot: RankSlot, host: str, port: int, iface: str) -> dict[str, str]:
        """The variables ``hvd.init()`` reads, as ``horovod/runner/gloo_run.py`` sets them."""
        return {
            "HOROVOD_GLOO_RENDEZVOUS_ADDR": host,
            "HOROVOD_GLOO_RENDEZVOUS_PORT": str(port),
            "HOROVOD_CONTROLLER": "gloo",
            "HOROVOD_CPU_OPERATIONS": "gloo",
            "HOROVOD_GLOO_IFACE": iface,
            "HOROVOD_HOSTNAME": slot.hostname,
            "HOROVOD_RANK": str(slot.rank),
            "HOROVOD_SIZE": str(slot.size),
            "HOROVOD_LOCAL_RANK": str(slot.local_rank),
            "HOROVOD_LOCAL_SIZE": str(slot.local_size),
            "HOROVOD_CROSS_RANK": str(slot.cross_rank),
            "HOROVOD_CROSS_SIZE": str(slot.cross_size),
        }

    def all_joined(self) -> None:
        self.close()  # Gloo's contexts are connected: nobody needs the store any more

    def close(self) -> None:
        with self._lock:
            server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()


class TorchStoreRendezvous:
    """A torch.distributed ``TCPStore`` on the driver, for the process group's whole lifetime."""

    name = "torch.distributed"

    def __init__(self, timeout_s: float = 120.0) -> None:
        self.timeout_s = timeout_s
        self._store: Any = None

    def start(self, host: str, slots: list[RankSlot]) -> int:
        from torch.distributed import TCPStore

        # TCPStore listens on every interface unless handed a socket: bind one to the driver's
        # address and give it away (the store closes it when it stops).
        listening = socket.create_server((host, 0), backlog=max(128, 2 * len(slots)))
        port: int = listening.getsockname()[1]  # (host, port) of an AF_INET socket
        self._store = TCPStore(host, port, None, True, wait_for_workers=False,
                               timeout=datetime.timedelta(seconds=self.timeout_s), master_listen_fd=listening.detach())
        return port

    def rank_env(self, slot: RankSlot, host: str, port: int, iface: str) -> dict[str, str]:
        return {"GLOO_SOCKET_IFNAME": iface}  # torch's Gloo backend reads it

    def all_joined(self) -> None:
        pass  # torch uses the store while the group lives

    def close(self) -> None:
        self._store = None  # a TCPStore stops serving (and closes its socket) when its last reference goes
