"""Real traffic between testers, through the tester charm's `probe` action, checked with deadlines.

A traffic expectation is a `Case`: a source unit sends one request and the outcome must match an
`Expected`. Mesh changes (labels, policies, waypoints) take effect asynchronously, so every check
runs inside `eventually`: it retries until the expectation holds or a deadline passes, and then
fails with the last observed mismatch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import jubilant
from lightkube.core.exceptions import ApiError

logger = logging.getLogger(__name__)

T = TypeVar("T")

OUTCOMES = frozenset(
    {"response", "connected", "refused", "reset", "timeout", "unresolved", "error"}
)
TRAFFIC_TIMEOUT = 240.0
"""Seconds a traffic expectation may take to converge after a change."""
ACTION_OVERHEAD = 30.0
"""Seconds a probe action may take beyond its requests' own timeouts (Juju's dispatch, Python)."""

# Errors that a probe may hit while the mesh is still converging (a unit's pod restarts when its
# labels change, so an action can fail to run for a while); they are retried until the deadline.
TRANSIENT_ERRORS: tuple[type[Exception], ...] = (
    AssertionError,
    jubilant.CLIError,
    jubilant.TaskError,
    TimeoutError,
)


def transient_api_error(error: BaseException) -> bool:
    """Whether `error` is the Kubernetes API asking to be asked again: HTTP 429 or 5xx.

    The API server answers 429 when it sheds load and 5xx while it (or etcd behind it) restarts
    or times out; on a busy single-node MicroK8s both happen during a test run and say nothing
    about what the charms did.
    """
    if not isinstance(error, ApiError):
        return False
    code = error.status.code
    return code is not None and (code == 429 or code >= 500)


def eventually(
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float = 5.0,
    what: str,
    retry_on: tuple[type[Exception], ...] = (AssertionError,),
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call `check` until it returns without raising one of `retry_on`, or the deadline passes.

    A transient Kubernetes API error (`transient_api_error`: 429, 5xx) is retried too; any other
    error is raised at once.

    Returns:
        What `check` returned on its first success.

    Raises:
        AssertionError: naming `what`, with the last error `check` raised as its cause.
    """
    deadline = clock() + timeout
    attempt = 0
    while True:
        attempt += 1
        try:
            return check()
        except Exception as error:
            if not isinstance(error, retry_on) and not transient_api_error(error):
                raise
            if clock() + interval > deadline:
                raise AssertionError(
                    f"{what}: still failing after {attempt} attempts in {timeout:.0f}s: {error}"
                ) from error
            logger.info("%s: attempt %d not yet: %s", what, attempt, str(error).splitlines()[0:1])
        sleep(interval)


@dataclasses.dataclass(frozen=True)
class Request:
    """One request for the probe action: HTTP (`http://` URL and method) or TCP (`tcp://`)."""

    url: str
    method: str | None = "GET"
    """None for a TCP connect (`tcp://host:port`), which has no method."""
    timeout: float = 5.0

    def to_dict(self) -> dict[str, Any]:
        """The request as the probe action's `requests` parameter expects it."""
        if self.method is None:
            return {"url": self.url, "timeout": self.timeout}
        return {"url": self.url, "method": self.method, "timeout": self.timeout}


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    """What the tester observed for one request."""

    url: str
    method: str | None
    outcome: str
    status: int | None
    error: str | None
    elapsed: float | None

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> ProbeResult:
        """Parse one entry of the probe action's `results` list, rejecting unknown outcomes."""
        outcome = str(raw["outcome"])
        if outcome not in OUTCOMES:
            raise ValueError(f"probe returned an unknown outcome {outcome!r} in {dict(raw)}")
        status = raw.get("status")
        elapsed = raw.get("elapsed")
        error = raw.get("error")
        method = raw.get("method")
        return cls(
            url=str(raw["url"]),
            method=str(method).upper() if method is not None else None,
            outcome=outcome,
            status=int(status) if status is not None else None,
            error=str(error) if error else None,
            elapsed=float(elapsed) if elapsed is not None else None,
        )

    def describe(self) -> str:
        """Short human description: `HTTP 200`, `refused (…)`."""
        if self.outcome == "response":
            return f"HTTP {self.status}"
        return f"{self.outcome} ({self.error})" if self.error else self.outcome


@dataclasses.dataclass(frozen=True)
class Expected:
    """An acceptable set of probe outcomes."""

    label: str
    outcomes: frozenset[str]
    statuses: frozenset[int] | None = None
    """When the outcome is `response`: the acceptable HTTP statuses (None: any)."""

    def matches(self, result: ProbeResult) -> bool:
        """Whether `result` is one of the acceptable outcomes."""
        if result.outcome not in self.outcomes:
            return False
        if result.outcome == "response" and self.statuses is not None:
            return result.status in self.statuses
        return True


def http(status: int) -> Expected:
    """An HTTP response with exactly this status."""
    return Expected(
        label=f"HTTP {status}", outcomes=frozenset({"response"}), statuses=frozenset({status})
    )


ALLOWED = http(200)
"""Allowed: the receiver answered."""
FORBIDDEN = http(403)
"""Denied at L7 by the waypoint."""
REFUSED = Expected(label="connection refused", outcomes=frozenset({"refused", "reset"}))
"""Denied at L4 by ztunnel: the connection is refused or reset, there is no HTTP status at all.

ztunnel intercepts the client's connection before the destination decides, so its denial reaches
the client as a refused connect or as a reset right after it (docs/traffic-matrix.md).
"""
CONNECTED = Expected(label="TCP connection held open", outcomes=frozenset({"connected"}))
"""A TCP connect (`tcp://`) that the other end kept open (or spoke on) for the probe's hold time.

A bare connect would prove nothing on the mesh (the client's ztunnel accepts it before the
destination decides); a connection still open after the hold was let through.
"""


@dataclasses.dataclass(frozen=True)
class Case:
    """One request from one unit, and what must come of it."""

    source: str
    """Unit that sends, e.g. `sender1/0`."""
    request: Request
    expected: Expected

    def describe(self) -> str:
        """`sender1/0 GET http://receiver1:8080/foo`, or `outsider/0 TCP tcp://host:17071`."""
        return f"{self.source} {self.request.method or 'TCP'} {self.request.url}"


def case(source: str, url: str, expected: Expected, method: str = "GET") -> Case:
    """Shorthand for a `Case` of an HTTP request."""
    return Case(source=source, request=Request(url=url, method=method), expected=expected)


def tcp_case(source: str, host: str, port: int, expected: Expected) -> Case:
    """Shorthand for a `Case` of a TCP connect to `host:port` (the probe's `tcp://` mode)."""
    request = Request(url=f"tcp://{host}:{port}", method=None)
    return Case(source=source, request=request, expected=expected)


def assert_ready_for_actions(status: jubilant.Status, unit: str) -> None:
    """Assert that `unit` would run an action now: its agent idle, its workload active.

    An action sent to a unit whose pod is restarting (a unit's pod restarts when its mesh labels
    change) waits in Juju's queue until the pod is back; waiting for it would spend the whole
    traffic deadline on one probe. Checked first, the unit is retried every few seconds instead.
    """
    app = status.apps.get(unit.partition("/")[0])
    units = app.units if app is not None else {}
    assert unit in units, f"no unit {unit} in the model"
    agent = units[unit].juju_status
    workload = units[unit].workload_status
    assert (agent.current, workload.current) == ("idle", "active"), (
        f"{unit} is not ready for an action: agent {agent.current} {agent.message!r}, "
        f"workload {workload.current} {workload.message!r}"
    )


def probe(juju: jubilant.Juju, unit: str, requests: Sequence[Request]) -> list[ProbeResult]:
    """Run the tester's `probe` action on `unit` and return one result per request, in order."""
    payload = json.dumps([request.to_dict() for request in requests])
    budget = ACTION_OVERHEAD + sum(request.timeout for request in requests)
    task = juju.run(unit, "probe", {"requests": payload}, wait=budget)
    raw = task.results.get("results")
    if not isinstance(raw, str):
        raise AssertionError(f"probe on {unit} returned no `results` JSON text: {task.results}")
    entries = json.loads(raw)
    results = [ProbeResult.from_dict(entry) for entry in entries]
    if len(results) != len(requests):
        raise AssertionError(f"probe on {unit}: {len(requests)} requests, {len(results)} results")
    return results


def observe(juju: jubilant.Juju, cases: Iterable[Case]) -> list[tuple[Case, ProbeResult]]:
    """Run every case, one probe action per source unit, and pair each case with its result."""
    by_source: dict[str, list[Case]] = {}
    for item in cases:
        by_source.setdefault(item.source, []).append(item)
    status = juju.status()
    for source in by_source:
        assert_ready_for_actions(status, source)
    observed: list[tuple[Case, ProbeResult]] = []
    for source, source_cases in by_source.items():
        results = probe(juju, source, [item.request for item in source_cases])
        observed.extend(zip(source_cases, results, strict=True))
    return observed


def format_table(observed: Iterable[tuple[Case, ProbeResult]]) -> str:
    """A plain-text table of expected and observed outcomes, mismatches marked."""
    lines: list[str] = []
    for item, result in observed:
        mark = "  " if item.expected.matches(result) else "!!"
        expected = f"expected {item.expected.label}"
        lines.append(f"{mark} {item.describe():<88} {expected:<34} got {result.describe()}")
    return "\n".join(lines)


def check_traffic(juju: jubilant.Juju, cases: Sequence[Case]) -> list[tuple[Case, ProbeResult]]:
    """Probe every case once and raise AssertionError listing all of them if any mismatched."""
    observed = observe(juju, cases)
    if any(not item.expected.matches(result) for item, result in observed):
        raise AssertionError("traffic differs from the expectation:\n" + format_table(observed))
    logger.info("traffic as expected:\n%s", format_table(observed))
    return observed


def assert_traffic(
    juju: jubilant.Juju, cases: Sequence[Case], *, timeout: float = TRAFFIC_TIMEOUT, what: str
) -> list[tuple[Case, ProbeResult]]:
    """Probe until every case matches its expectation, or fail after `timeout` with the table."""
    return eventually(
        lambda: check_traffic(juju, cases),
        timeout=timeout,
        interval=10.0,
        what=what,
        retry_on=TRANSIENT_ERRORS,
    )
