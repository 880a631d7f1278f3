"""The workload: Pebble layer, pushed server script, opened ports and unit status."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import ops
import pytest
import workload
import workload_server
from charm import ServiceMeshTesterCharm
from ops import testing

SERVER_SOURCE = Path(workload_server.__file__).read_text()


def container(can_connect: bool = True) -> testing.Container:
    return testing.Container("workload", can_connect=can_connect)


def test_pebble_ready_runs_one_server_per_port(ctx: testing.Context[ServiceMeshTesterCharm]):
    state_in = testing.State(containers={container()})

    state_out = ctx.run(ctx.on.pebble_ready(container()), state_in)

    out = state_out.get_container("workload")
    services = out.plan.services
    assert sorted(services) == ["http-8080", "http-8081", "http-8083"]
    for port in (8080, 8081):
        service = services[f"http-{port}"]
        assert service.command == (
            f"/usr/bin/python3 /srv/service-mesh-tester/workload_server.py --port {port}"
        )
        assert service.startup == "enabled"
        assert service.environment["TESTER_APP"] == "service-mesh-tester"
        assert service.environment["TESTER_UNIT"] == "service-mesh-tester/0"
    assert out.service_statuses == {
        "http-8080": ops.pebble.ServiceStatus.ACTIVE,
        "http-8081": ops.pebble.ServiceStatus.ACTIVE,
        "http-8083": ops.pebble.ServiceStatus.ACTIVE,
    }
    pushed = out.get_filesystem(ctx) / "srv/service-mesh-tester/workload_server.py"
    assert pushed.read_text() == SERVER_SOURCE
    # 8083 is served for the pods but named by no policy, and not exposed on the Service.
    assert state_out.opened_ports == {testing.TCPPort(8080), testing.TCPPort(8081)}
    assert state_out.unit_status == testing.ActiveStatus("serving on 8080, 8081, 8083")


def test_a_changed_server_script_changes_the_layer_so_replan_restarts_it():
    assert workload.pebble_layer("a", "a/0", "v1") != workload.pebble_layer("a", "a/0", "v2")
    assert workload.pebble_layer("a", "a/0", "v1") == workload.pebble_layer("a", "a/0", "v1")


def test_without_pebble_the_unit_waits_and_ports_are_still_opened(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    state_out = ctx.run(ctx.on.update_status(), testing.State(containers={container(False)}))

    assert state_out.unit_status == testing.WaitingStatus(
        "waiting for Pebble in the workload container"
    )
    assert state_out.get_container("workload").plan.services == {}
    # 8083 is served for the pods but named by no policy, and not exposed on the Service.
    assert state_out.opened_ports == {testing.TCPPort(8080), testing.TCPPort(8081)}


def test_a_stopped_server_is_reported_then_restarted_by_the_next_reconcile(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    layer = ops.pebble.Layer(workload.pebble_layer("x", "x/0", "old"))
    stopped = testing.Container(
        "workload",
        can_connect=True,
        layers={"service-mesh-tester": layer},
        service_statuses={
            "http-8080": ops.pebble.ServiceStatus.ACTIVE,
            "http-8081": ops.pebble.ServiceStatus.ERROR,
        },
    )
    # An action does not reconcile: the status shows what is wrong.
    state_out = ctx.run(
        ctx.on.action("probe", params={"url": "http://127.0.0.1:1/"}),
        testing.State(containers={stopped}),
    )
    assert state_out.unit_status == testing.WaitingStatus(
        "waiting for http-8081, http-8083 to run"
    )

    state_out = ctx.run(ctx.on.update_status(), testing.State(containers={stopped}))
    assert state_out.unit_status == testing.ActiveStatus("serving on 8080, 8081, 8083")


@pytest.fixture
def served() -> Iterator[int]:
    server = workload_server.make_server(0, "tester", "tester/1", host="127.0.0.1")
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/"), ("POST", "/foo"), ("DELETE", "/bar/baz?q=1"), ("BREW", "/")]
)
def test_the_server_answers_every_method_and_path_with_who_answered(
    served: int, method: str, path: str
):
    request = urllib.request.Request(f"http://127.0.0.1:{served}{path}", method=method)
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert json.loads(response.read()) == {
            "app": "tester",
            "unit": "tester/1",
            "port": served,
            "method": method,
            "path": path,
        }


def test_the_server_sends_no_body_to_head(served: int):
    request = urllib.request.Request(f"http://127.0.0.1:{served}/x", method="HEAD")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 0
        assert response.read() == b""
