"""A loopback HTTP proxy in front of a real kube-apiserver that injects faults on demand.

Clients talk plain HTTP to the proxy (its kubeconfig has no credentials); the proxy forwards each
request over TLS with the identity of an upstream kubeconfig (client certificate or bearer token),
unless a :class:`Fault` matches it. A fault answers with an error status (500, 409, 429, ...)
before or after forwarding (``after=True``: Kubernetes did the write, the answer is lost), resets
the connection, or holds it past the client's timeout. Faults fire a given number of times, so a
test can break one step of a reconcile and let the next hook run clean.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import re
import socket
import ssl
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host"}


@dataclass
class Fault:
    """What to do to matching requests, and how many times.

    Attributes:
        method: HTTP method to match (``PATCH`` is also a server-side apply); ``None``: any.
        path: a regular expression searched in the request path (with its query), e.g.
            ``/authorizationpolicies``.
        action: ``status`` (answer ``code``), ``reset`` (close the connection with a TCP reset,
            no answer) or ``hang`` (hold the connection ``seconds``, then close it).
        code: the status for ``status``.
        after: for ``status``: forward the request first, then answer the error anyway.
        times: how many matching requests it affects; then it is spent.
        seconds: how long ``hang`` holds the connection.
    """

    method: str | None = None
    path: str | None = None
    action: str = "status"
    code: int = 500
    after: bool = False
    times: int = 1
    seconds: float = 15.0
    fired: int = field(default=0, init=False)

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to the request and has firings left."""
        return (
            self.fired < self.times
            and (self.method is None or self.method == method)
            and (self.path is None or re.search(self.path, path) is not None)
        )


@dataclass(frozen=True)
class Seen:
    """One request that reached the proxy, and what the client got (0: no answer)."""

    method: str
    path: str
    status: int
    injected: bool


class FaultyProxy:
    """The proxy; use it as a context manager. ``kubeconfig_path`` points clients at it.

    Args:
        upstream_kubeconfig: the kubeconfig of the real server and of the identity to use.
    """

    def __init__(self, upstream_kubeconfig: Path):
        config = yaml.safe_load(upstream_kubeconfig.read_text())
        context_name = config["current-context"]
        context = next(c for c in config["contexts"] if c["name"] == context_name)["context"]
        cluster = next(c for c in config["clusters"] if c["name"] == context["cluster"])["cluster"]
        user = next(u for u in config["users"] if u["name"] == context["user"])["user"]
        address = urlsplit(cluster["server"])
        self._host = address.hostname or "127.0.0.1"
        self._port = address.port or 443
        self._ssl = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self._auth: dict[str, str] = {}
        if "client-certificate" in user:
            self._ssl.load_cert_chain(user["client-certificate"], user["client-key"])
        elif "token" in user:
            self._auth["Authorization"] = f"Bearer {user['token']}"
        self._namespace = context.get("namespace")
        self._lock = threading.Lock()
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._dir = tempfile.TemporaryDirectory(prefix="faulty-proxy-")
        self.kubeconfig_path = Path(self._dir.name) / "kubeconfig"
        self._write_kubeconfig()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>`` of the proxy."""
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> FaultyProxy:
        """Start serving."""
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop serving and remove the kubeconfig."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)
        self._dir.cleanup()

    def inject(self, *faults: Fault) -> None:
        """Add faults; they apply in order, the first that matches wins."""
        with self._lock:
            self.faults.extend(faults)

    def clear(self) -> None:
        """Drop every fault (spent or not) and forget the requests seen."""
        with self._lock:
            self.faults.clear()
            self.seen.clear()

    def injected(self) -> list[Seen]:
        """The requests that got a fault."""
        with self._lock:
            return [seen for seen in self.seen if seen.injected]

    @contextlib.contextmanager
    def down(self) -> Iterator[None]:
        """Every request is reset while inside: an API server that cannot be reached."""
        fault = Fault(action="reset", times=10**9)
        self.inject(fault)
        try:
            yield
        finally:
            with self._lock:
                self.faults.remove(fault)

    # ------------------------------------------------------------------------------- internals

    def _write_kubeconfig(self) -> None:
        context: dict[str, Any] = {"cluster": "proxy", "user": "anonymous"}
        if self._namespace:
            context["namespace"] = self._namespace
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "proxy", "cluster": {"server": self.url}}],
            "users": [{"name": "anonymous", "user": {}}],
            "contexts": [{"name": "proxy", "context": context}],
            "current-context": "proxy",
        }
        self.kubeconfig_path.write_text(yaml.safe_dump(config))

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(method, path):
                    fault.fired += 1
                    return fault
        return None

    def _record(self, method: str, path: str, status: int, injected: bool) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, status, injected))

    def _forward(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPSConnection(self._host, self._port, context=self._ssl, timeout=60)
        try:
            conn.request(method, path, body=body or None, headers={**headers, **self._auth})
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self) -> None:
                method, path = self.command, self.path
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {
                    key: value
                    for key, value in self.headers.items()
                    if key.lower() not in _HOP_HEADERS and key.lower() != "authorization"
                }
                fault = proxy._take_fault(method, path)
                if fault is not None and fault.action == "reset":
                    proxy._record(method, path, 0, True)
                    self._reset()
                    return
                if fault is not None and fault.action == "hang":
                    proxy._record(method, path, 0, True)
                    time.sleep(fault.seconds)
                    self._reset()
                    return
                if fault is not None and not fault.after:
                    proxy._record(method, path, fault.code, True)
                    self._status(fault.code)
                    return
                status, response_headers, payload = proxy._forward(method, path, headers, body)
                if fault is not None:  # after: the write happened, the answer is lost
                    proxy._record(method, path, fault.code, True)
                    self._status(fault.code)
                    return
                proxy._record(method, path, status, False)
                self.send_response(status)
                for key, value in response_headers:
                    if key.lower() not in _HOP_HEADERS and key.lower() != "content-length":
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _status(self, code: int) -> None:
                reason = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError"}.get(
                    code, "Injected"
                )
                payload = json.dumps(
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Failure",
                        "message": f"injected by the faulty proxy: {code}",
                        "reason": reason,
                        "code": code,
                    }
                ).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                if code == 429:
                    self.send_header("Retry-After", "0")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _reset(self) -> None:
                # SO_LINGER with a zero timeout: close() sends a TCP reset, not a clean FIN.
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                    )
                self.close_connection = True
                with contextlib.suppress(OSError):
                    self.connection.close()

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: object) -> None:
                del format, args

        return Handler
