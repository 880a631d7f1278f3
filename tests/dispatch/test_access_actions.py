"""The packed beacon's ``access-map`` and ``explain`` actions, run through ``dispatch``.

A receiver and a sender (packed testers) related through the beacon, Istio standing in for the
waypoint: the actions read the real API server through the packed charm's own dependencies and
answer through ``action-set``, as ``juju run`` would show them.
"""

from __future__ import annotations

import json
from pathlib import Path

from mesh_steps import (
    deploy_beacon,
    deploy_tester,
    istio_runs_the_waypoint,
    relate_inbound,
    relate_mesh,
)
from support.juju_unit_agent import JujuModel


def test_access_actions_through_dispatch(model: JujuModel, beacon_charm: Path, tester_charm: Path):
    beacon = deploy_beacon(model, beacon_charm)
    istio_runs_the_waypoint(model)
    deploy_tester(model, tester_charm, "receiver")
    deploy_tester(model, tester_charm, "sender")
    relate_inbound(model, "receiver", "sender")
    mesh = relate_mesh(model, "receiver")
    relate_mesh(model, "sender")  # on the mesh too: its traffic carries its identity

    access = model.run_action(beacon, "access-map", {"format": "json"})
    assert access.status == "completed", (access.message, access.stderr[-2000:])
    data = json.loads(access.results["map"])
    requested = [g for g in data["grants"] if g["requested_by"] == "receiver"]
    assert {(g["source"], g["target"], g["level"]) for g in requested} >= {
        ("sender", "receiver", "app")
    }
    assert all(g["relation_id"] == mesh for g in requested if not g["waypoint_access"])

    table = model.run_action(beacon, "access-map")
    assert table.status == "completed"
    assert f"receiver over relation {mesh} (service-mesh)" in table.results["map"]

    allowed = model.run_action(
        beacon,
        "explain",
        {"source": "sender", "target": "receiver", "port": 8080, "method": "GET", "path": "/foo"},
    )
    assert allowed.status == "completed"
    assert allowed.results["verdict"] == "allow", allowed.results["explanation"]
    missed = model.run_action(
        beacon,
        "explain",
        {"source": "sender", "target": "receiver", "port": 9999, "method": "GET", "path": "/foo"},
    )
    assert missed.results["verdict"] == "deny"
    assert "related, but" in missed.results["explanation"]

    refused = model.run_action(beacon, "explain", {"source": "sender", "target": "x", "port": 0})
    assert refused.status == "failed"
    assert refused.message.startswith("port must be a port number")
