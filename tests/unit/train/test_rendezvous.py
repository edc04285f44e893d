"""The one use of Horovod's runner internals, checked so that a Horovod change fails here, loudly."""
from __future__ import annotations

import inspect
import json
import urllib.request

from pipelines.launcher.plan import assign_ranks
from pipelines.train.rendezvous import HorovodRendezvous, horovod_http_server


def test_horovods_rendezvous_server_still_takes_what_dlpipe_hands_it():
    from horovod.runner.http.http_server import RendezvousHandler, RendezvousHTTPServer

    assert list(inspect.signature(RendezvousHTTPServer.__init__).parameters) == ["self", "addr", "handler", "verbose"]
    assert callable(RendezvousHTTPServer.init) and issubclass(RendezvousHandler, object)
    slots = list(assign_ranks({0: "h1", 1: "h1", 2: "h2"}).values())
    server = horovod_http_server("127.0.0.1", slots)
    try:
        assert server.scope_size == {"global": 3, "local_h1": 2, "local_h2": 1, "cross_0": 2, "cross_1": 1}
    finally:
        server.server_close()


def test_the_horovod_rendezvous_serves_keys_until_every_rank_joined():
    rendezvous = HorovodRendezvous()
    port = rendezvous.start("127.0.0.1", list(assign_ranks({0: "127.0.0.1"}).values()))
    url = f"http://127.0.0.1:{port}/global/key"
    request = urllib.request.Request(url, data=json.dumps("v").encode(), method="PUT")
    assert urllib.request.urlopen(request, timeout=5).status == 200
    assert urllib.request.urlopen(url, timeout=5).read() == json.dumps("v").encode()
    rendezvous.all_joined()  # Gloo no longer needs it: it stops listening
    try:
        urllib.request.urlopen(url, timeout=2)
        raise AssertionError("the rendezvous still answers after every rank joined")
    except OSError:
        pass
