"""Real Envoy enforces the RBAC istiod builds for the waypoint, row by row of the traffic matrix.

The policies come from the charms' declarations through the library and the beacon (the
production path); istiod's code builds each Service's RBAC filter (tools/istio-check); Envoy
listens on each Service port with mTLS in front of a real backend; each sender presents a SPIFFE
certificate. Allowed: the backend's 200. Denied: Envoy's 403.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from beacon_path import BEACON, beacon_manifests
from support.envoy_waypoint import (
    PEER_PRINCIPAL_KEY,
    Waypoint,
    adapt_for_upstream_envoy,
    run_waypoint,
)
from support.istio_check import IstioCheck, problems
from traffic_scenario import MODEL, SENDER1, SERVICE_PORTS, SERVICES, WAYPOINT_ROWS, Row, consumers
from waypoint import waypoint_name


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    built, refusals = beacon_manifests(MODEL, consumers(), SERVICES)
    assert refusals == []
    return built


@pytest.fixture(scope="module")
def rbac(istio: IstioCheck, manifests: list[dict[str, Any]]) -> dict[str, Any]:
    # The waypoint the beacon runs for the model (its Gateway's name, in the model's namespace).
    name = waypoint_name(MODEL, BEACON)
    answer = istio.waypoint(manifests, services=sorted(SERVICE_PORTS), waypoint=name)
    assert {entry["waypoint"] for entry in answer["services"]} == {f"{MODEL}/{name}"}
    return answer


@pytest.fixture(scope="module")
def waypoint(rbac: dict[str, Any]) -> Iterator[Waypoint]:
    with run_waypoint(rbac, SERVICE_PORTS) as running:
        yield running


def test_the_scenario_passes_istio_cleanly(istio: IstioCheck, manifests: list[dict[str, Any]]):
    verdicts = istio.check(manifests)
    assert [p for v in verdicts["objects"] for p in problems(v)] == []


def test_each_service_gets_its_own_policies_and_the_bystander_none(rbac: dict[str, Any]):
    attached = {entry["service"]: entry["policies"] for entry in rbac["services"]}
    # One app policy per related app; receiver1's unit policy is for ztunnel, not the waypoint.
    assert len(attached[f"{MODEL}/receiver1"]) == 2
    assert len(attached[f"{MODEL}/receiver2"]) == 2
    assert len(attached[f"{MODEL}/receiver3-api"]) == 2
    assert attached[f"{MODEL}/bystander"] == []
    for entry in rbac["services"]:
        assert len(entry["http_filters"]) == (1 if entry["policies"] else 0)


def test_only_the_peer_principal_is_substituted(rbac: dict[str, Any], waypoint: Waypoint):
    for entry in rbac["services"]:
        for http_filter in entry["http_filters"]:
            adapted, count = adapt_for_upstream_envoy(http_filter)
            assert count > 0
            assert PEER_PRINCIPAL_KEY not in str(adapted)
            assert "filterState" not in str(adapted)
    assert waypoint.substitutions[f"{MODEL}/bystander"] == 0
    # receiver1: sender1 and sender-a, one principal in each of its two policies.
    assert waypoint.substitutions[f"{MODEL}/receiver1"] == 2


@pytest.mark.parametrize("row", WAYPOINT_ROWS, ids=[row.id for row in WAYPOINT_ROWS])
def test_waypoint_row(waypoint: Waypoint, row: Row):
    reply = waypoint.request(
        row.sender, f"{MODEL}/{row.service}", row.port, row.method, row.path, row.host
    )
    assert reply.status == row.expected, reply.body
    if row.expected == 200:
        assert reply.from_backend
    else:
        assert reply.body == "RBAC: access denied"


def test_every_service_port_is_exercised():
    seen = {(f"{MODEL}/{row.service}", row.port) for row in WAYPOINT_ROWS}
    wanted = {(service, port) for service, ports in SERVICE_PORTS.items() for port in ports}
    assert wanted - seen == set()


def _hand_made(name: str, paths: list[str]) -> dict[str, Any]:
    """An app policy for receiver1 from sender1 with paths the library would refuse."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": MODEL},
        "spec": {
            "targetRefs": [{"group": "", "kind": "Service", "name": "receiver1"}],
            "rules": [
                {
                    "from": [{"source": {"principals": [f"cluster.local/ns/{MODEL}/sa/sender1"]}}],
                    "to": [{"operation": {"ports": ["8080"], "paths": paths}}],
                }
            ],
        },
    }


def test_paths_the_library_refuses_as_never_matching_really_never_match(istio: IstioCheck):
    manifests = [_hand_made("never", ["foo", "/a/*/b", "/c/./d", "/%7Euser"])]
    assert [p for v in istio.check(manifests)["objects"] for p in problems(v)] == []
    rbac = istio.waypoint(manifests)
    with run_waypoint(rbac, {f"{MODEL}/receiver1": [8080]}) as running:

        def status(path: str) -> int:
            return running.request(SENDER1, f"{MODEL}/receiver1", 8080, "GET", path).status

        assert status("/foo") == 403  # "foo": no request path lacks the leading '/'...
        assert status("foo") == 400  # ...and Envoy refuses one that does
        assert status("/a/x/b") == 403  # "/a/*/b" is no wildcard...
        assert status("/a/*/b") == 200  # ...only the literal text matches
        assert status("/c/d") == 403  # "/c/./d" can never match: Envoy normalizes first
        assert status("/c/./d") == 403
        assert status("/~user") == 403  # "/%7Euser": Envoy decodes "%7E" before RBAC
        assert status("/%7Euser") == 403
