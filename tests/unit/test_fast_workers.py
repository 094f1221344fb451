"""Receiver workers sharing one listening socket: a busy worker lets an idle one accept."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pynetdicom import AE

from receiver import tuning


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    with sock:
        yield sock


def _server(listener: socket.socket, busy: int) -> Any:
    accepted: list[Any] = []

    class Server(tuning.SharedListenerAssociationServer):
        busy = 0  # set once the AE has bound its handlers to the (then no) associations

        @property
        def active_associations(self) -> list[Any]:
            return [object()] * self.busy

        def process_request(self, request: Any, client_address: Any) -> None:
            accepted.append(request)
            request.close()

    Server.listener = listener
    ae = AE(ae_title="TEST")
    ae.add_supported_context("1.2.840.10008.1.1")
    server = ae.make_server(("127.0.0.1", listener.getsockname()[1]), server_class=Server)
    server.accepted = accepted
    Server.busy = busy
    return server


def test_idle_worker_accepts_at_once(listener: socket.socket) -> None:
    server = _server(listener, busy=0)
    with socket.create_connection(listener.getsockname()):
        started = time.monotonic()
        server._handle_request_noblock()
        assert time.monotonic() - started < tuning.ACCEPT_DEFER_PER_ASSOCIATION_S
    assert len(server.accepted) == 1


def test_busy_worker_leaves_the_connection_to_another(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket,
) -> None:
    monkeypatch.setattr(tuning, "ACCEPT_DEFER_PER_ASSOCIATION_S", 0.2)
    server = _server(listener, busy=2)
    taken: list[socket.socket] = []

    def other_worker() -> None:  # an idle worker in another process takes it meanwhile
        time.sleep(0.05)
        taken.append(listener.accept()[0])

    with socket.create_connection(listener.getsockname()):
        thread = threading.Thread(target=other_worker)
        thread.start()
        server._handle_request_noblock()
        thread.join()
    assert server.accepted == [] and len(taken) == 1
    taken[0].close()


def test_busy_worker_accepts_when_nobody_else_does(
    monkeypatch: pytest.MonkeyPatch, listener: socket.socket,
) -> None:
    monkeypatch.setattr(tuning, "ACCEPT_DEFER_PER_ASSOCIATION_S", 0.02)
    server = _server(listener, busy=3)
    with socket.create_connection(listener.getsockname()):
        started = time.monotonic()
        server._handle_request_noblock()
        assert time.monotonic() - started >= 0.06
    assert len(server.accepted) == 1
