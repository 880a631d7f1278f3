"""The access engine's field matching and policy reading, as tables of cases."""

from __future__ import annotations

from typing import Any

import pytest
from access.evaluation import evaluate_point
from access.matching import Attributes, match_path, match_string
from access.model import Decision, Point, principal, split_principal
from access.parsing import (
    AuthzPolicy,
    Condition,
    Operation,
    Provenance,
    Rule,
    Source,
    TargetRef,
    parse_policy,
)
from kube_names import MANAGED_BY, RELATION_ID, REQUESTED_BY

OWNER = "m.beacon"
ME = principal("m", "sender")


@pytest.mark.parametrize(
    ("pattern", "value", "ignore_case", "expected"),
    [
        ("*", "anything", False, True),
        ("*", "", False, True),
        ("*", None, False, False),
        ("cluster.local/ns/m/*", "cluster.local/ns/m/sa/a", False, True),
        ("cluster.local/ns/m/*", "cluster.local/ns/x/sa/a", False, False),
        ("*/sa/a", "cluster.local/ns/m/sa/a", False, True),
        ("*/sa/a", "cluster.local/ns/m/sa/ab", False, False),
        ("exact", "exact", False, True),
        ("exact", "exactly", False, False),
        ("Exact", "exact", False, False),
        ("Exact", "exact", True, True),
        ("*.EXAMPLE.com", "api.example.COM", True, True),
        ("api.*", "API.example.com", True, True),
        ("api.*", "web.example.com", True, False),
    ],
)
def test_match_string(pattern: str, value: str | None, ignore_case: bool, expected: bool):
    assert match_string(pattern, value, ignore_case=ignore_case) is expected


@pytest.mark.parametrize(
    ("pattern", "path", "expected"),
    [
        ("/data", "/data", True),
        ("/data", "/data/", False),
        ("/data", "/data?x=1", True),  # the query string is not part of the path
        ("/data", "/data#top", True),
        ("/data/*", "/data/a/b", True),
        ("/data/*", "/datum", False),
        ("*.html", "/a/b.html", True),
        ("*.html", "/a/b.htm", False),
        ("*", "/whatever", True),
        ("/api/{*}/items", "/api/v1/items", True),
        ("/api/{*}/items", "/api/v1/v2/items", False),  # one segment only
        ("/api/{*}/items", "/api//items", False),  # a segment is never empty
        ("/api/{**}", "/api/a/b/c", True),
        ("/api/{**}", "/api/", True),
        ("/api/{**}", "/other/a", False),
        ("/{*}/x/{**}", "/a/x/b/c", True),
        ("/{*}.txt", "/notes.txt", True),
    ],
)
def test_match_path(pattern: str, path: str, expected: bool):
    assert match_path(pattern, path) is expected


def test_principals_split_and_join():
    assert principal("m", "a") == "cluster.local/ns/m/sa/a"
    assert split_principal("cluster.local/ns/m/sa/a") == ("m", "a")
    assert split_principal("spiffe-less") is None
    assert split_principal(None) is None


def manifest(spec: dict[str, Any], name: str = "p", **metadata: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "m", **metadata}, "spec": spec}


def test_parse_a_beacon_policy_keeps_its_provenance():
    policy = parse_policy(
        manifest(
            {
                "targetRefs": [{"group": "", "kind": "Service", "name": "receiver"}],
                "rules": [
                    {
                        "from": [{"source": {"principals": [ME]}}],
                        "to": [{"operation": {"ports": ["8080"], "methods": ["GET"]}}],
                    }
                ],
            },
            labels={MANAGED_BY: OWNER},
            annotations={REQUESTED_BY: "receiver", RELATION_ID: "7"},
        ),
        OWNER,
    )
    assert policy == AuthzPolicy(
        name="p",
        namespace="m",
        action="ALLOW",
        target_refs=(TargetRef("Service", "receiver"),),
        rules=(
            Rule(
                sources=(Source(principals=(ME,)),),
                operations=(Operation(ports=("8080",), methods=("GET",)),),
            ),
        ),
        owned=True,
        provenance=Provenance("receiver", 7),
    )
    assert not policy.foreign


@pytest.mark.parametrize(
    ("labels", "owned"),
    [({MANAGED_BY: OWNER}, True), ({MANAGED_BY: "m.other-beacon"}, False), ({}, False)],
)
def test_ownership_is_this_beacons_label(labels: dict[str, str], owned: bool):
    policy = parse_policy(manifest({"rules": [{}]}, labels=labels), OWNER)
    assert policy.owned is owned
    assert ("not made by the beacon" in policy.describe()) is not owned


def test_parse_reads_every_field_and_the_legacy_target_ref():
    policy = parse_policy(
        manifest(
            {
                "action": "DENY",
                "selector": {"matchLabels": {"app": "x"}},
                "targetRef": {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "name": "w",
                },
                "rules": [
                    {
                        "from": [
                            {
                                "source": {
                                    "notPrincipals": ["a"],
                                    "namespaces": ["n"],
                                    "notNamespaces": ["o"],
                                    "serviceAccounts": ["s"],
                                    "notServiceAccounts": ["t"],
                                    "ipBlocks": ["10.0.0.0/8"],
                                    "requestPrincipals": ["*"],
                                }
                            }
                        ],
                        "to": [{"operation": {"notPorts": ["1"], "notPaths": ["/x"]}}],
                        "when": [{"key": "source.namespace", "notValues": ["z"]}],
                    }
                ],
            }
        ),
        OWNER,
    )
    assert policy.action == "DENY"
    assert policy.selector == {"app": "x"}
    assert policy.target_refs == (TargetRef("Gateway", "w", "gateway.networking.k8s.io"),)
    (rule,) = policy.rules
    assert rule.sources == (
        Source(
            not_principals=("a",),
            namespaces=("n",),
            not_namespaces=("o",),
            service_accounts=("s",),
            not_service_accounts=("t",),
            unmodelled=("ipBlocks", "requestPrincipals"),
        ),
    )
    assert rule.operations == (Operation(not_ports=("1",), not_paths=("/x",)),)
    assert rule.conditions == (Condition("source.namespace", (), ("z",)),)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("not a map", "spec is not an object"),
        ({"rules": {"a": 1}}, "spec.rules is not a list"),
        ({"rules": ["x"]}, "spec.rules[0] is not an object"),
        ({"rules": [{"to": [{"operation": {"ports": [8080]}}]}]}, "ports is not a list of str"),
        ({"rules": [{"when": [{"key": 3}]}]}, "when[0].key is not a string"),
        ({"action": "MAYBE"}, "is not one Istio knows"),
        ({"selector": {"matchLabels": {"a": 1}}}, "matchLabels has a value"),
        ({"targetRefs": [{"kind": 5}]}, "targetRefs[0] has a field"),
    ],
)
def test_a_malformed_policy_is_reported_not_guessed(spec: Any, problem: str):
    policy = parse_policy(manifest(spec), OWNER)
    assert problem in policy.problem
    decision, _, _, notes = evaluate_point([policy], Attributes(ME, 80), Point.waypoint)
    assert decision is Decision.allow  # set aside: nothing else applies
    assert any("cannot be read" in note for note in notes)


# ------------------------------------------------------------------------------------------
# One enforcement point: (policies, what the request carries, point) -> decision
# ------------------------------------------------------------------------------------------


def allow(*rules: dict[str, Any], action: str = "ALLOW", name: str = "p") -> AuthzPolicy:
    return parse_policy(manifest({"action": action, "rules": list(rules)}, name=name), OWNER)


def deny(*rules: dict[str, Any], name: str = "d") -> AuthzPolicy:
    return allow(*rules, action="DENY", name=name)


def frm(**source: Any) -> dict[str, Any]:
    return {"from": [{"source": source}]}


def to(**operation: Any) -> dict[str, Any]:
    return {"to": [{"operation": operation}]}


def when(key: str, values: list[str] | None = None, not_values: list[str] | None = None):
    condition: dict[str, Any] = {"key": key}
    if values is not None:
        condition["values"] = values
    if not_values is not None:
        condition["notValues"] = not_values
    return {"when": [condition]}


GET = Attributes(ME, 8080, "GET", "/data/x", "receiver.example.com")
W, Z = Point.waypoint, Point.ztunnel
A, D, U = Decision.allow, Decision.deny, Decision.unknown
OTHER = principal("other-model", "sender")

CASES: list[tuple[str, list[AuthzPolicy], Attributes, Point, Decision]] = [
    ("no policy: allowed", [], GET, W, A),
    ("an ALLOW policy with an empty rule allows all", [allow({})], GET, W, A),
    ("an ALLOW policy without rules allows nothing", [allow()], GET, W, D),
    ("a DENY policy without rules denies nothing", [deny()], GET, W, A),
    ("DENY beats ALLOW", [allow({}), deny({})], GET, Z, D),
    ("AUDIT does not decide", [allow({}, action="AUDIT")], GET, W, A),
    ("CUSTOM at the waypoint: unknown", [allow({}, action="CUSTOM")], GET, W, U),
    ("CUSTOM whose rule misses is not asked", [allow(to(ports=["1"]), action="CUSTOM")], GET,
     W, A),
    ("CUSTOM at ztunnel is ignored", [allow({}, action="CUSTOM")], GET, Z, A),
    ("principal exact", [allow(frm(principals=[ME]))], GET, Z, A),
    ("principal other", [allow(frm(principals=[OTHER]))], GET, Z, D),
    ("principal prefix", [allow(frm(principals=["cluster.local/ns/m/*"]))], GET, Z, A),
    ("principal suffix", [allow(frm(principals=["*/sa/sender"]))], GET, Z, A),
    ("principal presence", [allow(frm(principals=["*"]))], GET, Z, A),
    ("notPrincipals excludes", [allow(frm(notPrincipals=[ME]))], GET, Z, D),
    ("notPrincipals lets others in", [allow(frm(notPrincipals=[OTHER]))], GET, Z, A),
    ("namespaces", [allow(frm(namespaces=["m"]))], GET, Z, A),
    ("namespaces wildcard", [allow(frm(namespaces=["other-*"]))], GET, Z, D),
    ("notNamespaces", [allow(frm(notNamespaces=["m"]))], GET, Z, D),
    ("serviceAccounts, policy namespace", [allow(frm(serviceAccounts=["sender"]))], GET, Z, A),
    ("serviceAccounts, other ns", [allow(frm(serviceAccounts=["other-model/sender"]))], GET,
     Z, D),
    ("notServiceAccounts", [allow(frm(notServiceAccounts=["m/sender"]))], GET, Z, D),
    ("fields in one source are ANDed",
     [allow(frm(principals=[ME], namespaces=["other"]))], GET, Z, D),
    ("sources are ORed",
     [allow({"from": [{"source": {"principals": [OTHER]}}, {"source": {"principals": [ME]}}]})],
     GET, Z, A),
    ("ports are strings", [allow(to(ports=["8080"]))], GET, Z, A),
    ("another port", [allow(to(ports=["8081"]))], GET, Z, D),
    ("notPorts", [allow(to(notPorts=["8080"]))], GET, Z, D),
    ("a port that is not a number: unknown", [allow(to(ports=["http"]))], GET, Z, U),
    ("methods", [allow(to(methods=["GET"]))], GET, W, A),
    ("methods are case-sensitive", [allow(to(methods=["get"]))], GET, W, D),
    ("notMethods", [allow(to(notMethods=["GET"]))], GET, W, D),
    ("paths prefix", [allow(to(paths=["/data/*"]))], GET, W, A),
    ("paths template", [allow(to(paths=["/data/{*}"]))], GET, W, A),
    ("notPaths", [allow(to(notPaths=["/data/*"]))], GET, W, D),
    ("hosts ignore case", [allow(to(hosts=["RECEIVER.example.com"]))], GET, W, A),
    ("hosts suffix", [allow(to(hosts=["*.example.com"]))], GET, W, A),
    ("notHosts", [allow(to(notHosts=["*.example.com"]))], GET, W, D),
    ("operations are ORed",
     [allow({"to": [{"operation": {"ports": ["1"]}}, {"operation": {"ports": ["8080"]}}]})],
     GET, W, A),
    ("from and to are ANDed", [allow({**frm(principals=[ME]), **to(ports=["1"])})], GET, W, D),
    ("rules are ORed", [allow(to(ports=["1"]), frm(principals=[ME]))], GET, W, A),
    ("a method not given: unknown", [allow(to(methods=["GET"]))], Attributes(ME, 8080), W, U),
    ("a DENY on a method not given: unknown", [allow({}), deny(to(methods=["POST"]))],
     Attributes(ME, 8080), W, U),
    ("when source.namespace", [allow(when("source.namespace", ["m"]))], GET, W, A),
    ("when source.principal notValues", [allow(when("source.principal", None, [ME]))], GET,
     W, D),
    ("when destination.port", [allow(when("destination.port", ["8080"]))], GET, Z, A),
    ("when on a header: unknown at the waypoint",
     [allow(when("request.headers[x-user]", ["a"]))], GET, W, U),
    ("ipBlocks: unknown", [allow(frm(ipBlocks=["10.0.0.0/8"]))], GET, Z, U),
    ("when source.ip at ztunnel: unknown", [allow(when("source.ip", ["10.0.0.1"]))], GET, Z, U),
    # ztunnel: HTTP parts make an ALLOW rule drop, and a DENY rule deny without them.
    ("ALLOW with methods drops at ztunnel", [allow(to(methods=["GET"]))], GET, Z, D),
    ("ALLOW with a header condition drops at ztunnel",
     [allow(when("request.headers[x]", ["a"]))], GET, Z, D),
    ("ALLOW with requestPrincipals drops at ztunnel", [allow(frm(requestPrincipals=["*"]))],
     GET, Z, D),
    ("the other rules of that policy still count",
     [allow(to(methods=["GET"]), frm(principals=[ME]))], GET, Z, A),
    ("DENY with methods denies every method at ztunnel",
     [allow({}), deny(to(methods=["POST"]))], GET, Z, D),
    ("DENY keeps its ports at ztunnel",
     [allow({}), deny(to(methods=["POST"], ports=["9999"]))], GET, Z, A),
    ("DENY with a header condition denies at ztunnel",
     [allow({}), deny(when("request.headers[x]", ["a"]))], GET, Z, D),
    # A caller without an identity (not on the mesh).
    ("no identity: principals miss", [allow(frm(principals=["*"]))], Attributes(None, 8080), Z,
     D),
    ("no identity: notPrincipals match", [allow(frm(notPrincipals=[ME]))],
     Attributes(None, 8080), Z, A),
    ("no identity: namespaces miss", [allow(frm(namespaces=["*"]))], Attributes(None, 8080), Z,
     D),
]  # fmt: skip


@pytest.mark.parametrize(
    ("policies", "attrs", "point", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_one_enforcement_point(
    policies: list[AuthzPolicy], attrs: Attributes, point: Point, expected: Decision
):
    decision, reason, _, _ = evaluate_point(policies, attrs, point)
    assert decision is expected, reason


def test_the_deciding_policy_and_reason_are_named():
    decision, reason, policy, _ = evaluate_point(
        [allow({}, name="open"), deny(frm(principals=[ME]), name="no-sender")], GET, Z
    )
    assert decision is Decision.deny
    assert policy is not None
    assert policy.name == "no-sender"
    assert reason == "AuthorizationPolicy no-sender (not made by the beacon) denies it"


def test_an_unknown_names_what_cannot_be_evaluated():
    decision, reason, _, _ = evaluate_point([allow(frm(ipBlocks=["1.2.3.4"]))], GET, Z)
    assert decision is Decision.unknown
    assert "from.source.ipBlocks" in reason
    _, reason, _, _ = evaluate_point([allow(to(paths=["/a"]))], Attributes(ME, 80), W)
    assert "give path= to decide" in reason
