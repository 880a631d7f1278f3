"""Removing the beacon cleans up everything it created.

Two rounds in one model: a beacon with the model off the mesh (consumer labels, app and unit
policies), then a beacon with the model on the mesh (namespace labels, model-operator policy).
After each removal: no waypoint Gateway, HPA or waypoint Deployment, no AuthorizationPolicy, no
mesh label on the namespace or on the consumer, no consumer pod captured by ambient any more, and
the consumer keeps running.
"""

from __future__ import annotations

import jubilant
import lightkube
import mesh_checks
import mesh_cluster
import pytest
from mesh_deploy import (
    DEPLOY_TIMEOUT,
    Charms,
    Models,
    deploy_beacon,
    deploy_tester,
    join_mesh,
    model_name,
    wait_active,
)
from mesh_probe import eventually

RECEIVER = "receiver"
SENDER = "sender"
APPS = (RECEIVER, SENDER)
CLEANUP_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    juju = models.new("removal")
    for app in APPS:
        deploy_tester(juju, charms, app)
    juju.integrate(f"{SENDER}:outbound", f"{RECEIVER}:inbound")
    wait_active(juju, *APPS, timeout=DEPLOY_TIMEOUT)
    return juju


def _assert_created(kube: lightkube.Client, model: str, beacon: str, *, on_mesh: bool) -> None:
    mesh_checks.assert_waypoint_gateway(kube, model, beacon)
    mesh_checks.assert_waypoint_autoscaler(kube, model, beacon, replicas=1)
    mesh_checks.assert_policies_for_target(
        kube, model, beacon, RECEIVER, allowed=[mesh_cluster.principal(model, SENDER)]
    )
    if on_mesh:
        expected = mesh_cluster.expected_namespace_labels(model, beacon)
        mesh_checks.assert_namespace_mesh_labels(kube, model, expected)
        mesh_checks.assert_model_operator_off_the_waypoint(kube, model)
    else:
        published = mesh_cluster.expected_consumer_labels(model, beacon)
        mesh_checks.assert_consumer_mesh_labels(kube, model, RECEIVER, published)
    for app in APPS:
        mesh_cluster.assert_captured(kube, model, app)


def _assert_cleaned_up(kube: lightkube.Client, model: str, beacon: str) -> None:
    waypoint = mesh_cluster.waypoint_name(model, beacon)
    assert mesh_cluster.get_or_none(kube, mesh_cluster.Gateway, waypoint, model) is None
    assert mesh_cluster.hpa_or_none(kube, waypoint, model) is None
    assert mesh_cluster.deployment_ready_replicas(kube, waypoint, model) == 0
    remaining = mesh_cluster.authorization_policies(kube, model)
    assert remaining == [], [mesh_cluster.policy_summary(p) for p in remaining]
    namespace = mesh_cluster.mesh_labels_of(mesh_cluster.namespace_labels(kube, model))
    assert namespace == {}, f"namespace still labelled: {namespace}"
    for app in APPS:
        template = mesh_cluster.mesh_labels_of(mesh_cluster.pod_template_labels(kube, app, model))
        service = mesh_cluster.mesh_labels_of(mesh_cluster.service_labels(kube, app, model))
        assert (template, service) == ({}, {}), f"{app} still labelled: {template} {service}"
        mesh_cluster.assert_captured(kube, model, app, captured=False)


@pytest.mark.parametrize(
    ("beacon", "model_on_mesh"),
    [("beacon-a", False), ("beacon-b", True)],
    ids=["model-off-mesh", "model-on-mesh"],
)
def test_removing_the_beacon_cleans_up(
    juju: jubilant.Juju,
    kube: lightkube.Client,
    charms: Charms,
    beacon: str,
    model_on_mesh: bool,
) -> None:
    model = model_name(juju)
    deploy_beacon(juju, charms, beacon, config={"model-on-mesh": model_on_mesh})
    join_mesh(juju, *APPS, beacon=beacon)
    wait_active(juju, beacon, *APPS, timeout=DEPLOY_TIMEOUT)
    eventually(
        lambda: _assert_created(kube, model, beacon, on_mesh=model_on_mesh),
        timeout=CLEANUP_TIMEOUT,
        what=f"{beacon} created its resources",
    )

    juju.remove_application(beacon)
    juju.wait(lambda status: beacon not in status.apps, timeout=CLEANUP_TIMEOUT)
    eventually(
        lambda: _assert_cleaned_up(kube, model, beacon),
        timeout=CLEANUP_TIMEOUT,
        what=f"{beacon} cleaned up after removal",
    )
    wait_active(juju, *APPS)
