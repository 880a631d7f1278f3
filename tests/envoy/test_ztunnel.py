"""The L4 rows (pod addresses, enforced by ztunnel), asserted on istiod's translation for ztunnel.

No ztunnel runs here: what is checked is the Authorization istiod would send it (tools/istio-check
runs istiod's ambient policy pipeline), read with ztunnel's documented semantics: a policy applies
to the pods its selector matches; a connection is allowed when no ALLOW policy applies, or when
every rule set of one group of one ALLOW policy has a matching entry. istiod's implicit policy that
lets the waypoint itself through is not part of this; the beacon's own waypoint-access policy is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from beacon_path import BEACON, MODEL_OPERATOR_SELECTOR, beacon_manifests
from support.istio_check import IstioCheck
from traffic_scenario import (
    IMPOSTOR,
    MODEL,
    REMOTE_A,
    REMOTE_B,
    SENDER1,
    SENDER2,
    SENDER3,
    SERVICES,
    consumers,
)
from waypoint import waypoint_name

WAYPOINT = f"spiffe://cluster.local/ns/{MODEL}/sa/{waypoint_name(MODEL, BEACON)}"


@dataclass(frozen=True)
class ZtunnelPolicy:
    """One policy as ztunnel holds it: the pods it selects and istiod's Authorization."""

    name: str
    namespace: str
    selector: Mapping[str, str]
    authorization: Mapping[str, Any]


def _string_matches(matcher: Mapping[str, Any], value: str) -> bool:
    if "exact" in matcher:
        return value == matcher["exact"]
    if "prefix" in matcher:
        return value.startswith(matcher["prefix"])
    if "suffix" in matcher:
        return value.endswith(matcher["suffix"])
    if "presence" in matcher:
        return bool(value)
    raise AssertionError(f"unknown string match {matcher!r}")


def _match(match: Mapping[str, Any], principal: str, port: int) -> bool:
    identity = principal.removeprefix("spiffe://")
    known = {"destinationPorts", "notDestinationPorts", "principals", "notPrincipals"}
    assert set(match) <= known, f"ztunnel match with fields beyond ports and principals: {match}"
    if "destinationPorts" in match and port not in match["destinationPorts"]:
        return False
    if port in match.get("notDestinationPorts", []):
        return False
    if "principals" in match and not any(
        _string_matches(m, identity) for m in match["principals"]
    ):
        return False
    return not any(_string_matches(m, identity) for m in match.get("notPrincipals", []))


def ztunnel_allows(
    policies: Sequence[ZtunnelPolicy],
    namespace: str,
    pod_labels: Mapping[str, str],
    principal: str,
    port: int,
) -> bool:
    """Whether ztunnel lets ``principal`` connect to ``port`` of a pod with ``pod_labels``."""
    applying = [
        p
        for p in policies
        if p.namespace == namespace and all(pod_labels.get(k) == v for k, v in p.selector.items())
    ]
    assert all(p.authorization.get("action", "ALLOW") == "ALLOW" for p in applying)
    if not applying:
        return True
    return any(
        all(
            any(_match(match, principal, port) for match in rules["matches"])
            for rules in group.get("rules", [])
        )
        for p in applying
        for group in p.authorization.get("groups", [])
    )


@pytest.fixture(scope="module")
def ztunnel(istio: IstioCheck) -> list[ZtunnelPolicy]:
    manifests, refusals = beacon_manifests(MODEL, consumers(), SERVICES)
    assert refusals == []
    verdicts = istio.check(manifests)
    result: list[ZtunnelPolicy] = []
    for manifest, verdict in zip(manifests, verdicts["objects"], strict=True):
        assert verdict["name"] == manifest["metadata"]["name"]
        z = verdict["ztunnel"]
        if "targetRefs" in manifest["spec"]:
            assert z["applies"] is False  # waypoint policies never reach ztunnel
            continue
        assert z["applies"] is True
        assert z["status"] is None, z["status"]
        assert (z["dropped_rules"], z["deny_all"], z["namespace_wide"]) == (0, False, False)
        selector = manifest["spec"]["selector"]["matchLabels"]
        result.append(
            ZtunnelPolicy(verdict["name"], verdict["namespace"], selector, z["authorization"])
        )
    return result


def test_the_unit_policy_becomes_ports_and_principal(ztunnel: list[ZtunnelPolicy]):
    receiver1 = [p for p in ztunnel if p.selector == {"app.kubernetes.io/name": "receiver1"}]
    assert len(receiver1) == 2  # the unit policy, and the waypoint's access to the pods
    unit = [p for p in receiver1 if p.name.startswith("receiver1-unit-from-sender2-")]
    assert len(unit) == 1
    assert unit[0].authorization["groups"] == [
        {
            "rules": [
                {"matches": [{"destinationPorts": [8080, 8081]}]},
                {"matches": [{"principals": [{"exact": f"cluster.local/ns/{MODEL}/sa/sender2"}]}]},
            ]
        }
    ]


def test_the_model_operator_stays_reachable_by_anyone(ztunnel: list[ZtunnelPolicy]):
    pod = {**MODEL_OPERATOR_SELECTOR, "app.kubernetes.io/name": "modeloperator"}
    for who in (SENDER1, SENDER3, REMOTE_A):
        assert ztunnel_allows(ztunnel, MODEL, pod, who, 17071)


RECEIVER1_POD = {
    "app.kubernetes.io/name": "receiver1",
    "statefulset.kubernetes.io/pod-name": "receiver1-0",
}

L4_ROWS = [
    (WAYPOINT, 8080, True),  # the waypoint forwards what it allowed through the Service
    (WAYPOINT, 8083, True),
    (SENDER2, 8080, True),  # GET and DELETE alike: ztunnel sees a connection, not a request
    (SENDER2, 8081, True),
    (SENDER2, 8083, False),
    (SENDER1, 8080, False),  # allowed through the Service only
    (SENDER3, 8080, False),
    (REMOTE_A, 8080, False),
    (IMPOSTOR, 8080, False),
]


@pytest.mark.parametrize(
    ("sender", "port", "allowed"),
    L4_ROWS,
    ids=[f"{s.split('/ns/')[1]}:{p}->{'allowed' if a else 'refused'}" for s, p, a in L4_ROWS],
)
def test_pod_rows(ztunnel: list[ZtunnelPolicy], sender: str, port: int, allowed: bool):
    assert ztunnel_allows(ztunnel, MODEL, RECEIVER1_POD, sender, port) is allowed


def test_pods_behind_an_app_policy_only_take_the_waypoint(ztunnel: list[ZtunnelPolicy]):
    pod = {"app.kubernetes.io/name": "receiver2"}
    assert ztunnel_allows(ztunnel, MODEL, pod, WAYPOINT, 8080)
    for sender in (SENDER1, SENDER3, REMOTE_B):
        assert not ztunnel_allows(ztunnel, MODEL, pod, sender, 8080)


def test_a_pod_nothing_selects_is_not_restricted_by_these_policies(ztunnel: list[ZtunnelPolicy]):
    assert ztunnel_allows(ztunnel, MODEL, {"app.kubernetes.io/name": "bystander"}, SENDER3, 8080)
