"""Scaling: the waypoint follows the beacon's units; peers talk only with `peer-communication`.

The waypoint's HPA keeps min = max = the beacon's unit count, and a scaled tester reaches its
sibling's pod only while `peer-communication` is on.

`peer` runs two units; `sender` is related to `peer:inbound-unit`, so the peer pods are always
selected by some ALLOW policy (otherwise, with no policy at all, nothing would be refused and the
peer check could not fail).
"""

from __future__ import annotations

import jubilant
import lightkube
import mesh_cluster
import pytest
from mesh_deploy import (
    BEACON,
    DEPLOY_TIMEOUT,
    Charms,
    Models,
    PersistentError,
    deploy_beacon,
    deploy_tester,
    join_mesh,
    model_name,
    pod_host,
    set_config,
    wait_active,
)
from mesh_probe import ALLOWED, REFUSED, Case, assert_traffic, case, eventually

PEER = "peer"
SENDER = "sender"
SCALE_TIMEOUT = 600.0


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    juju = models.new("scaling")
    deploy_beacon(juju, charms)
    deploy_tester(juju, charms, PEER, num_units=2)
    deploy_tester(juju, charms, SENDER)
    join_mesh(juju, PEER, SENDER)
    juju.integrate(f"{SENDER}:outbound", f"{PEER}:inbound-unit")
    wait_active(juju, BEACON, PEER, SENDER, timeout=DEPLOY_TIMEOUT)
    return juju


def _scale(juju: jubilant.Juju, app: str, units: int) -> None:
    current = len(juju.status().apps[app].units)
    if units > current:
        juju.add_unit(app, num_units=units - current)
    elif units < current:
        juju.remove_unit(app, num_units=current - units)
    juju.wait(
        lambda status: (
            len(status.apps[app].units) == units
            and jubilant.all_active(status, app)
            and jubilant.all_agents_idle(status, app)
        ),
        error=PersistentError(app),
        timeout=SCALE_TIMEOUT,
    )


def _assert_waypoint_replicas(kube: lightkube.Client, model: str, replicas: int) -> None:
    name = mesh_cluster.waypoint_name(model, BEACON)
    hpa = mesh_cluster.hpa_or_none(kube, name, model)
    assert hpa is not None, f"no HorizontalPodAutoscaler {name}"
    assert hpa.spec is not None
    assert (hpa.spec.minReplicas, hpa.spec.maxReplicas) == (replicas, replicas)
    ready = mesh_cluster.deployment_ready_replicas(kube, name, model)
    assert ready == replicas, f"waypoint {name}: {ready} ready replicas, want {replicas}"


@pytest.mark.parametrize("units", [2, 3, 1])
def test_waypoint_follows_beacon_units(
    juju: jubilant.Juju, kube: lightkube.Client, units: int
) -> None:
    model = model_name(juju)
    _scale(juju, BEACON, units)
    eventually(
        lambda: _assert_waypoint_replicas(kube, model, units),
        timeout=SCALE_TIMEOUT,
        what=f"waypoint at {units} replicas",
    )


def _peer_cases(model: str, *, peers_allowed: bool) -> list[Case]:
    sibling = f"http://{pod_host(PEER, model, unit=1)}:8080/foo"
    return [
        case(f"{PEER}/0", sibling, ALLOWED if peers_allowed else REFUSED),
        # Control: the unit policy on inbound-unit keeps working either way.
        case(f"{SENDER}/0", sibling, ALLOWED),
    ]


def test_peer_communication_follows_config(juju: jubilant.Juju) -> None:
    for peer_communication in (True, False, True):
        set_config(juju, PEER, {"peer-communication": peer_communication}, BEACON)
        assert_traffic(
            juju,
            _peer_cases(model_name(juju), peers_allowed=peer_communication),
            what=f"peer traffic with peer-communication={peer_communication}",
        )
