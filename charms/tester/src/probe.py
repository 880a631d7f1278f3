"""The ``probe`` action: send requests from this unit and report what happened to each.

A request is either an HTTP request (an ``http://`` URL and a method) or a TCP connect
(``tcp://host:port``), for ports that do not speak plain HTTP (a TLS port, for example).

Network failures are results, not errors: every request ends in exactly one outcome,

- ``response``: an HTTP response came back (any status; ``status`` holds the code),
- ``connected``: (TCP only) the connection was accepted and was still open, or the server had sent
  something, after the hold time (:data:`TCP_HOLD_SECONDS`, or the timeout when shorter),
- ``refused``: the connection was refused,
- ``reset``: the connection was reset or closed before a response arrived (what an L4 deny in an
  ambient mesh looks like; for TCP: closed by the other end within the hold time),
- ``timeout``: connecting or reading took longer than the timeout,
- ``unresolved``: the host name did not resolve,
- ``error``: anything else (the message says what).

Only the parameters can be wrong; they raise :class:`ProbeParamsError` before anything is sent.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import math
import socket
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any, Literal

Outcome = Literal["response", "connected", "refused", "reset", "timeout", "unresolved", "error"]

SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
DEFAULT_METHOD = "GET"
DEFAULT_TIMEOUT = 5.0
_MAX_RESPONSE_BYTES = 1 << 16
_REQUEST_KEYS = frozenset({"url", "method", "timeout"})
SCHEMES = ("http", "tcp")
TCP_HOLD_SECONDS = 1.0
"""How long a TCP probe keeps the connection open to see whether the other end closes it.

In an ambient mesh the client's own ztunnel accepts the connection before the destination has
decided anything, and a denial arrives as a close or reset right after: a bare connect proves
nothing, a connection still open a moment later does.
"""


class ProbeParamsError(ValueError):
    """The action parameters do not describe valid requests; the message says why."""


@dataclasses.dataclass(frozen=True)
class ProbeRequest:
    """One request to send: a validated URL, a method (None for TCP) and a timeout in seconds."""

    url: str
    method: str | None = DEFAULT_METHOD
    timeout: float = DEFAULT_TIMEOUT

    @property
    def is_tcp(self) -> bool:
        """Whether this is a TCP connect (``tcp://host:port``) rather than an HTTP request."""
        return urllib.parse.urlsplit(self.url).scheme == "tcp"


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What happened to one request."""

    url: str
    method: str | None
    outcome: Outcome
    status: int | None
    error: str | None
    elapsed: float

    def to_dict(self) -> dict[str, Any]:
        """The result as the JSON object reported by the action."""
        return dataclasses.asdict(self)


def parse_params(params: Mapping[str, Any]) -> list[ProbeRequest]:
    """Turn the action parameters into the requests to send.

    Args:
        params: the action parameters: ``url``, ``method``, ``timeout`` and ``requests`` (JSON
            text of a list of ``{"url", "method", "timeout"}`` objects; method and timeout
            default to the top-level ones). A ``tcp://host:port`` URL is a TCP connect: it has
            no method (the top-level one is ignored, one in a ``requests`` entry is an error).

    Raises:
        ProbeParamsError: if the parameters are missing, contradictory or invalid.
    """
    default_method = _method(params.get("method", DEFAULT_METHOD), "method")
    default_timeout = _timeout(params.get("timeout", DEFAULT_TIMEOUT), "timeout")
    url = params.get("url")
    raw_requests = params.get("requests")
    if raw_requests is not None and raw_requests != "":
        if url:
            raise ProbeParamsError("give either 'url' or 'requests', not both")
        return _parse_requests(raw_requests, default_method, default_timeout)
    if not url:
        raise ProbeParamsError("missing parameter 'url' (or 'requests')")
    return [_request(_url(url, "url"), default_method, default_timeout)]


def _request(url: str, method: str, timeout: float) -> ProbeRequest:
    if urllib.parse.urlsplit(url).scheme == "tcp":
        return ProbeRequest(url, None, timeout)
    return ProbeRequest(url, method, timeout)


def _parse_requests(raw: Any, default_method: str, default_timeout: float) -> list[ProbeRequest]:
    if not isinstance(raw, str):
        raise ProbeParamsError("'requests' must be JSON text")
    try:
        items = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ProbeParamsError(f"'requests' is not valid JSON: {e}") from None
    if not isinstance(items, list) or not items:
        raise ProbeParamsError("'requests' must be a non-empty JSON list of objects")
    requests: list[ProbeRequest] = []
    for index, item in enumerate(items):
        where = f"requests[{index}]"
        if not isinstance(item, dict):
            raise ProbeParamsError(f"{where} must be an object with 'url', 'method', 'timeout'")
        entry: dict[str, Any] = item
        unknown = sorted(set(entry) - _REQUEST_KEYS)
        if unknown:
            raise ProbeParamsError(f"{where} has unknown keys {unknown}")
        if "url" not in entry:
            raise ProbeParamsError(f"{where} has no 'url'")
        url = _url(entry["url"], f"{where}.url")
        if "method" in entry and urllib.parse.urlsplit(url).scheme == "tcp":
            raise ProbeParamsError(f"{where} is a tcp:// connect, which has no 'method'")
        requests.append(
            _request(
                url,
                _method(entry.get("method", default_method), f"{where}.method"),
                _timeout(entry.get("timeout", default_timeout), f"{where}.timeout"),
            )
        )
    return requests


def _url(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ProbeParamsError(f"{where} must be a non-empty string")
    try:
        parsed = urllib.parse.urlsplit(value)
        parsed.port  # noqa: B018 -- raises ValueError on a bad port
    except ValueError as e:
        raise ProbeParamsError(f"{where} {value!r} is not a valid URL: {e}") from None
    if parsed.scheme not in SCHEMES:
        raise ProbeParamsError(f"{where} {value!r} is not an http:// or tcp:// URL")
    if not parsed.hostname:
        raise ProbeParamsError(f"{where} {value!r} has no host")
    if parsed.scheme == "tcp":
        if parsed.port is None:
            raise ProbeParamsError(f"{where} {value!r} has no port (tcp://host:port)")
        if parsed.path not in ("", "/") or parsed.query or parsed.fragment:
            raise ProbeParamsError(f"{where} {value!r}: a tcp:// URL is only tcp://host:port")
    return value


def _method(value: Any, where: str) -> str:
    method = value.upper() if isinstance(value, str) else value
    if method not in SUPPORTED_METHODS:
        raise ProbeParamsError(
            f"{where} {value!r} is not a supported method (one of {', '.join(SUPPORTED_METHODS)})"
        )
    return method


def _timeout(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProbeParamsError(f"{where} must be a number of seconds")
    if not math.isfinite(value) or value <= 0:
        raise ProbeParamsError(f"{where} must be a positive number of seconds, got {value}")
    return float(value)


def send(request: ProbeRequest) -> ProbeResult:
    """Send one request (HTTP or TCP) and report its outcome; network failures never raise."""
    if request.is_tcp:
        return connect(request)
    return _send_http(request)


def _send_http(request: ProbeRequest) -> ProbeResult:
    assert request.method is not None  # only TCP requests have none
    parsed = urllib.parse.urlsplit(request.url)
    target = urllib.parse.urlunsplit(("", "", parsed.path or "/", parsed.query, ""))
    start = time.monotonic()

    def result(
        outcome: Outcome, status: int | None = None, error: str | None = None
    ) -> ProbeResult:
        elapsed = round(time.monotonic() - start, 6)
        return ProbeResult(request.url, request.method, outcome, status, error, elapsed)

    assert parsed.hostname is not None  # checked by parse_params
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=request.timeout)
    try:
        connection.request(
            request.method, target, headers={"User-Agent": "service-mesh-tester-probe"}
        )
        response = connection.getresponse()
        response.read(_MAX_RESPONSE_BYTES)
        return result("response", status=response.status)
    except socket.gaierror as e:
        return result("unresolved", error=f"cannot resolve {parsed.hostname!r}: {e}")
    except TimeoutError as e:
        return result(
            "timeout", error=f"no answer within {request.timeout:g}s: {e or 'timed out'}"
        )
    except ConnectionRefusedError as e:
        return result("refused", error=str(e))
    except (ConnectionResetError, BrokenPipeError, ConnectionAbortedError) as e:
        # http.client.RemoteDisconnected is a ConnectionResetError: closed before any response.
        return result("reset", error=str(e) or type(e).__name__)
    except (OSError, http.client.HTTPException) as e:
        return result("error", error=f"{type(e).__name__}: {e}")
    finally:
        connection.close()


def connect(request: ProbeRequest) -> ProbeResult:
    """Open a TCP connection, hold it briefly and report whether it stayed open.

    Sends nothing: a server that waits for the client to speak first (TLS does) keeps the
    connection open, which is ``connected``; so is a server that sends something first. A close or
    reset by the other end within the hold time (see :data:`TCP_HOLD_SECONDS`) is ``reset``.
    """
    parsed = urllib.parse.urlsplit(request.url)
    assert parsed.hostname is not None  # checked by parse_params
    assert parsed.port is not None
    start = time.monotonic()
    try:
        with socket.create_connection(
            (parsed.hostname, parsed.port), timeout=request.timeout
        ) as sock:
            outcome, error = _hold(sock, min(TCP_HOLD_SECONDS, request.timeout))
    except OSError as e:
        outcome, error = _connect_failure(e, parsed.hostname, request.timeout)
    elapsed = round(time.monotonic() - start, 6)
    return ProbeResult(request.url, None, outcome, None, error, elapsed)


def _hold(sock: socket.socket, hold: float) -> tuple[Outcome, str | None]:
    sock.settimeout(hold)
    try:
        received = sock.recv(1)
    except TimeoutError:
        return "connected", None  # still open after the hold time, nothing said
    if received:
        return "connected", None
    return "reset", f"closed by the other end within {hold:g}s of connecting"


def _connect_failure(error: OSError, host: str, timeout: float) -> tuple[Outcome, str]:
    if isinstance(error, socket.gaierror):
        return "unresolved", f"cannot resolve {host!r}: {error}"
    if isinstance(error, TimeoutError):
        return "timeout", f"no connection within {timeout:g}s: {error or 'timed out'}"
    if isinstance(error, ConnectionRefusedError):
        return "refused", str(error)
    if isinstance(error, ConnectionResetError | ConnectionAbortedError | BrokenPipeError):
        return "reset", str(error) or type(error).__name__
    return "error", f"{type(error).__name__}: {error}"


def run(requests: list[ProbeRequest]) -> list[ProbeResult]:
    """Send the requests one after the other and report each outcome."""
    return [send(request) for request in requests]


def action_results(results: list[ProbeResult]) -> dict[str, str]:
    """The action's result keys: ``results`` (JSON text), plus ``outcome``/``status`` for one.

    Juju turns every action result into a string; ``status`` is the code, or empty when no
    response came back.
    """
    out = {"results": json.dumps([r.to_dict() for r in results])}
    if len(results) == 1:
        out["outcome"] = results[0].outcome
        out["status"] = "" if results[0].status is None else str(results[0].status)
    return out
