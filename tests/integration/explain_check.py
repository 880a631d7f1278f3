"""Hold the beacon's `explain` to what real traffic did: one question per probed row, one verdict.

A probed row (a `Case` and the `ProbeResult` the tester saw) becomes the question `explain` answers
(`question`): the source app (`<app>/<model>` when it sends from another model), the target app,
the port, and the level. A request to an app's Service goes through the waypoint (`level=app`,
with the method and path the probe sent); a request to a unit's pod address
(`<app>-<n>.<app>-endpoints.<model>...`) goes straight to the pod (`level=unit`).

What the probe saw is a verdict too (`observed_verdict`): HTTP 200 or a TCP connection held open
is `allow`; HTTP 403 (the waypoint) and a refused or reset connection (ztunnel) are `deny`. Any
other outcome (a timeout, a name that does not resolve, another status) decides nothing and is a
failure, and so is an `explain` that answers `unknown`: the comparison never passes by not
comparing. Everything above is pure; `explain_rows` is the one function that runs the action.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jubilant
from mesh_probe import Case, ProbeResult, eventually

#: How long one row's `explain` is asked again when the action fails.
EXPLAIN_RETRY_TIMEOUT = 90.0

ALLOW = "allow"
DENY = "deny"
UNKNOWN = "unknown"

_POD_HOST = re.compile(r"^(?P<app>[a-z0-9]([a-z0-9-]*[a-z0-9])?)-\d+\.(?P=app)-endpoints(\.|$)")


@dataclasses.dataclass(frozen=True)
class Question:
    """The parameters of one `explain` run."""

    source: str
    target: str
    port: int
    level: str
    """`app` (through the target's Service and the waypoint) or `unit` (to a pod's address)."""
    method: str | None = None
    path: str | None = None

    def params(self) -> dict[str, str | int]:
        """The action's parameters (those that are set)."""
        params: dict[str, str | int] = {
            "source": self.source,
            "target": self.target,
            "port": self.port,
            "level": self.level,
        }
        if self.method is not None:
            params["method"] = self.method
        if self.path is not None:
            params["path"] = self.path
        return params

    def describe(self) -> str:
        """`explain source=sender1 target=receiver1 port=8080 level=app method=GET path=/foo`."""
        return "explain " + " ".join(f"{key}={value}" for key, value in self.params().items())


def question(item: Case, *, source_model: str | None = None) -> Question:
    """What to ask `explain` about one probed row.

    Args:
        item: the row; its source is a unit (`sender1/0`), its URL an `http://` or `tcp://` one.
        source_model: the sender's model when it is not the beacon's (cross-model rows).

    Raises:
        ValueError: the URL has no host or no explicit port (explain needs the port).
    """
    url = urllib.parse.urlsplit(item.request.url)
    host = url.hostname
    if not host:
        raise ValueError(f"no host in {item.request.url!r}")
    if url.port is None:
        raise ValueError(f"no explicit port in {item.request.url!r}: explain needs the port")
    app = item.source.partition("/")[0]
    source = f"{app}/{source_model}" if source_model else app
    pod = _POD_HOST.match(host)
    target = pod["app"] if pod else host.partition(".")[0]
    http = url.scheme in {"http", "https"}
    return Question(
        source=source,
        target=target,
        port=url.port,
        level="unit" if pod else "app",
        method=item.request.method if http else None,
        path=(url.path or "/") if http else None,
    )


def observed_verdict(result: ProbeResult) -> str:
    """The verdict the probe observed: `allow` or `deny`.

    Raises:
        ValueError: an outcome that neither allows nor denies (timeout, unresolved name, an HTTP
            status other than 200 and 403, an error of the probe itself).
    """
    if result.outcome == "response" and result.status == 200:
        return ALLOW
    if result.outcome == "response" and result.status == 403:
        return DENY
    if result.outcome in {"refused", "reset"}:
        return DENY
    if result.outcome == "connected":
        return ALLOW
    raise ValueError(f"the probe saw {result.describe()}, which is neither allow nor deny")


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One probed row, the question put to `explain`, and its answer."""

    case: Case
    result: ProbeResult
    question: Question
    verdict: str
    reason: str

    def mismatch(self) -> str | None:
        """Why the prediction does not hold, or None when it equals what the probe saw."""
        if self.verdict == UNKNOWN:
            return f"explain cannot decide: {self.reason}"
        if self.verdict not in {ALLOW, DENY}:
            return f"explain answered {self.verdict!r}, not allow, deny or unknown"
        try:
            observed = observed_verdict(self.result)
        except ValueError as error:
            return str(error)
        if observed != self.verdict:
            return f"explain predicts {self.verdict} ({self.reason}), the probe saw {observed}"
        return None


def compare(
    item: Case,
    result: ProbeResult,
    results: Mapping[str, Any],
    *,
    source_model: str | None = None,
) -> Comparison:
    """Pair a probed row with the results of the `explain` run that `question` describes."""
    verdict = results.get("verdict")
    return Comparison(
        case=item,
        result=result,
        question=question(item, source_model=source_model),
        verdict=str(verdict) if verdict is not None else f"(no verdict in {dict(results)})",
        reason=str(results.get("reason") or ""),
    )


def format_comparisons(comparisons: Iterable[Comparison]) -> str:
    """One line per row: the request, what the probe saw, what explain said; mismatches marked."""
    lines: list[str] = []
    for comparison in comparisons:
        problem = comparison.mismatch()
        mark = "!!" if problem else "  "
        line = (
            f"{mark} {comparison.case.describe():<80} saw {comparison.result.describe():<16} "
            f"explain {comparison.verdict}"
        )
        if problem:
            line += f"\n     {comparison.question.describe()}: {problem}"
        lines.append(line)
    return "\n".join(lines)


def assert_predicted(comparisons: Sequence[Comparison]) -> None:
    """Fail, listing every row, unless explain predicted each one and there was at least one."""
    if not comparisons:
        raise AssertionError("no probed rows to compare explain with")
    if any(comparison.mismatch() for comparison in comparisons):
        raise AssertionError(
            "explain's prediction differs from the observed traffic:\n"
            + format_comparisons(comparisons)
        )


def leader(juju: jubilant.Juju, app: str) -> str:
    """The unit of `app` that is its leader (the beacon answers its actions on the leader)."""
    units = juju.status().apps[app].units
    for name, unit in units.items():
        if unit.leader:
            return name
    raise AssertionError(f"{app} has no leader among {sorted(units)}")


def explain_rows(
    juju: jubilant.Juju,
    beacon: str,
    observed: Sequence[tuple[Case, ProbeResult]],
    *,
    source_model: str | None = None,
) -> list[Comparison]:
    """Run the beacon's `explain` (on its leader, in `juju`'s model) for every probed row."""
    unit = leader(juju, beacon)
    comparisons: list[Comparison] = []
    for item, result in observed:
        asked = question(item, source_model=source_model)
        # The action fails when its read of the cluster does (a 429 or 5xx from a busy
        # single-node MicroK8s, as the probes meet too): asked again for a while, like them.
        task = eventually(
            functools.partial(juju.run, unit, "explain", asked.params()),
            timeout=EXPLAIN_RETRY_TIMEOUT,
            what=f"explain on {unit} for {item}",
            retry_on=(jubilant.TaskError,),
        )
        comparisons.append(compare(item, result, task.results, source_model=source_model))
    return comparisons
