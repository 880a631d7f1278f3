"""The beacon deploys trusted, becomes active, puts itself on the mesh and creates its waypoint."""

from __future__ import annotations

import jubilant
import lightkube
import mesh_cluster
import pytest
from mesh_deploy import BEACON, Charms, Models, deploy_beacon, model_name, wait_active
from mesh_probe import eventually


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio  # deployed first: the beacon needs Istio's CRDs and gateway class
    juju = models.new("beacon")
    deploy_beacon(juju, charms)
    return juju


def test_beacon_becomes_active(juju: jubilant.Juju) -> None:
    wait_active(juju, BEACON)
    status = juju.status()
    assert status.apps[BEACON].charm_name == "istio-beacon-k8s"


def test_beacon_is_itself_on_the_mesh(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    model = model_name(juju)

    expected = mesh_cluster.expected_consumer_labels(model, BEACON)

    def on_mesh() -> None:
        template = mesh_cluster.pod_template_labels(kube, BEACON, model)
        service = mesh_cluster.service_labels(kube, BEACON, model)
        on_pods, on_service = (
            mesh_cluster.on_pod_template(expected),
            mesh_cluster.on_service(expected),
        )
        assert mesh_cluster.mesh_labels_of(template) == on_pods, f"pod template: {template}"
        assert mesh_cluster.mesh_labels_of(service) == on_service, f"Service: {service}"
        # Labelled is not enough: the restarted pod must really be captured by ambient.
        mesh_cluster.assert_captured(kube, model, BEACON)

    eventually(on_mesh, timeout=300, what="beacon's own pods and Service on the mesh")


def test_waypoint_gateway(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    model = model_name(juju)
    name = mesh_cluster.waypoint_name(model, BEACON)
    gateway = mesh_cluster.get_or_none(kube, mesh_cluster.Gateway, name, model)
    assert gateway is not None, f"no Gateway {name} in {model}"
    labels = mesh_cluster.labels_of(gateway)
    assert labels.get("istio.io/waypoint-for") == "service", labels
    assert labels.get(mesh_cluster.MANAGED_BY) == mesh_cluster.owner(model, BEACON), labels
    spec = gateway["spec"]
    assert spec["gatewayClassName"] == "istio-waypoint"
    listeners = spec["listeners"]
    assert len(listeners) == 1
    listener = listeners[0]
    assert (listener["name"], listener["port"], listener["protocol"]) == ("mesh", 15008, "HBONE")
    assert listener["allowedRoutes"]["namespaces"]["from"] == "All"


def test_waypoint_runs_with_one_replica_per_beacon_unit(
    juju: jubilant.Juju, kube: lightkube.Client
) -> None:
    model = model_name(juju)
    name = mesh_cluster.waypoint_name(model, BEACON)
    hpa = mesh_cluster.hpa_or_none(kube, name, model)
    assert hpa is not None, f"no HorizontalPodAutoscaler {name}"
    assert hpa.spec is not None
    owner = mesh_cluster.labels_of(hpa).get(mesh_cluster.MANAGED_BY)
    assert owner == mesh_cluster.owner(model, BEACON)
    assert (hpa.spec.minReplicas, hpa.spec.maxReplicas) == (1, 1)
    target = hpa.spec.scaleTargetRef
    assert (target.apiVersion, target.kind, target.name) == ("apps/v1", "Deployment", name)

    eventually(
        lambda: _assert_equal(mesh_cluster.deployment_ready_replicas(kube, name, model), 1),
        timeout=300,
        what="waypoint Deployment ready",
    )


def _assert_equal(actual: object, expected: object) -> None:
    assert actual == expected, f"{actual!r} != {expected!r}"
