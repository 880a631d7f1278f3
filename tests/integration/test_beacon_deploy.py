"""The beacon deploys trusted, becomes active, puts itself on the mesh and creates its waypoint."""

from __future__ import annotations

import jubilant
import lightkube
import mesh_checks
import mesh_cluster
import pytest
from mesh_deploy import (
    BEACON,
    DEPLOY_TIMEOUT,
    Charms,
    Models,
    deploy_beacon,
    model_name,
    wait_active,
)
from mesh_probe import eventually


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio  # deployed first: the beacon needs Istio's CRDs and gateway class
    juju = models.new("beacon")
    deploy_beacon(juju, charms)
    return juju


def test_beacon_becomes_active(juju: jubilant.Juju) -> None:
    wait_active(juju, BEACON, timeout=DEPLOY_TIMEOUT)
    status = juju.status()
    assert status.apps[BEACON].charm_name == "istio-beacon-k8s"


def test_beacon_is_itself_on_the_mesh(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    model = model_name(juju)
    expected = mesh_cluster.expected_consumer_labels(model, BEACON)

    def on_mesh() -> None:
        mesh_checks.assert_consumer_mesh_labels(kube, model, BEACON, expected)
        # Labelled is not enough: the restarted pod must really be captured by ambient.
        mesh_cluster.assert_captured(kube, model, BEACON)

    eventually(on_mesh, timeout=300, what="beacon's own pods and Service on the mesh")


def test_waypoint_gateway(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    mesh_checks.assert_waypoint_gateway(kube, model_name(juju), BEACON)


def test_waypoint_runs_with_one_replica_per_beacon_unit(
    juju: jubilant.Juju, kube: lightkube.Client
) -> None:
    model = model_name(juju)
    mesh_checks.assert_waypoint_autoscaler(kube, model, BEACON, replicas=1)
    name = mesh_cluster.waypoint_name(model, BEACON)
    eventually(
        lambda: _assert_equal(mesh_cluster.deployment_ready_replicas(kube, name, model), 1),
        timeout=300,
        what="waypoint Deployment ready",
    )


def _assert_equal(actual: object, expected: object) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"
