"""Generated policy sets and requests, to compare the access engine with Istio's own enforcement.

Two comparisons use it:

- the waypoint: the engine's decision at ``Point.waypoint`` against real Envoy running the RBAC
  filter istiod builds for the Service (the Envoy tier: ``istio-check waypoint`` and the Envoy
  stand-in answer 200 or 403);
- ztunnel: the engine's decision at ``Point.ztunnel`` against istiod's own conversion of the same
  policies for ztunnel (``istio-check check`` gives each policy's ``Authorization``), evaluated
  here by :func:`ztunnel_decides` with ztunnel's rules.

A case is drawn from a seeded ``random.Random`` (plain, reproducible: the seed is the test id), or
from any other source of choices (a hypothesis ``randoms()`` strategy gives shrinking), within
what the engine models: identities, namespaces, ports, methods, paths, hosts, ALLOW and DENY, and
``when`` on source.namespace, source.principal and destination.port. Every generated policy also
passes Istio's validation (no empty values, wildcards only at an end, ports as numbers, no DENY
policy without rules).
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

NAMESPACE = "model"
SERVICE = "target"
PORTS = (8080, 8081, 9090)
METHODS = ("GET", "POST", "DELETE")
PATHS = ("/", "/data", "/data/1", "/data/1/items", "/admin/x", "/a.txt")
HOSTS = ("target", "target.model.svc.cluster.local", "TARGET.example.com", "other.example.com")
#: (namespace, service account) of the callers.
CALLERS = (
    (NAMESPACE, "sender"),
    (NAMESPACE, "sender-two"),
    ("other", "sender"),
    ("remote", "dashboard"),
)

_PRINCIPAL_PATTERNS = (
    "cluster.local/ns/model/sa/sender",
    "cluster.local/ns/other/sa/sender",
    "cluster.local/ns/model/*",
    "*/sa/sender",
    "*",
)
_NAMESPACE_PATTERNS = ("model", "other", "rem*", "*er", "*")
_PATH_PATTERNS = ("/data", "/data/*", "*.txt", "/data/{*}", "/data/{**}", "/{*}/x", "*")
_HOST_PATTERNS = ("target", "*.example.com", "target.*", "TARGET.EXAMPLE.COM", "*")
_METHOD_PATTERNS = ("GET", "POST", "DELETE")


def principal_of(caller: tuple[str, str]) -> str:
    """``cluster.local/ns/<namespace>/sa/<account>``."""
    return f"cluster.local/ns/{caller[0]}/sa/{caller[1]}"


@dataclass(frozen=True)
class Ask:
    """One request of a case: who, to which port, with what (all attributes given)."""

    caller: tuple[str, str]
    port: int
    method: str
    path: str
    host: str


@dataclass(frozen=True)
class Case:
    """Policies on the one Service (waypoint) or its pods (ztunnel), and requests to decide.

    Attributes:
        manifests: AuthorizationPolicy manifests in ``NAMESPACE``.
        asks: the requests.
    """

    manifests: tuple[Mapping[str, Any], ...]
    asks: tuple[Ask, ...]
    service: str = SERVICE


def _some(rng: random.Random, values: Sequence[str], most: int = 2) -> list[str]:
    return rng.sample(list(values), rng.randint(1, min(most, len(values))))


def _source(rng: random.Random) -> dict[str, list[str]]:
    source: dict[str, list[str]] = {}
    for key, values in (
        ("principals", _PRINCIPAL_PATTERNS),
        ("notPrincipals", _PRINCIPAL_PATTERNS[:2]),
        ("namespaces", _NAMESPACE_PATTERNS),
        ("notNamespaces", _NAMESPACE_PATTERNS[:2]),
    ):
        if rng.random() < 0.3:
            source[key] = _some(rng, values)
    return source


def _operation(rng: random.Random, l7: bool) -> dict[str, list[str]]:
    operation: dict[str, list[str]] = {}
    choices: list[tuple[str, Sequence[str]]] = [
        ("ports", [str(p) for p in PORTS]),
        ("notPorts", [str(p) for p in PORTS]),
    ]
    if l7:
        choices += [
            ("methods", _METHOD_PATTERNS),
            ("notMethods", _METHOD_PATTERNS),
            ("paths", _PATH_PATTERNS),
            ("notPaths", _PATH_PATTERNS),
            ("hosts", _HOST_PATTERNS),
            ("notHosts", _HOST_PATTERNS),
        ]
    for key, values in choices:
        if rng.random() < 0.25:
            operation[key] = _some(rng, values)
    return operation


def _condition(rng: random.Random) -> dict[str, Any]:
    key, values = rng.choice(
        [
            ("source.namespace", _NAMESPACE_PATTERNS[:3]),
            ("source.principal", _PRINCIPAL_PATTERNS[:2]),
            ("destination.port", [str(p) for p in PORTS]),
        ]
    )
    field_name = "values" if rng.random() < 0.7 else "notValues"
    return {"key": key, field_name: _some(rng, values)}


def _rule(rng: random.Random, l7: bool) -> dict[str, Any]:
    rule: dict[str, Any] = {}
    if rng.random() < 0.7:
        sources = [{"source": _source(rng)} for _ in range(rng.randint(1, 2))]
        sources = [s for s in sources if s["source"]]
        if sources:
            rule["from"] = sources
    if rng.random() < 0.7:
        operations = [{"operation": _operation(rng, l7)} for _ in range(rng.randint(1, 2))]
        operations = [o for o in operations if o["operation"]]
        if operations:
            rule["to"] = operations
    if rng.random() < 0.15:
        rule["when"] = [_condition(rng)]
    return rule


def generate(
    rng: random.Random,
    *,
    point: str,
    policies: int = 3,
    asks: int = 24,
    l7_at_pods: bool = False,
    service: str = SERVICE,
) -> Case:
    """A case for ``point`` (``waypoint``: targetRefs on the Service; ``ztunnel``: a selector).

    With ``l7_at_pods``, selector policies also get HTTP fields, to check how ztunnel drops or
    narrows them. ``service`` names the Service (and the pods' app label): distinct names let
    many cases share one Envoy.
    """
    manifests: list[dict[str, Any]] = []
    for index in range(policies):
        spec: dict[str, Any] = {"action": rng.choice(["ALLOW", "ALLOW", "DENY"])}
        if point == "waypoint":
            spec["targetRefs"] = [{"group": "", "kind": "Service", "name": service}]
        else:
            spec["selector"] = {"matchLabels": {"app.kubernetes.io/name": service}}
        # Istio refuses a DENY policy without rules (it could never match).
        least = 1 if spec["action"] == "DENY" else 0
        rules = [
            _rule(rng, point == "waypoint" or l7_at_pods) for _ in range(rng.randint(least, 3))
        ]
        if rules:
            spec["rules"] = rules
        manifests.append(
            {
                "apiVersion": "security.istio.io/v1",
                "kind": "AuthorizationPolicy",
                "metadata": {"name": f"{service}-p{index}", "namespace": NAMESPACE},
                "spec": spec,
            }
        )
    return Case(
        tuple(manifests),
        tuple(
            Ask(
                rng.choice(CALLERS),
                rng.choice(PORTS),
                rng.choice(METHODS),
                rng.choice(PATHS),
                rng.choice(HOSTS),
            )
            for _ in range(asks)
        ),
        service,
    )


# ---------------------------------------------------------------------------------------------
# ztunnel's rules over istiod's Authorization (protojson, as istio-check prints it)
# ---------------------------------------------------------------------------------------------


def _string_match(matcher: Mapping[str, Any], value: str | None) -> bool:
    if value is None:
        return False
    if "exact" in matcher:
        return value == matcher["exact"]
    if "prefix" in matcher:
        return value.startswith(str(matcher["prefix"]))
    if "suffix" in matcher:
        return value.endswith(str(matcher["suffix"]))
    if "presence" in matcher:
        return value != ""
    raise ValueError(f"unknown string match {matcher!r}")


_MATCH_FIELDS = frozenset(
    {
        "principals",
        "notPrincipals",
        "namespaces",
        "notNamespaces",
        "serviceAccounts",
        "notServiceAccounts",
        "destinationPorts",
        "notDestinationPorts",
    }
)


def _entry_matches(match: Mapping[str, Any], caller: tuple[str, str], port: int) -> bool:
    """One Match: every list it has must match (the ``not`` ones must not)."""
    unknown = set(match) - _MATCH_FIELDS
    if unknown:
        raise ValueError(f"a ztunnel match with fields this harness does not read: {unknown}")
    principal = principal_of(caller)
    namespace, account = caller

    def any_string(key: str, value: str) -> bool:
        return any(_string_match(m, value) for m in cast("list[Any]", match.get(key, [])))

    def any_account(key: str) -> bool:
        return any(
            (sa.get("namespace"), sa.get("serviceAccount")) == (namespace, account)
            for sa in cast("list[Any]", match.get(key, []))
        )

    ports = [int(p) for p in cast("list[Any]", match.get("destinationPorts", []))]
    not_ports = [int(p) for p in cast("list[Any]", match.get("notDestinationPorts", []))]
    checks = [
        ("principals" not in match) or any_string("principals", principal),
        not any_string("notPrincipals", principal),
        ("namespaces" not in match) or any_string("namespaces", namespace),
        not any_string("notNamespaces", namespace),
        ("serviceAccounts" not in match) or any_account("serviceAccounts"),
        not any_account("notServiceAccounts"),
        (not ports) or port in ports,
        port not in not_ports,
    ]
    return all(checks)


def authorization_matches(
    authorization: Mapping[str, Any], caller: tuple[str, str], port: int
) -> bool:
    """ztunnel: any group; in a group, every rule set; in a rule set, any match entry."""
    return any(
        all(
            any(
                _entry_matches(m, caller, port)
                for m in cast("list[Any]", rules.get("matches", []))
            )
            for rules in cast("list[Any]", group.get("rules", []))
        )
        for group in cast("list[Any]", authorization.get("groups", []))
    )


def ztunnel_decides(
    authorizations: Sequence[Mapping[str, Any]], caller: tuple[str, str], port: int
) -> str:
    """``allow`` or ``deny``: DENY policies first; then, if any ALLOW applies, one must match."""
    denies = [a for a in authorizations if a.get("action") == "DENY"]
    allows = [a for a in authorizations if a.get("action", "ALLOW") == "ALLOW"]
    if any(authorization_matches(a, caller, port) for a in denies):
        return "deny"
    if not allows or any(authorization_matches(a, caller, port) for a in allows):
        return "allow"
    return "deny"


# ---------------------------------------------------------------------------------------------
# The comparisons
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mismatch:
    """A request on which the engine and Istio disagree."""

    ask: Ask
    engine: str
    istio: str
    reason: str


def engine_decides(case: Case, ask: Ask, point: str) -> tuple[str, str]:
    """The engine's decision (and why) at one point, for one request of a case."""
    # The charm's engine (charms/beacon/src must be on the path: -o pythonpath=...).
    parsing: Any = importlib.import_module("access.parsing")
    model: Any = importlib.import_module("access.model")
    evaluation: Any = importlib.import_module("access.evaluation")
    policies = [parsing.parse_policy(manifest, owner="") for manifest in case.manifests]
    request = model.Request(
        principal_of(ask.caller), case.service, ask.port, ask.method, ask.path, ask.host
    )
    decision, reason = evaluation.decide_at(model.Point(point), policies, request)
    return str(decision.value), str(reason)


def compare_waypoint(case: Case, statuses: Sequence[int]) -> list[Mismatch]:
    """The requests where the engine's waypoint decision differs from Envoy's answer.

    Args:
        case: the case.
        statuses: Envoy's HTTP status for each of ``case.asks``, in order (403: RBAC denied).
    """
    mismatches: list[Mismatch] = []
    for ask, status in zip(case.asks, statuses, strict=True):
        envoy = "deny" if status == 403 else "allow"
        engine, reason = engine_decides(case, ask, "waypoint")
        if engine != envoy:
            mismatches.append(Mismatch(ask, engine, f"envoy {status}", reason))
    return mismatches


def compare_ztunnel(case: Case, authorizations: Sequence[Mapping[str, Any]]) -> list[Mismatch]:
    """The requests where the engine's ztunnel decision differs from istiod's conversion.

    Args:
        case: the case (``point="ztunnel"``).
        authorizations: istiod's ``Authorization`` of each policy ztunnel gets (policies it
            does not get, such as CUSTOM, left out).
    """
    mismatches: list[Mismatch] = []
    for ask in case.asks:
        istio = ztunnel_decides(authorizations, ask.caller, ask.port)
        engine, reason = engine_decides(case, ask, "ztunnel")
        if engine != istio:
            mismatches.append(Mismatch(ask, engine, istio, reason))
    return mismatches


# ---------------------------------------------------------------------------------------------
# Running the comparisons with the Envoy tier's tools (istio-check, the Envoy waypoint stand-in)
# ---------------------------------------------------------------------------------------------


def waypoint_cases(count: int) -> list[Case]:
    """``count`` waypoint cases, seeds 0.., each on its own Service ``target-<seed>``."""
    return [
        generate(random.Random(seed), point="waypoint", service=f"target-{seed}")
        for seed in range(count)
    ]


def ztunnel_cases(count: int, *, l7_at_pods: bool) -> list[Case]:
    """``count`` ztunnel cases, seeds 0.., each on its own pods ``pods-<seed>``."""
    return [
        generate(random.Random(seed), point="ztunnel", l7_at_pods=l7_at_pods,
                 service=f"pods-{seed}")
        for seed in range(count)
    ]  # fmt: skip


@dataclass(frozen=True)
class Comparison:
    """What one comparison run saw."""

    asked: int
    answers: frozenset[str]
    mismatches: tuple[Mismatch, ...]


def compare_with_envoy(istio: Any, run_waypoint: Any, cases: Sequence[Case]) -> Comparison:
    """Every request of every case through real Envoy running istiod's RBAC for its Service.

    Args:
        istio: the Envoy tier's ``IstioCheck`` (its ``waypoint`` builds each Service's filter).
        run_waypoint: the Envoy tier's ``run_waypoint`` (a context manager giving a waypoint
            whose ``request(identity, service, port, method, path, host)`` answers a status).
        cases: waypoint cases with distinct Services (:func:`waypoint_cases`).
    """
    manifests = [m for case in cases for m in case.manifests]
    services = [f"{NAMESPACE}/{case.service}" for case in cases]
    rbac = istio.waypoint(manifests, services=services)
    asked = 0
    answers: set[str] = set()
    mismatches: list[Mismatch] = []
    with run_waypoint(rbac, dict.fromkeys(services, PORTS)) as envoy:
        for case in cases:
            statuses = [
                int(
                    envoy.request(
                        "spiffe://" + principal_of(ask.caller),
                        f"{NAMESPACE}/{case.service}",
                        ask.port,
                        ask.method,
                        ask.path,
                        ask.host,
                    ).status
                )
                for ask in case.asks
            ]
            asked += len(statuses)
            answers |= {str(status) for status in statuses}
            mismatches += compare_waypoint(case, statuses)
    return Comparison(asked, frozenset(answers), tuple(mismatches))


def compare_with_istiod(istio: Any, cases: Sequence[Case]) -> Comparison:
    """Every request of every case against istiod's conversion of its policies for ztunnel.

    Args:
        istio: the Envoy tier's ``IstioCheck`` (its ``check`` gives each policy's ztunnel
            ``Authorization``).
        cases: ztunnel cases with distinct policy names (:func:`ztunnel_cases`).
    """
    verdicts = istio.check([m for case in cases for m in case.manifests])["objects"]
    by_name = {v["name"]: v for v in verdicts}
    asked = 0
    answers: set[str] = set()
    mismatches: list[Mismatch] = []
    for case in cases:
        authorizations: list[Any] = []
        for manifest in case.manifests:
            ztunnel = by_name[manifest["metadata"]["name"]].get("ztunnel") or {}
            if ztunnel.get("applies") and ztunnel.get("authorization"):
                authorizations.append(ztunnel["authorization"])
        answers |= {ztunnel_decides(authorizations, a.caller, a.port) for a in case.asks}
        asked += len(case.asks)
        mismatches += compare_ztunnel(case, authorizations)
    return Comparison(asked, frozenset(answers), tuple(mismatches))
