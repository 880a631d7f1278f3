"""The integration tier's cluster assertions hold on what the packed charms write, model off mesh.

``tests/integration/mesh_checks.py`` is what the jubilant suite asserts on a real cluster. Here
the same functions read what the packed beacon and testers, through their ``dispatch``, wrote on
a real API server: the reference state with the model off the mesh (the demo tier covers it on
the mesh). An integration test that expects what our charms do not produce fails here first.
"""

from __future__ import annotations

from pathlib import Path

import mesh_checks
import mesh_cluster
from mesh_steps import (
    BEACON,
    deploy_beacon,
    deploy_tester,
    istio_runs_the_waypoint,
    ok,
    relate_inbound,
    relate_mesh,
)
from support.juju_unit_agent import JujuModel


def test_the_integration_checks_hold_with_the_model_off_the_mesh(
    model: JujuModel, beacon_charm: Path, tester_charm: Path
):
    deploy_beacon(model, beacon_charm)
    istio_runs_the_waypoint(model)
    for app in ("receiver", "sender", "stranger"):
        deploy_tester(model, tester_charm, app)
    relate_inbound(model, "receiver", "sender")
    relate_mesh(model, "receiver")
    relate_mesh(model, "sender")
    kube, name = model.admin, model.name
    published = mesh_cluster.expected_consumer_labels(name, BEACON)

    mesh_checks.assert_waypoint_gateway(kube, name, BEACON)
    mesh_checks.assert_waypoint_autoscaler(kube, name, BEACON, replicas=1)
    mesh_checks.assert_namespace_mesh_labels(kube, name, {})
    for app in ("receiver", "sender", BEACON):
        mesh_checks.assert_consumer_mesh_labels(kube, name, app, published)
    # What a consumer records as applied (test_mesh_labels reads it back).
    assert mesh_cluster.labels_configmap(kube, "receiver", name) == published
    # stranger is related to nothing: no mesh label, no policy.
    mesh_checks.assert_consumer_mesh_labels(kube, name, "stranger", {})
    assert mesh_cluster.policies_for(kube, name, "stranger") == []
    mesh_checks.assert_policies_for_target(
        kube,
        name,
        BEACON,
        "receiver",
        allowed=[mesh_cluster.principal(name, "sender")],
        refused=[mesh_cluster.principal(name, "stranger")],
    )
    for app in ("receiver", "sender"):
        mesh_checks.assert_waypoint_hop(kube, name, BEACON, app)

    # manage-authorization-policies=false: test_authorization_policies's "removed" state.
    ok(model.set_config(BEACON, manage_authorization_policies=False))
    mesh_checks.assert_no_policies_for(kube, name, BEACON, "receiver")
