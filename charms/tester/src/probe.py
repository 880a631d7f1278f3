"""The ``probe`` action: send HTTP requests from this unit and report what happened to each.

Network failures are results, not errors: every request ends in exactly one outcome,

- ``response``: an HTTP response came back (any status; ``status`` holds the code),
- ``refused``: the connection was refused,
- ``reset``: the connection was reset or closed before a response arrived (what an L4 deny in an
  ambient mesh looks like),
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

Outcome = Literal["response", "refused", "reset", "timeout", "unresolved", "error"]

SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
DEFAULT_METHOD = "GET"
DEFAULT_TIMEOUT = 5.0
_MAX_RESPONSE_BYTES = 1 << 16
_REQUEST_KEYS = frozenset({"url", "method", "timeout"})


class ProbeParamsError(ValueError):
    """The action parameters do not describe valid requests; the message says why."""


@dataclasses.dataclass(frozen=True)
class ProbeRequest:
    """One request to send: a validated http URL, an upper-case method and a timeout in seconds."""

    url: str
    method: str = DEFAULT_METHOD
    timeout: float = DEFAULT_TIMEOUT


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What happened to one request."""

    url: str
    method: str
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
            default to the top-level ones).

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
    return [ProbeRequest(_url(url, "url"), default_method, default_timeout)]


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
        requests.append(
            ProbeRequest(
                url=_url(entry["url"], f"{where}.url"),
                method=_method(entry.get("method", default_method), f"{where}.method"),
                timeout=_timeout(entry.get("timeout", default_timeout), f"{where}.timeout"),
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
    if parsed.scheme != "http":
        raise ProbeParamsError(f"{where} {value!r} is not an http:// URL")
    if not parsed.hostname:
        raise ProbeParamsError(f"{where} {value!r} has no host")
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
    """Send one request and report its outcome; network failures never raise."""
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
