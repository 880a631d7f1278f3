"""Switching the beacon's AuthorizationPolicies off and on; the model operator stays reachable.

`manage-authorization-policies=false` removes the beacon's policies and `true` restores them; while
the model is on the mesh, Juju's model operator stays reachable from another model.

The model is on the mesh here (namespace labels), with receiver1, sender1 related to its `inbound`
and sender3 related to nothing (not even the beacon: it is on the mesh through its namespace only);
`outsider` is a tester in another model, not on any mesh.
"""

from __future__ import annotations

import jubilant
import lightkube
import mesh_checks
import mesh_cluster
import pytest
from mesh_deploy import (
    BEACON,
    DEPLOY_TIMEOUT,
    RECEIVER,
    SENDER_APP,
    STRANGER,
    Charms,
    Models,
    deploy_beacon,
    deploy_tester,
    join_mesh,
    model_name,
    set_config,
    wait_active,
)
from mesh_probe import (
    ALLOWED,
    CONNECTED,
    FORBIDDEN,
    Case,
    assert_traffic,
    case,
    eventually,
    tcp_case,
)

APPS = (RECEIVER, SENDER_APP, STRANGER)
MEMBERS = (RECEIVER, SENDER_APP)
"""The apps related to the beacon; sender3 is not."""
OUTSIDER = "outsider"
POLICY_TIMEOUT = 180.0


@pytest.fixture(scope="module")
def juju(models: Models, istio: jubilant.Juju, charms: Charms) -> jubilant.Juju:
    del istio
    juju = models.new("policies")
    deploy_beacon(juju, charms, config={"model-on-mesh": True})
    for app in APPS:
        deploy_tester(juju, charms, app)
    join_mesh(juju, *MEMBERS)
    juju.integrate(f"{SENDER_APP}:outbound", f"{RECEIVER}:inbound")
    wait_active(juju, BEACON, *APPS, timeout=DEPLOY_TIMEOUT)
    return juju


@pytest.fixture(scope="module")
def outsider(models: Models, charms: Charms) -> jubilant.Juju:
    other = models.new("outside")
    deploy_tester(other, charms, OUTSIDER)
    wait_active(other, OUTSIDER, timeout=DEPLOY_TIMEOUT)
    return other


def _enforced(service: str) -> list[Case]:
    return [
        case(f"{SENDER_APP}/0", f"{service}:8080/foo", ALLOWED),
        case(f"{SENDER_APP}/0", f"{service}:8080/foo", FORBIDDEN, method="DELETE"),
        case(f"{STRANGER}/0", f"{service}:8080/foo", FORBIDDEN),
    ]


def _unenforced(service: str) -> list[Case]:
    return [
        case(f"{SENDER_APP}/0", f"{service}:8080/foo", ALLOWED),
        case(f"{SENDER_APP}/0", f"{service}:8080/foo", ALLOWED, method="DELETE"),
        case(f"{STRANGER}/0", f"{service}:8080/foo", ALLOWED),
    ]


def _assert_receiver_policies(kube: lightkube.Client, model: str, *, present: bool) -> None:
    if present:
        mesh_checks.assert_policies_for_target(
            kube,
            model,
            BEACON,
            RECEIVER,
            allowed=[mesh_cluster.principal(model, SENDER_APP)],
            refused=[mesh_cluster.principal(model, STRANGER)],
        )
        mesh_checks.assert_waypoint_hop(kube, model, BEACON, RECEIVER)
    else:
        mesh_checks.assert_no_policies_for(kube, model, BEACON, RECEIVER)


def test_policies_enforced_by_default(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    model = model_name(juju)
    eventually(
        lambda: _assert_receiver_policies(kube, model, present=True),
        timeout=POLICY_TIMEOUT,
        what="policies for receiver1 created",
    )
    assert_traffic(juju, _enforced(f"http://{RECEIVER}"), what="policies enforced")


def test_unmanaged_policies_are_removed(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"manage-authorization-policies": False}, *APPS)
    eventually(
        lambda: _assert_receiver_policies(kube, model, present=False),
        timeout=POLICY_TIMEOUT,
        what="policies for receiver1 removed",
    )
    # With no ALLOW policy selecting receiver1, nothing restricts its traffic any more.
    assert_traffic(juju, _unenforced(f"http://{RECEIVER}"), what="nothing enforced")


def test_managed_again_restores_policies(juju: jubilant.Juju, kube: lightkube.Client) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"manage-authorization-policies": True}, *APPS)
    eventually(
        lambda: _assert_receiver_policies(kube, model, present=True),
        timeout=POLICY_TIMEOUT,
        what="policies for receiver1 restored",
    )
    assert_traffic(juju, _enforced(f"http://{RECEIVER}"), what="policies enforced again")


def test_model_operator_reachable_from_another_model(
    juju: jubilant.Juju, outsider: jubilant.Juju, kube: lightkube.Client
) -> None:
    model = model_name(juju)
    set_config(juju, BEACON, {"model-on-mesh": True, "manage-authorization-policies": True})
    eventually(
        lambda: _assert_namespace_on_mesh(kube, model),
        timeout=POLICY_TIMEOUT,
        what="namespace on the mesh with a model-operator allow policy",
    )
    # The model operator serves TLS, so the probe only connects (tcp://): a connection that
    # ztunnel denied would be closed right after the connect; one let through stays open, the
    # server waiting for the TLS handshake.
    name, port = mesh_cluster.model_operator_endpoint(kube, model)
    host = f"{name}.{model}.svc.cluster.local"
    assert_traffic(
        outsider,
        [tcp_case(f"{OUTSIDER}/0", host, port, CONNECTED)],
        what="model operator reachable",
    )
    # And Juju itself still drives the model: a new unit comes up and settles.
    juju.add_unit(STRANGER)
    wait_active(juju, STRANGER)
    assert len(juju.status().apps[STRANGER].units) == 2


def _assert_namespace_on_mesh(kube: lightkube.Client, model: str) -> None:
    mesh_checks.assert_namespace_mesh_labels(
        kube, model, mesh_cluster.expected_namespace_labels(model, BEACON)
    )
    mesh_checks.assert_model_operator_off_the_waypoint(kube, model)
    # Otherwise the check below would pass without going through ztunnel at all.
    mesh_cluster.assert_captured(
        kube, model, "model operator", selector=mesh_cluster.model_operator_selector(kube, model)
    )
