"""The packed tester run through its ``dispatch``, its workload driven through a Pebble stand-in.

Each tester unit's workload container is a `pebble_standin` process on the socket where ops looks
for it (``/charm/containers/workload/pebble.socket`` inside the hook's mount namespace), in a
network namespace of its own with the unit's address (`pod_network`), as a pod has: several units
serve the same ports, and another unit's hooks (the sender's ``probe`` action) reach them by
address.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import BOTH_BASES
from mesh_steps import (
    BEACON,
    MESH_LABELS,
    deploy_beacon,
    istio_runs_the_waypoint,
    ok,
    pod_template_labels,
    relate_inbound,
    relate_mesh,
    service_labels,
    waypoint,
)
from support.juju_unit_agent import JujuModel

CONTAINER = "workload"
SERVING = ("active", "serving on 8080, 8081, 8083")


def bring_up(model: JujuModel, charm: Path, app: str, units: int = 1) -> list[str]:
    """Deploy a tester whose units' Pebbles are up, then run the deploy hooks and pebble-ready."""
    names = model.deploy(app, charm, units=units)
    for unit in names:
        model.start_pebble(unit, CONTAINER)
    runs = model.start_units(app)
    runs += [model.run_hook(u, f"{CONTAINER}-pebble-ready", workload=CONTAINER) for u in names]
    ok(runs)
    return names


def address(model: JujuModel, unit: str) -> str:
    return model.state()["units"][unit]["address"]


@BOTH_BASES
def test_tester_workload_mesh_and_probe(model: JujuModel, beacon_charm: Path, tester_charm: Path):
    deploy_beacon(model, beacon_charm)
    istio_runs_the_waypoint(model)

    # The receiver: Pebble first (Juju starts the pod's containers before the charm's hooks).
    [receiver] = bring_up(model, tester_charm, "receiver")
    assert model.unit_status(receiver) == SERVING
    # The workload really runs: the pushed script, started by Pebble, answers on every port.
    root = model.unit_dir(receiver) / "containers" / CONTAINER
    assert (root / "srv/service-mesh-tester/workload_server.py").is_file()
    host = address(model, receiver)
    for port in (8080, 8081, 8083):
        status, body = model.fetch(f"http://{host}:{port}/foo")
        assert status == 200, body
        answer = json.loads(body)
        assert (answer["app"], answer["unit"], answer["port"]) == ("receiver", receiver, port)
    # Juju keeps a unit's opened ports as a set; ops opens them in its own set's order, which
    # changes from one hook process to the next (string hashing is salted per process).
    assert set(model.state()["units"][receiver]["ports"]) == {"8080/tcp", "8081/tcp"}

    [sender] = bring_up(model, tester_charm, "sender")
    assert model.unit_status(sender) == SERVING

    relate_inbound(model, "receiver", "sender")
    mesh = relate_mesh(model, "receiver")
    relate_mesh(model, "sender")
    assert service_labels(model, "receiver")["istio.io/use-waypoint"] == waypoint(model)
    assert service_labels(model, "sender")["istio.io/use-waypoint"] == waypoint(model)

    # The probe action, through the sender's dispatch, reaches the receiver's real server.
    probe = model.run_action(sender, "probe", {"url": f"http://{host}:8080/foo"})
    assert probe.exit_code == 0, probe.describe()
    assert (probe.status, probe.results["outcome"], probe.results["status"]) == (
        "completed",
        "response",
        "200",
    )
    assert probe.action_log == ["sending 1 request(s)"]
    many = model.run_action(
        sender,
        "probe",
        {
            "requests": json.dumps(
                [{"url": f"http://{host}:8081/bar/"}, {"url": f"http://{host}:9/"}]
            )
        },
    )
    assert many.exit_code == 0, many.describe()
    outcomes = [(r["outcome"], r["status"]) for r in json.loads(many.results["results"])]
    assert outcomes == [("response", 200), ("refused", None)]
    refused = model.run_action(sender, "probe", {"url": "ftp://x", "requests": "[]"})
    assert refused.exit_code == 0, refused.describe()
    assert refused.status == "failed"
    assert refused.message

    # A second receiver unit (not the leader), its workload in its own network namespace.
    second = model.add_unit("receiver")
    model.start_pebble(second, CONTAINER)
    ok(model.start_units("receiver", [second]))
    ok(model.run_hook(second, f"{CONTAINER}-pebble-ready", workload=CONTAINER))
    peers = model.peer_relation("receiver")
    ok(model.join(peers, second, receiver))
    ok(model.join(peers, receiver, second))
    ok(model.join(mesh, second, f"{BEACON}/0"))
    ok(model.join(mesh, f"{BEACON}/0", second))
    assert model.unit_status(second) == SERVING
    assert not [
        call
        for run in model.history
        if run.unit == second
        for call in run.calls
        if call["tool"] == "relation-set" and "--app" in call["args"]
    ], "a follower wrote its app's databag"

    ok([model.run_hook(u, "update-status") for u in (receiver, second, sender, f"{BEACON}/0")])
    assert model.unit_status(receiver) == SERVING

    # auto-join-mesh off: the receiver takes its labels off; on: puts them back.
    ok(model.set_config("receiver", auto_join_mesh=False))
    assert not any(k in pod_template_labels(model, "receiver") for k in MESH_LABELS)
    assert not any(k in service_labels(model, "receiver") for k in MESH_LABELS)
    ok(model.set_config("receiver", auto_join_mesh=True))
    assert service_labels(model, "receiver")["istio.io/use-waypoint"] == waypoint(model)

    # The pod goes (Pebble stops with it): the unit waits for its container, hooks still succeed.
    model.stop_pebble(receiver, CONTAINER)
    assert model.fetch(f"http://{host}:8080/foo")[0] == 0
    ok(model.run_hook(receiver, "update-status"))
    assert model.unit_status(receiver) == (
        "waiting",
        "waiting for Pebble in the workload container",
    )

    # Removal: the relation goes, then the application; every hook succeeds.
    ok(model.remove_app("receiver"))
    assert not any(k in pod_template_labels(model, "receiver") for k in MESH_LABELS)
    assert all(run.exit_code == 0 for run in model.history), "a hook failed"
