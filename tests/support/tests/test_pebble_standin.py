"""The Pebble stand-in, driven by ops' own Pebble client, answers as Pebble does.

Every call the tester charm makes (system info, push, add_layer with combine, replan, services),
the other calls a charm makes, and the errors ops turns into exceptions. Formats were checked
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
import yaml
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


def test_health_without_checks(standin: PebbleStandin):
    status, _, body = raw(standin, "GET", "/v1/health")
    assert status == 200
    assert body["result"] == {"healthy": True}
    status, _, body = raw(standin, "GET", "/v1/health?level=bogus")
    assert status == 400
    assert body["result"]["message"] == 'level must be "alive" or "ready"'


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


def test_log_targets_and_workloads_are_kept_in_the_plan(
    standin: PebbleStandin, client: pebble.Client
):
    layer = (
        "services:\n  svc:\n    override: replace\n    command: sleep 1\n    workload: w\n"
        "log-targets:\n  t:\n    override: replace\n    type: loki\n"
        "    location: http://127.0.0.1:1/\n    services: [svc]\n"
        "workloads:\n  w:\n    override: replace\n    user-id: 0\n"
    )
    client.add_layer("l", layer)
    plan = client.get_plan()
    assert plan.log_targets["t"].location == "http://127.0.0.1:1/"
    assert plan.log_targets["t"].services == ["svc"]
    plan_yaml = raw(standin, "GET", "/v1/plan?format=yaml")[2]["result"]
    assert yaml.safe_load(plan_yaml)["workloads"] == {"w": {"override": "replace", "user-id": 0}}
    with pytest.raises(pebble.APIError) as error:
        client.add_layer(
            "m", "log-targets:\n  u:\n    override: replace\n    type: loki\n    services: [x]\n"
        )
    assert error.value.message == 'log target "u" specifies unknown service "x"'
    with pytest.raises(pebble.APIError) as error:
        client.add_layer("m", "log-targets:\n  u:\n    override: replace\n    location: x\n")
    assert error.value.message == (
        'plan must define "type" ("loki", "opentelemetry" or "syslog") for log target "u"'
    )


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
    change = client.get_change(change_id)
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
    again = client.get_change(client.replan_services())
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
    start = client.get_change(client.start_services(["svc"]))
    assert (start.kind, start.summary) == ("start", 'Start service "svc"')
    assert client.get_services(["svc"])[0].is_running()
    _, _, body = raw(standin, "GET", "/v1/services")
    assert set(body["result"][0]) == {"name", "startup", "current", "current-since"}

    restart = client.get_change(client.restart_services(["svc"]))
    assert [t.kind for t in restart.tasks] == ["stop", "start"]
    assert client.get_services(["svc"])[0].is_running()

    stop = client.get_change(client.stop_services(["svc"]))
    assert stop.summary == 'Stop service "svc"'
    assert client.get_services(["svc"])[0].current == pebble.ServiceStatus.INACTIVE
    again = client.get_change(client.stop_services(["svc"]))
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
    change = client.get_change(client.replan_services())
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
    change = client.get_change(client.replan_services())
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
    stop = client.get_change(client.stop_services(["svc"]))
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


def test_abort_a_start_in_progress(tmp_path: Path):
    with PebbleStandin(tmp_path / "p.socket", tmp_path / "state", okay_delay=5) as server:
        client = pebble.Client(socket_path=str(server.socket_path))
        client.add_layer("l", service_layer("svc", "sleep 60"))
        change_id = client.replan_services(timeout=0)
        deadline = time.monotonic() + 5
        while client.get_change(change_id).tasks[0].status != "Doing":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        aborting = client.abort_change(change_id)
        assert aborting.status == "Abort"
        assert aborting.id == change_id
        change = client.wait_change(change_id)
        assert change.status == "Error"
        assert "start aborted, sent SIGKILL to process" in (change.err or "")
        assert client.get_services()[0].current == pebble.ServiceStatus.INACTIVE


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
    stop = client.get_change(client.stop_services(["svc", "idle"]))
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
        while client.get_change(start_id).tasks[0].status != "Doing":
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


def test_send_signal(client: pebble.Client, tmp_path: Path):
    out = tmp_path / "hup"
    script = f'trap "echo hup >> {out}" HUP; while true; do sleep 0.05; done'
    client.add_layer("l", service_layer("svc", f"sh -c '{script}'"))
    client.replan_services()
    client.send_signal("SIGHUP", ["svc"])
    deadline = time.monotonic() + 5
    while not out.exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with pytest.raises(pebble.APIError) as error:
        client.send_signal("SIGHUP", ["ghost"])
    assert error.value.code == 500
    assert error.value.message == 'cannot send signal to "ghost": service is not running'
    with pytest.raises(pebble.APIError) as error:
        client.send_signal("SIGNOTHING", ["svc"])
    assert error.value.message == 'cannot send signal to "svc": invalid signal name "SIGNOTHING"'


def test_changes_list_get_wait_and_errors(standin: PebbleStandin, client: pebble.Client):
    client.add_layer("l", service_layer("svc", "sleep 60"))
    first = client.replan_services()
    client.stop_services(["svc"])
    every = client.get_changes(select=pebble.ChangeState.ALL)
    assert [c.kind for c in every] == ["replan", "stop"]
    assert client.get_changes(select=pebble.ChangeState.IN_PROGRESS) == []
    assert [c.kind for c in client.get_changes(select=pebble.ChangeState.ALL, service="svc")] == [
        "replan",
        "stop",
    ]
    assert client.get_changes(select=pebble.ChangeState.ALL, service="other") == []
    assert client.wait_change(first).id == first

    with pytest.raises(pebble.APIError) as error:
        client.get_change(pebble.ChangeID("999"))
    assert error.value.code == 404
    assert error.value.message == 'cannot find change with id "999"'
    with pytest.raises(pebble.APIError) as error:
        client.abort_change(first)
    assert error.value.code == 400
    assert error.value.message == f"cannot abort change {first} with nothing pending"
    status, _, body = raw(standin, "GET", "/v1/changes?select=some")
    assert (status, body["result"]["message"]) == (
        400,
        "select should be one of: all,in-progress,ready",
    )


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


def test_push_pull_roundtrip(client: pebble.Client, root: Path):
    client.push("/etc/app/conf.bin", b"\x00\x01binary\xff", make_dirs=True, permissions=0o600)
    host = root / "etc" / "app" / "conf.bin"
    assert host.read_bytes() == b"\x00\x01binary\xff"
    assert host.stat().st_mode & 0o777 == 0o600
    assert (root / "etc" / "app").stat().st_mode & 0o777 == 0o755
    with client.pull("/etc/app/conf.bin", encoding=None) as f:
        assert f.read() == b"\x00\x01binary\xff"
    client.push("/etc/app/text", "h\u00e9llo")
    with client.pull("/etc/app/text") as f:
        assert f.read() == "h\u00e9llo"


def test_push_and_make_dir_with_owner_and_bad_owner_or_permissions(
    client: pebble.Client, root: Path
):
    me = pwd.getpwuid(os.getuid())
    client.push("/owned", "x", user=me.pw_name, user_id=me.pw_uid)
    assert (root / "owned").stat().st_uid == me.pw_uid
    assert (root / "owned").stat().st_gid == me.pw_gid
    client.make_dir("/owned-dir", user_id=me.pw_uid)
    assert (root / "owned-dir").stat().st_uid == me.pw_uid
    info = client.list_files("/owned")[0]
    assert (info.user_id, info.user, info.group_id) == (me.pw_uid, me.pw_name, me.pw_gid)

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


def test_pull_errors(client: pebble.Client, root: Path):
    with pytest.raises(pebble.PathError) as error:
        client.pull("/nope")
    assert error.value.kind == "not-found"
    assert error.value.message == "stat /nope: no such file or directory"
    (root / "adir").mkdir()
    with pytest.raises(pebble.PathError) as error:
        client.pull("/adir")
    assert (error.value.kind, error.value.message) == (
        "generic-file-error",
        'can only read a regular file: "/adir"',
    )


def test_read_of_several_paths_in_one_request(standin: PebbleStandin, client: pebble.Client):
    client.push("/a", "A")
    response = client._request_raw(  # the multipart answer itself, as ops' parser reads it
        "GET",
        "/v1/files",
        {"action": "read", "path": ["/a", "/b"]},
        {"Accept": "multipart/form-data"},
    )
    assert response.headers.get_content_type() == "multipart/form-data"
    boundary = response.headers.get_param("boundary")
    body = response.read()
    parts = body.split(f"--{boundary}".encode())
    assert parts[0] == b""
    assert parts[-1] == b"--\r\n"
    assert b'name="files"; filename="/a"' in parts[1]
    assert parts[1].endswith(b"\r\n\r\nA\r\n")
    metadata = json.loads(parts[2].split(b"\r\n\r\n", 1)[1])
    assert metadata == {
        "type": "sync",
        "status-code": 200,
        "status": "OK",
        "result": [
            {"path": "/a"},
            {
                "path": "/b",
                "error": {"message": "stat /b: no such file or directory", "kind": "not-found"},
            },
        ],
    }


def test_pull_needs_multipart_accept(standin: PebbleStandin):
    status, _, body = raw(standin, "GET", "/v1/files?action=read&path=/x")
    assert (status, body["result"]["message"]) == (400, "must accept multipart/form-data")


def test_list_files_make_dir_and_remove(client: pebble.Client, root: Path):
    client.make_dir("/data/sub", make_parents=True, permissions=0o750)
    assert (root / "data" / "sub").stat().st_mode & 0o777 == 0o750
    client.push("/data/a.txt", "aaa")
    client.push("/data/b.log", "b")
    listing = client.list_files("/data")
    assert [(f.name, f.type, f.path) for f in listing] == [
        ("a.txt", pebble.FileType.FILE, "/data/a.txt"),
        ("b.log", pebble.FileType.FILE, "/data/b.log"),
        ("sub", pebble.FileType.DIRECTORY, "/data/sub"),
    ]
    assert listing[0].size == 3
    assert listing[2].size is None
    assert listing[2].permissions == 0o750
    assert [f.name for f in client.list_files("/data", pattern="*.txt")] == ["a.txt"]
    itself = client.list_files("/data", itself=True)
    assert [(f.name, f.path, f.type) for f in itself] == [
        ("data", "/data", pebble.FileType.DIRECTORY)
    ]

    with pytest.raises(pebble.PathError) as error:
        client.make_dir("/data/sub")
    assert error.value.kind == "generic-file-error"
    assert error.value.message == "mkdir /data/sub: file exists"
    with pytest.raises(pebble.PathError) as error:
        client.make_dir("/not/there")
    assert error.value.kind == "not-found"
    with pytest.raises(pebble.PathError) as error:
        client.remove_path("/data")
    assert error.value.kind == "generic-file-error"
    assert error.value.message == "remove /data: directory not empty"

    client.remove_path("/data/a.txt")
    client.remove_path("/data", recursive=True)
    assert not (root / "data").exists()
    client.remove_path("/data", recursive=True)  # nothing there is fine with recursive
    with pytest.raises(pebble.PathError) as error:
        client.remove_path("/data")
    assert error.value.kind == "not-found"


def test_list_missing_directory_is_a_404(standin: PebbleStandin, client: pebble.Client):
    with pytest.raises(pebble.APIError) as error:
        client.list_files("/nowhere")
    assert error.value.code == 404
    assert error.value.body["result"] == {
        "message": "stat /nowhere: no such file or directory",
        "kind": "not-found",
    }
    status, _, body = raw(standin, "GET", "/v1/files?action=list&path=relative")
    assert (status, body["result"]["message"]) == (400, 'path must be absolute, got "relative"')


def test_relative_paths_are_refused(client: pebble.Client):
    with pytest.raises(pebble.PathError) as error:
        client.push("relative/file", "x")
    assert error.value.message == 'paths must be absolute, got "relative/file"'


# ---------------------------------------------------------------------------------------------
# Checks and health.


def test_checks_are_performed_and_drive_health(standin: PebbleStandin, client: pebble.Client):
    port = free_port()
    layer: pebble.LayerDict = {
        "services": {
            "web": {
                "override": "replace",
                "command": f"{sys.executable} -m http.server --bind 127.0.0.1 {port}",
                "startup": "enabled",
            }
        },
        "checks": {
            "up": {
                "override": "replace",
                "level": "ready",
                "period": "100ms",
                "threshold": 1,
                "http": {"url": f"http://127.0.0.1:{port}/"},
            },
            "port": {
                "override": "replace",
                "level": "alive",
                "period": "100ms",
                "threshold": 1,
                "tcp": {"port": port, "host": "127.0.0.1"},
            },
        },
    }
    client.add_layer("l", layer)
    client.replan_services()
    wait_until_serving(port)

    def statuses() -> dict[str, pebble.CheckStatus | str]:
        return {c.name: c.status for c in client.get_checks()}

    deadline = time.monotonic() + 10
    while not all(c.successes for c in client.get_checks()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert statuses() == {"port": pebble.CheckStatus.UP, "up": pebble.CheckStatus.UP}
    perform = client.get_change(client.get_checks(names=["up"])[0].change_id)  # type: ignore[arg-type]
    assert (perform.kind, perform.summary, perform.ready) == (
        "perform-check",
        'Perform HTTP check "up"',
        False,
    )
    assert [c.name for c in client.get_checks(level=pebble.CheckLevel.ALIVE)] == ["port"]
    assert raw(standin, "GET", "/v1/health?level=ready")[0] == 200

    client.stop_services(["web"])
    while statuses() != {"port": pebble.CheckStatus.DOWN, "up": pebble.CheckStatus.DOWN}:
        assert time.monotonic() < deadline + 10
        time.sleep(0.05)
    status, _, body = raw(standin, "GET", "/v1/health?level=alive")
    assert (status, body["type"], body["status-code"], body["status"], body["result"]) == (
        502,
        "sync",
        502,
        "Bad Gateway",
        {"healthy": False},
    )
    down = client.get_checks(names=["port"])[0]
    recover = client.get_change(down.change_id)  # type: ignore[arg-type]
    assert (recover.kind, recover.summary) == ("recover-check", 'Recover TCP check "port"')
    failed = client.get_change(
        pebble.ChangeID(
            raw(standin, "GET", "/v1/checks?names=port")[2]["result"][0]["prev-change-id"]
        )
    )
    assert (failed.kind, failed.status, failed.ready) == ("perform-check", "Error", True)
    assert "cannot perform the following tasks:\n- Perform TCP check" in (failed.err or "")

    assert client.stop_checks(["up"]) == ["up"]
    assert client.stop_checks(["up"]) == []
    assert {c.name: c.status for c in client.get_checks()}["up"] == pebble.CheckStatus.INACTIVE
    assert client.start_checks(["up"]) == ["up"]
    with pytest.raises(pebble.APIError) as error:
        client.start_checks(["ghost"])
    assert error.value.code == 400
    assert error.value.message == "cannot start checks: cannot find checks in plan: ghost"


def test_exec_check_refresh_and_plan_changes(standin: PebbleStandin, client: pebble.Client):
    layer: pebble.LayerDict = {
        "checks": {
            "fails": {
                "override": "replace",
                "period": "1h",
                "threshold": 1,
                "exec": {"command": "false"},
            },
            "off": {
                "override": "replace",
                "startup": "disabled",
                "period": "1h",
                "exec": {"command": "true"},
            },
        }
    }
    client.add_layer("l", layer)  # a new plan starts its enabled checks, as Pebble's does
    checks = {c.name: c for c in client.get_checks()}
    assert checks["fails"].status == pebble.CheckStatus.UP
    assert checks["off"].status == pebble.CheckStatus.INACTIVE
    first = checks["fails"].change_id
    assert first is not None

    status, _, body = raw(standin, "POST", "/v1/checks/refresh", {"name": "fails"})
    assert status == 200
    assert body["result"]["error"] == "exit status 1"
    assert body["result"]["info"]["status"] == "down"
    assert body["result"]["info"]["failures"] == 1
    assert raw(standin, "GET", "/v1/health?names=fails")[0] == 502
    assert raw(standin, "GET", "/v1/health?names=off")[0] == 200
    status, _, body = raw(standin, "POST", "/v1/checks/refresh", {"name": "ghost"})
    assert (status, body["result"]["message"]) == (404, 'cannot find check with name "ghost"')

    # A changed check restarts with a new change; its old one is over.
    client.add_layer(
        "l",
        {"checks": {"fails": {"override": "merge", "exec": {"command": "true"}}}},
        combine=True,
    )
    restarted = {c.name: c for c in client.get_checks()}["fails"]
    assert restarted.change_id not in (None, first)
    assert restarted.status == pebble.CheckStatus.UP
    assert client.get_change(first).ready
    status, _, body = raw(standin, "POST", "/v1/checks/refresh", {"name": "fails"})
    assert (status, body["result"]["info"]["successes"], "error" in body["result"]) == (
        200,
        1,
        False,
    )


def test_bad_check_is_refused(client: pebble.Client):
    layer = "checks:\n  c:\n    override: replace\n    period: 1s\n"
    with pytest.raises(pebble.APIError) as error:
        client.add_layer("l", layer)
    assert error.value.message == 'plan must specify one of "http", "tcp", or "exec" for check "c"'


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
