"""The Pebble stand-in, driven by ops' own Pebble client, answers as Pebble does.

Every call the charms make (system info, push, add_layer with combine, replan, services, and
the change wait behind them), the errors ops turns into exceptions, and a 501 for every part of
Pebble's API they do not use. Formats were checked
against Pebble's API reference (its OpenAPI description and daemon sources, v1.32): the raw
envelopes are asserted here field by field, so the stand-in cannot drift into answers Pebble
would not give. Processes are real: a started service serves HTTP on loopback until it is
stopped, and stopping it leaves nothing of its process group behind.
"""

from __future__ import annotations

import http.client
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ops
import pytest
from ops import pebble
from support.pebble_standin import PebbleStandin

REPO = Path(__file__).resolve().parents[3]
STANDIN_SCRIPT = REPO / "tests" / "support" / "pebble_standin.py"
TESTER_SRC = REPO / "charms" / "tester" / "src"
# Short, so that the tests do not wait out Pebble's 1 s okay delay on every start.
OKAY_DELAY = 0.3


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def standin(tmp_path: Path, root: Path) -> Iterator[PebbleStandin]:
    server = PebbleStandin(
        tmp_path / "pebble.socket", tmp_path / "state", root=root, okay_delay=OKAY_DELAY
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(standin: PebbleStandin) -> pebble.Client:
    return pebble.Client(socket_path=str(standin.socket_path))


def raw(
    standin: PebbleStandin,
    method: str,
    path: str,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, Any]]:
    """One request over the socket; the HTTP status, Content-Type and decoded JSON body."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(standin.socket_path))
    conn = http.client.HTTPConnection("localhost")
    conn.sock = sock
    data = json.dumps(body).encode() if body is not None else None
    all_headers = {"Content-Type": "application/json"} if data is not None else {}
    all_headers.update(headers or {})
    conn.request(method, path, body=data, headers=all_headers)
    response = conn.getresponse()
    payload = json.loads(response.read())
    conn.close()
    return response.status, response.headers.get_content_type(), payload


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def http_get(port: int, path: str = "/") -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
        return response.status, response.read()


def wait_until_serving(port: int, deadline_s: float = 10.0) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise


def refused(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except ConnectionRefusedError:
        return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) is not running either.
    status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return status != "Z"


def service_layer(name: str, command: str, **extra: Any) -> pebble.LayerDict:
    service: dict[str, Any] = {"override": "replace", "command": command, "startup": "enabled"}
    service.update(extra)
    return {"summary": "test", "services": {name: service}}  # type: ignore[typeddict-item]


# ---------------------------------------------------------------------------------------------
# The envelope and system calls.


def test_system_info_envelope(standin: PebbleStandin, client: pebble.Client):
    status, content_type, body = raw(standin, "GET", "/v1/system-info")
    assert (status, content_type) == (200, "application/json")
    assert body["type"] == "sync"
    assert body["status-code"] == 200
    assert body["status"] == "OK"
    assert set(body["result"]) == {"boot-id", "version"}
    assert "change" not in body
    info = client.get_system_info()
    assert info.version == body["result"]["version"]


def test_unknown_endpoint_method_and_unimplemented(standin: PebbleStandin):
    status, _, body = raw(standin, "GET", "/v1/nothing-here")
    assert status == 404
    assert body == {
        "type": "error",
        "status-code": 404,
        "status": "Not Found",
        "result": {"message": "invalid API endpoint requested"},
    }
    status, _, body = raw(standin, "DELETE", "/v1/services")
    assert status == 405
    assert body["result"] == {"message": 'method "DELETE" not allowed'}
    status, _, body = raw(standin, "POST", "/v1/exec", {"command": ["true"]})
    assert status == 501
    assert body["type"] == "error"
    assert "not implemented by the Pebble stand-in" in body["result"]["message"]


def test_exec_is_refused_through_ops(client: pebble.Client):
    with pytest.raises(pebble.APIError) as error:
        client.exec(["true"])
    assert error.value.code == 501


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/v1/health", None),
        ("GET", "/v1/checks", None),
        ("POST", "/v1/checks", {"action": "start", "checks": ["c"]}),
        ("POST", "/v1/checks/refresh", {"name": "c"}),
        ("POST", "/v1/signals", {"signal": "SIGHUP", "services": ["svc"]}),
        ("GET", "/v1/changes", None),
        ("GET", "/v1/changes/1", None),
        ("POST", "/v1/changes/1", {"action": "abort"}),
        ("GET", "/v1/files?action=read&path=/x", None),
        ("GET", "/v1/files?action=list&path=/", None),
        ("POST", "/v1/files", {"action": "make-dirs", "dirs": [{"path": "/d"}]}),
        ("POST", "/v1/files", {"action": "remove", "paths": [{"path": "/d"}]}),
        ("GET", "/v1/logs", None),
        ("GET", "/v1/tasks/1/websocket/control", None),
    ],
)
def test_what_the_charms_do_not_call_answers_501(
    standin: PebbleStandin, method: str, path: str, body: dict[str, Any] | None
):
    status, _, answer = raw(standin, method, path, body)
    assert status == 501
    assert answer["type"] == "error"
    assert answer["status"] == "Not Implemented"
    assert answer["result"]["message"].endswith("is not implemented by the Pebble stand-in")


def test_what_the_charms_do_not_call_is_an_api_error_through_ops(
    client: pebble.Client, root: Path
):
    (root / "f").write_text("x")
    calls = [
        client.get_checks,
        lambda: client.send_signal("SIGHUP", ["svc"]),
        client.get_changes,
        lambda: client.get_change(pebble.ChangeID("1")),
        lambda: client.pull("/f"),
        lambda: client.list_files("/"),
        lambda: client.make_dir("/d"),
        lambda: client.remove_path("/f"),
    ]
    for call in calls:
        with pytest.raises(pebble.APIError) as error:
            call()
        assert error.value.code == 501
    assert (root / "f").read_text() == "x"
    assert not (root / "d").exists()


@pytest.mark.parametrize(
    ("layer", "what"),
    [
        (
            "checks:\n  c:\n    override: replace\n    exec: {command: 'true'}\n",
            "layer section checks",
        ),
        (
            "log-targets:\n  t:\n    override: replace\n    type: loki\n",
            "layer section log-targets",
        ),
        ("workloads:\n  w:\n    override: replace\n", "layer section workloads"),
        (
            "services:\n  svc:\n    override: replace\n    command: sleep 1\n    workload: w\n",
            "service field workload",
        ),
        (
            "services:\n  svc:\n    override: replace\n    command: sleep 1\n"
            "    on-check-failure: {c: restart}\n",
            "service field on-check-failure",
        ),
    ],
)
def test_layers_with_what_the_stand_in_does_not_run_are_refused_with_501(
    client: pebble.Client, layer: str, what: str
):
    with pytest.raises(pebble.APIError) as error:
        client.add_layer("l", layer)
    assert error.value.code == 501
    assert error.value.message == f"the {what} is not implemented by the Pebble stand-in"
    assert client.get_plan().to_dict() == {}, "nothing of a refused layer is kept"


# ---------------------------------------------------------------------------------------------
# Layers and the plan.


def test_plan_of_a_fresh_stand_in_is_empty(client: pebble.Client):
    assert client.get_plan().to_dict() == {}


def test_add_layer_and_combine(client: pebble.Client):
    first = service_layer("svc", "sleep 60", environment={"A": "1", "B": "2"})
    client.add_layer("base", first)
    merge: pebble.LayerDict = {
        "services": {
            "svc": {"override": "merge", "environment": {"B": "3"}, "summary": "merged"},
            "other": {"override": "replace", "command": "sleep 1"},
        }
    }
    client.add_layer("base", merge, combine=True)
    plan = client.get_plan()
    svc = plan.services["svc"]
    assert svc.command == "sleep 60"
    assert svc.environment == {"A": "1", "B": "3"}
    assert svc.summary == "merged"
    assert svc.startup == "enabled"
    assert plan.services["other"].command == "sleep 1"

    # A second layer with another label, replacing the service on top of the first.
    client.add_layer("top", service_layer("svc", "sleep 61"))
    assert client.get_plan().services["svc"].command == "sleep 61"
    assert client.get_plan().services["svc"].environment == {}


def test_add_layer_twice_without_combine_is_refused(client: pebble.Client):
    client.add_layer("base", service_layer("svc", "sleep 60"))
    with pytest.raises(pebble.APIError) as error:
        client.add_layer("base", service_layer("svc", "sleep 60"))
    assert error.value.code == 400
    assert error.value.message == 'layer "base" already exists'


@pytest.mark.parametrize(
    ("layer", "message"),
    [
        (
            "services:\n  svc:\n    command: sleep 1\n",
            'layer "bad" must define "override" for service "svc"',
        ),
        (
            "services:\n  svc:\n    override: replace\n",
            'plan must define "command" for service "svc"',
        ),
        (
            "services:\n  svc:\n    override: sideways\n    command: sleep 1\n",
            'layer "bad" has invalid "override" value for service "svc"',
        ),
        (
            "services:\n  svc:\n    override: replace\n    command: sleep 1\n    colour: red\n",
            'cannot parse layer YAML: cannot parse layer "bad" section "services": '
            "field colour not found in type plan.Service",
        ),
        (
            "nonsense: 1\n",
            'cannot parse layer YAML: cannot parse layer "bad": unknown section "nonsense"',
        ),
        (
            "services:\n  svc:\n    override: replace\n    command: sleep [ 1 ] 2\n",
            'cannot parse layer YAML: plan service "svc" command invalid: '
            'cannot parse service "svc" command: cannot have any arguments after [ ... ] group',
        ),
        (
            "services:\n  svc:\n    override: replace\n    command: sleep 1\n"
            "    on-failure: explode\n",
            'cannot parse layer YAML: plan service "svc" on-failure action "explode" invalid',
        ),
        (
            "services:\n  a:\n    override: replace\n    command: sleep 1\n    after: [b]\n"
            "  b:\n    override: replace\n    command: sleep 1\n    after: [a]\n",
            "services in before/after loop: a, b",
        ),
        ("services: [\n", 'cannot parse layer YAML: cannot parse layer "bad": '),
    ],
)
def test_bad_layers_are_refused_with_pebbles_wording(
    client: pebble.Client, layer: str, message: str
):
    with pytest.raises(pebble.APIError) as error:
        client.add_layer("bad", layer)
    assert error.value.code == 400
    assert error.value.body["type"] == "error"
    assert error.value.message.startswith(message)
    assert client.get_plan().to_dict() == {}, "a refused layer changes nothing"


def test_reserved_label_prefix(client: pebble.Client):
    with pytest.raises(pebble.APIError) as error:
        client.add_layer("pebble-mine", service_layer("svc", "sleep 1"))
    assert (
        error.value.message
        == 'cannot parse layer YAML: cannot use reserved label prefix "pebble-"'
    )


def test_layer_request_errors(standin: PebbleStandin):
    status, _, body = raw(standin, "POST", "/v1/layers", {"action": "remove", "label": "x"})
    assert (status, body["result"]["message"]) == (400, 'invalid action "remove"')
    status, _, body = raw(standin, "POST", "/v1/layers", {"action": "add", "label": ""})
    assert (status, body["result"]["message"]) == (400, "label must be set")
    status, _, body = raw(
        standin, "POST", "/v1/layers", {"action": "add", "label": "x", "format": "json"}
    )
    assert (status, body["result"]["message"]) == (400, 'invalid format "json"')
    status, _, body = raw(standin, "GET", "/v1/plan")
    assert (status, body["result"]["message"]) == (400, 'invalid format ""')


def test_add_layer_answers_true(standin: PebbleStandin):
    status, _, body = raw(
        standin,
        "POST",
        "/v1/layers",
        {"action": "add", "label": "x", "format": "yaml", "layer": "summary: s\n"},
    )
    assert status == 200
    assert body == {"type": "sync", "status-code": 200, "status": "OK", "result": True}


def test_layers_directory_is_read_at_start_up(tmp_path: Path):
    layers = tmp_path / "state" / "layers"
    layers.mkdir(parents=True)
    (layers / "001-base.yaml").write_text(
        "services:\n  svc:\n    override: replace\n    command: sleep 5\n"
    )
    (layers / "002-more.yaml").write_text(
        "services:\n  svc:\n    override: merge\n    startup: enabled\n"
    )
    with PebbleStandin(tmp_path / "p.socket", tmp_path / "state") as server:
        client = pebble.Client(socket_path=str(server.socket_path))
        svc = client.get_plan().services["svc"]
        assert (svc.command, svc.startup) == ("sleep 5", "enabled")
        # --hold: nothing starts on its own.
        assert client.get_services()[0].current == pebble.ServiceStatus.INACTIVE


# ---------------------------------------------------------------------------------------------
# Services and changes.


def test_services_action_envelope_is_async(standin: PebbleStandin, client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60"))
    status, _, body = raw(standin, "POST", "/v1/services", {"action": "replan", "services": []})
    assert status == 202
    assert body["type"] == "async"
    assert body["status-code"] == 202
    assert body["status"] == "Accepted"
    assert body["result"] is None
    change = client.wait_change(pebble.ChangeID(body["change"]))
    assert change.ready
    assert change.status == "Done"


def test_replan_starts_enabled_services_and_reports_them(client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60"))
    disabled: pebble.LayerDict = {
        "services": {"off": {"override": "replace", "command": "sleep 60", "startup": "disabled"}}
    }
    client.add_layer("m", disabled)
    assert [s.current for s in client.get_services()] == [pebble.ServiceStatus.INACTIVE] * 2

    change_id = client.replan_services()
    change = client.wait_change(change_id)
    assert change.kind == "replan"
    assert change.summary == 'Replan service "svc"'
    assert [(t.kind, t.summary, t.status) for t in change.tasks] == [
        ("start", 'Start service "svc"', "Done")
    ]
    assert change.err is None
    assert change.ready_time is not None

    services = {s.name: s for s in client.get_services()}
    assert services["svc"].is_running()
    assert services["svc"].startup == pebble.ServiceStartup.ENABLED
    assert not services["off"].is_running()
    assert services["off"].startup == pebble.ServiceStartup.DISABLED

    # Replanning an unchanged plan restarts nothing: the running service is "already started".
    again = client.wait_change(client.replan_services())
    assert again.tasks[0].status == "Done"
    assert any('Service "svc" already started.' in line for line in again.tasks[0].log)


def test_get_services_filters_by_names_and_ignores_unknown(standin: PebbleStandin):
    client = pebble.Client(socket_path=str(standin.socket_path))
    client.add_layer("l", service_layer("a", "sleep 60"))
    client.add_layer("m", service_layer("b", "sleep 60"))
    assert [s.name for s in client.get_services(["b", "nope"])] == ["b"]
    _, _, body = raw(standin, "GET", "/v1/services?names=a,b")
    assert [s["name"] for s in body["result"]] == ["a", "b"]
    assert body["result"][0] == {"name": "a", "startup": "enabled", "current": "inactive"}


def test_start_stop_restart(standin: PebbleStandin, client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60", startup="disabled"))
    start = client.wait_change(client.start_services(["svc"]))
    assert (start.kind, start.summary) == ("start", 'Start service "svc"')
    assert client.get_services(["svc"])[0].is_running()
    _, _, body = raw(standin, "GET", "/v1/services")
    assert set(body["result"][0]) == {"name", "startup", "current", "current-since"}

    restart = client.wait_change(client.restart_services(["svc"]))
    assert [t.kind for t in restart.tasks] == ["stop", "start"]
    assert client.get_services(["svc"])[0].is_running()

    stop = client.wait_change(client.stop_services(["svc"]))
    assert stop.summary == 'Stop service "svc"'
    assert client.get_services(["svc"])[0].current == pebble.ServiceStatus.INACTIVE
    again = client.wait_change(client.stop_services(["svc"]))
    assert any('Service "svc" already stopped.' in line for line in again.tasks[0].log)


def test_unknown_service_is_refused(client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60"))
    for call, verb in (
        (client.start_services, "start"),
        (client.stop_services, "stop"),
        (client.restart_services, "restart"),
    ):
        with pytest.raises(pebble.APIError) as error:
            call(["ghost"])
        assert error.value.code == 400
        assert error.value.message == f'cannot {verb} services: service "ghost" does not exist'


def test_services_request_errors(standin: PebbleStandin):
    cases = [
        ({"action": "start", "services": []}, "must specify services for start action"),
        ({"action": "replan", "services": ["x"]}, "replan accepts no service names"),
        ({"action": "explode", "services": ["x"]}, 'invalid action "explode"'),
        (
            {"action": "start", "services": "svc"},
            "cannot decode data from request body: json: cannot unmarshal string into Go struct "
            "field .services of type []string",
        ),
    ]
    for body, message in cases:
        status, _, answer = raw(standin, "POST", "/v1/services", body)
        assert (status, answer["result"]) == (400, {"message": message})


def test_autostart_without_default_services(client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60", startup="disabled"))
    with pytest.raises(pebble.APIError) as error:
        client.autostart_services()
    assert error.value.code == 400
    assert error.value.body["result"] == {
        "message": "no default services",
        "kind": "no-default-services",
    }


def test_replan_with_nothing_to_do(client: pebble.Client):
    change = client.wait_change(client.replan_services())
    assert change.summary == "Replan - no services"
    assert change.tasks == []
    assert change.status == "Done"


def test_changed_config_is_restarted_by_replan(client: pebble.Client, tmp_path: Path):
    out = tmp_path / "out"
    script = f'echo "$GREETING" >> {out}; exec sleep 60'
    client.add_layer(
        "l", service_layer("svc", f"sh -c '{script}'", environment={"GREETING": "one"})
    )
    client.replan_services()
    client.add_layer(
        "l",
        {"services": {"svc": {"override": "merge", "environment": {"GREETING": "two"}}}},
        combine=True,
    )
    change = client.wait_change(client.replan_services())
    assert [t.kind for t in change.tasks] == ["stop", "start"]
    assert out.read_text().split() == ["one", "two"]


def test_command_that_exits_quickly_fails_the_change(client: pebble.Client):
    client.add_layer(
        "l", service_layer("svc", "sh -c 'echo doomed; exit 3'", **{"on-failure": "ignore"})
    )
    with pytest.raises(pebble.ChangeError) as error:
        client.replan_services()
    err = error.value.err
    assert err.startswith('cannot perform the following tasks:\n- Start service "svc" (')
    assert "service start attempt: exited quickly with code 3, will ignore" in err
    task = error.value.change.tasks[0]
    assert task.status == "Error"
    assert any("doomed" in line for line in task.log), "the service's last output is quoted"
    assert client.get_services(["svc"])[0].current == pebble.ServiceStatus.ERROR
    # A stop of an exited service is not an error.
    stop = client.wait_change(client.stop_services(["svc"]))
    assert any('Service "svc" had already exited.' in line for line in stop.tasks[0].log)
    assert client.get_services(["svc"])[0].current == pebble.ServiceStatus.INACTIVE


def test_missing_executable_fails_the_start(client: pebble.Client):
    client.add_layer("l", service_layer("svc", "no-such-binary --flag"))
    with pytest.raises(pebble.ChangeError) as error:
        client.replan_services()
    assert error.value.err == (
        "cannot perform the following tasks:\n"
        '- Start service "svc" (cannot start service: '
        'exec: "no-such-binary": executable file not found in $PATH)'
    )
    assert client.get_services()[0].current == pebble.ServiceStatus.INACTIVE


def test_unknown_user_fails_the_start(client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60", user="no-such-user-here"))
    with pytest.raises(pebble.ChangeError) as error:
        client.replan_services()
    assert '- Start service "svc" (cannot start service: ' in error.value.err
    assert "no-such-user-here" in error.value.err


def test_exit_zero_with_on_success_ignore_is_inactive(client: pebble.Client):
    client.add_layer(
        "l", service_layer("svc", "sh -c 'sleep 1; exit 0'", **{"on-success": "ignore"})
    )
    client.replan_services()
    deadline = time.monotonic() + 10
    while client.get_services()[0].is_running():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.get_services()[0].current == pebble.ServiceStatus.INACTIVE


def test_stop_while_backing_off_and_of_a_never_started_service(client: pebble.Client):
    command = "sh -c 'sleep 0.6; exit 1'"
    client.add_layer("l", service_layer("svc", command, **{"backoff-delay": "30s"}))
    client.add_layer("m", service_layer("idle", "sleep 60", startup="disabled"))
    client.replan_services()
    deadline = time.monotonic() + 10
    while client.get_services(["svc"])[0].current != "backoff":
        assert time.monotonic() < deadline, "a service waiting to restart reports backoff"
        time.sleep(0.05)
    stop = client.wait_change(client.stop_services(["svc", "idle"]))
    assert stop.summary == 'Stop service "svc" and 1 more'
    assert stop.status == "Done"
    logs = {task.summary: task.log for task in stop.tasks}
    assert any(
        'Service "idle" has never been started.' in line for line in logs['Stop service "idle"']
    )
    assert client.get_services(["svc"])[0].current == pebble.ServiceStatus.INACTIVE


def test_stop_during_the_okay_delay_fails_the_start(tmp_path: Path):
    with PebbleStandin(tmp_path / "p.socket", tmp_path / "state", okay_delay=5) as server:
        client = pebble.Client(socket_path=str(server.socket_path))
        client.add_layer("l", service_layer("svc", "sleep 60"))
        start_id = client.start_services(["svc"], timeout=0)
        deadline = time.monotonic() + 5
        # The change's state in the server (GET /v1/changes/{id} is not served).
        assert server.api is not None
        while server.api.services.changes[start_id].tasks[0].status != "Doing":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        client.stop_services(["svc"])
        start = client.wait_change(start_id)
        assert start.status == "Error"
        assert "service start attempt: stopped before the 5s okay delay" in (start.err or "")
        assert client.get_services()[0].current == pebble.ServiceStatus.INACTIVE


def test_failing_service_backs_off_and_is_restarted(client: pebble.Client, tmp_path: Path):
    runs = tmp_path / "runs"
    command = f"sh -c 'echo run >> {runs}; sleep 1; exit 1'"
    client.add_layer("l", service_layer("svc", command, **{"backoff-delay": "100ms"}))
    client.replan_services()  # it lives past the okay delay, so the start succeeds
    deadline = time.monotonic() + 10
    while len(runs.read_text().split()) < 3:
        assert time.monotonic() < deadline, "the service was not restarted"
        time.sleep(0.05)
    assert client.get_services(["svc"])[0].current in (pebble.ServiceStatus.ACTIVE, "backoff")
    client.stop_services(["svc"])
    assert client.get_services(["svc"])[0].current == pebble.ServiceStatus.INACTIVE


def test_environment_working_dir_and_user(client: pebble.Client, root: Path, tmp_path: Path):
    (root / "work").mkdir()
    out = tmp_path / "env.json"
    user = pwd.getpwuid(os.getuid()).pw_name
    code = (
        "import json, os, sys; "
        f"json.dump({{'cwd': os.getcwd(), 'uid': os.getuid(), 'user': os.environ.get('USER'), "
        f"'home': os.environ.get('HOME'), 'x': os.environ.get('X')}}, open({str(out)!r}, 'w')); "
        "sys.stdout.flush(); __import__('time').sleep(60)"
    )
    command = f"{sys.executable} -c {json.dumps(code)}"
    client.add_layer(
        "l",
        service_layer(
            "svc", command, environment={"X": "y"}, user=user, **{"working-dir": "/work"}
        ),
    )
    client.replan_services()
    seen = json.loads(out.read_text())
    assert seen == {
        "cwd": str(root / "work"),
        "uid": os.getuid(),
        "user": user,
        "home": pwd.getpwuid(os.getuid()).pw_dir,
        "x": "y",
    }


def test_stop_kills_the_whole_process_group(client: pebble.Client, tmp_path: Path):
    child_pid_file = tmp_path / "child.pid"
    # The child ignores SIGTERM; Pebble's SIGTERM to the group leaves it, the stand-in does not.
    script = f'(trap "" TERM; exec sleep 300) & echo $! > {child_pid_file}; exec sleep 300'
    client.add_layer("l", service_layer("svc", f"sh -c '{script}'", **{"kill-delay": "2s"}))
    client.replan_services()
    child = int(child_pid_file.read_text())
    assert pid_alive(child)
    started = time.monotonic()
    client.stop_services(["svc"])
    assert time.monotonic() - started < 2, "the leader died on SIGTERM, no kill delay needed"
    deadline = time.monotonic() + 5
    while pid_alive(child):
        assert time.monotonic() < deadline, "the service's child outlived stop"
        time.sleep(0.05)


def test_sigterm_resistant_service_is_killed_after_kill_delay(client: pebble.Client):
    client.add_layer(
        "l",
        service_layer(
            "svc", "sh -c 'trap \"\" TERM; sleep 300; sleep 300'", **{"kill-delay": "500ms"}
        ),
    )
    client.replan_services()
    started = time.monotonic()
    client.stop_services(["svc"])
    assert 0.5 <= time.monotonic() - started < 5
    assert client.get_services(["svc"])[0].current == pebble.ServiceStatus.INACTIVE


def test_wait_answers_the_ready_change_and_errors(standin: PebbleStandin, client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60"))
    first = client.replan_services()
    client.stop_services(["svc"])
    change = client.wait_change(first)
    assert (change.id, change.kind, change.ready) == (first, "replan", True)
    status, _, body = raw(standin, "GET", "/v1/changes/999/wait")
    assert (status, body["result"]["message"]) == (404, 'cannot find change with id "999"')
    status, _, body = raw(standin, "GET", f"/v1/changes/{first}/wait?timeout=soon")
    assert status == 400
    assert body["result"]["message"].startswith("invalid timeout: ")


def test_wait_times_out_with_504(standin: PebbleStandin, client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60"))
    change_id = client.replan_services(timeout=0)
    status, _, body = raw(standin, "GET", f"/v1/changes/{change_id}/wait?timeout=0.010s")
    assert status == 504
    assert body["type"] == "error"
    assert body["result"]["message"] == "timed out waiting for change after 10ms"
    change = client.wait_change(change_id)
    assert change.status == "Done"


# ---------------------------------------------------------------------------------------------
# Real processes serving on loopback.


def test_http_server_runs_after_replan_and_is_gone_after_stop(client: pebble.Client, root: Path):
    port = free_port()
    (root / "site").mkdir()
    (root / "site" / "hello.txt").write_text("hi from the workload")
    command = f"{sys.executable} -m http.server --bind 127.0.0.1 {port}"
    client.add_layer("l", service_layer("web", command, **{"working-dir": "/site"}))
    client.replan_services()
    wait_until_serving(port)
    assert http_get(port, "/hello.txt") == (200, b"hi from the workload")
    client.stop_services(["web"])
    assert refused(port)


def test_the_tester_charms_own_calls_run_its_servers(
    standin: PebbleStandin, monkeypatch: pytest.MonkeyPatch
):
    """The tester's workload module, through a real ``ops.Container``, against the stand-in."""
    monkeypatch.syspath_prepend(str(TESTER_SRC))
    import workload

    ports = (free_port(), free_port(), free_port())
    monkeypatch.setattr(workload, "SERVER_PORTS", ports)
    client = pebble.Client(socket_path=str(standin.socket_path))
    backend = types.SimpleNamespace(
        _juju_context=types.SimpleNamespace(version=ops.JujuVersion("3.6.4"))
    )
    container = ops.Container("workload", backend, pebble_client=client)  # type: ignore[arg-type]

    assert container.can_connect()
    assert workload.stopped_services(container) == [workload.service_name(p) for p in ports]
    workload.ensure_running(container, "tester", "tester/0")
    assert workload.stopped_services(container) == []
    pushed = (standin.root / workload.SERVER_SCRIPT_PATH.lstrip("/")).read_text()
    assert pushed == workload.server_source()
    for port in ports:
        wait_until_serving(port)
        status, body = http_get(port, "/probe")
        assert status == 200
        assert json.loads(body) == {
            "app": "tester",
            "unit": "tester/0",
            "port": port,
            "method": "GET",
            "path": "/probe",
        }

    # Another hook: nothing changed, so nothing restarts.
    before = raw(standin, "GET", "/v1/services")[2]["result"]
    workload.ensure_running(container, "tester", "tester/0")
    assert raw(standin, "GET", "/v1/services")[2]["result"] == before

    client.stop_services([workload.service_name(p) for p in ports])
    assert workload.stopped_services(container) == [workload.service_name(p) for p in ports]
    assert all(refused(port) for port in ports)


# ---------------------------------------------------------------------------------------------
# Files.


def test_push_writes_under_the_root(client: pebble.Client, root: Path):
    client.push("/etc/app/conf.bin", b"\x00\x01binary\xff", make_dirs=True, permissions=0o600)
    host = root / "etc" / "app" / "conf.bin"
    assert host.read_bytes() == b"\x00\x01binary\xff"
    assert host.stat().st_mode & 0o777 == 0o600
    assert (root / "etc" / "app").stat().st_mode & 0o777 == 0o755
    client.push("/etc/app/text", "h\u00e9llo")
    assert (root / "etc" / "app" / "text").read_text(encoding="utf-8") == "h\u00e9llo"
    client.push("/etc/app/text", "again")  # replaced whole
    assert (root / "etc" / "app" / "text").read_text() == "again"


def test_push_with_owner_and_bad_owner_or_permissions(client: pebble.Client, root: Path):
    me = pwd.getpwuid(os.getuid())
    client.push("/owned", "x", user=me.pw_name, user_id=me.pw_uid)
    assert (root / "owned").stat().st_uid == me.pw_uid
    assert (root / "owned").stat().st_gid == me.pw_gid

    with pytest.raises(pebble.PathError) as error:
        client.push("/x", "x", user="no-such-user-here")
    assert error.value.kind == "generic-file-error"
    assert error.value.message.startswith("cannot look up user and group: ")
    with pytest.raises(pebble.PathError) as error:
        client.push("/x", "x", permissions=0o1777)
    assert error.value.message == 'permissions must be a 3-digit octal string, got "1777"'
    assert not (root / "x").exists()


def test_push_without_make_dirs_into_a_missing_directory(client: pebble.Client):
    with pytest.raises(pebble.PathError) as error:
        client.push("/missing/dir/file", "x")
    assert error.value.kind == "not-found"
    assert "/missing/dir/file" in error.value.message
    assert "no such file or directory" in error.value.message


def test_relative_paths_are_refused(client: pebble.Client):
    with pytest.raises(pebble.PathError) as error:
        client.push("relative/file", "x")
    assert error.value.message == 'paths must be absolute, got "relative/file"'


# ---------------------------------------------------------------------------------------------
# As its own process, outliving the caller's client.


def test_invalid_layers_directory_entry_refuses_to_start(tmp_path: Path):
    layers = tmp_path / "state" / "layers"
    layers.mkdir(parents=True)
    (layers / "base.yaml").write_text("summary: x\n")
    server = PebbleStandin(tmp_path / "p.socket", tmp_path / "state")
    with pytest.raises(ValueError, match="invalid layer filename"):
        server.start()
    assert not (tmp_path / "p.socket").exists()


def test_standalone_process(tmp_path: Path):
    socket_path = tmp_path / "sock" / "pebble.socket"
    socket_path.parent.mkdir()
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            str(STANDIN_SCRIPT),
            "--socket",
            str(socket_path),
            "--state-dir",
            str(tmp_path / "state"),
            "--root",
            str(tmp_path / "root"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "ready"
        assert socket_path.exists()
        client = pebble.Client(socket_path=str(socket_path))
        # The script lives in the container's root; its path in the command is mapped there.
        script = (
            "import http.server, sys\nhttp.server.test(port=int(sys.argv[1]), bind='127.0.0.1')\n"
        )
        client.push("/srv/app/serve.py", script, make_dirs=True)
        assert (tmp_path / "root" / "srv" / "app" / "serve.py").read_text() == script
        command = f"{sys.executable} /srv/app/serve.py {port}"
        client.add_layer("l", service_layer("web", command))
        client.replan_services()
        wait_until_serving(port)
        # A second client (the next hook) still sees the service running.
        assert pebble.Client(socket_path=str(socket_path)).get_services()[0].is_running()
        assert (tmp_path / "state" / "logs" / "web.log").exists()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        assert refused(port), "services stop with the stand-in"
        assert not socket_path.exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
