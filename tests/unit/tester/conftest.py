"""Fixtures for the tester charm's unit tests: the ops.testing context and loopback peers."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from charm import ServiceMeshTesterCharm
from ops import testing


@pytest.fixture
def ctx() -> testing.Context[ServiceMeshTesterCharm]:
    return testing.Context(ServiceMeshTesterCharm)


class _StatusFromPathHandler(BaseHTTPRequestHandler):
    """Answer ``/status/<code>`` with that code and anything else with 200."""

    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        parts = self.path.strip("/").split("/")
        code = int(parts[1]) if len(parts) == 2 and parts[0] == "status" else 200
        body = f"{self.command} {self.path}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_POST = do_HEAD = do_DELETE = _answer  # noqa: N815

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.fixture
def http_server() -> Iterator[str]:
    """Base URL of an HTTP server on loopback that answers /status/<code> with <code>."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusFromPathHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that accepts connections (kernel backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.fixture
def resetting_port() -> Iterator[int]:
    """A loopback port whose server accepts each connection and closes it without answering."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                conn.recv(65536)
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        # Wake the accept() with one last connection, then close.
        with contextlib.suppress(OSError), socket.create_connection(listener.getsockname(), 1):
            pass
        thread.join(timeout=5)
        listener.close()


def _serve_each_connection(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """Run a loopback server that hands every accepted connection to `handle`; yield its port."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):
                conn, _ = listener.accept()
                handle(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stop.set()
        with contextlib.suppress(OSError), socket.create_connection(listener.getsockname(), 1):
            pass
        thread.join(timeout=5)
        listener.close()


@pytest.fixture
def closing_port() -> Iterator[int]:
    """A loopback port whose server closes each connection at once, reading nothing (a FIN)."""

    def close(conn: socket.socket) -> None:
        conn.close()

    yield from _serve_each_connection(close)


@pytest.fixture
def aborting_port() -> Iterator[int]:
    """A loopback port whose server aborts each connection at once (an RST, linger 0)."""

    def abort(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    yield from _serve_each_connection(abort)


@pytest.fixture
def greeting_port() -> Iterator[int]:
    """A loopback port whose server speaks first (a banner), then closes."""

    def greet(conn: socket.socket) -> None:
        with conn:
            conn.sendall(b"hello\r\n")

    yield from _serve_each_connection(greet)
