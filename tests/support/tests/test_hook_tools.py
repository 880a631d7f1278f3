"""The emulated hook tools, read by ops' own ``_ModelBackend`` (which parses Juju's answers).

Each test calls the real ops backend in this process with the tools on ``PATH`` and a hook's
``JUJU_*`` environment, so what ops makes of an answer (a value, ``RelationNotFoundError``, a
``ModelError`` with Juju's message) is what the packed charms will make of it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import ops
import pytest
from ops.model import _ModelBackend
from support import juju_hook_tools

MODEL = "m"


def initial_state() -> dict[str, Any]:
    status = {"status": "unknown", "message": "", "since": ""}
    return {
        "model": {"name": MODEL, "uuid": "u", "since": "2026-01-01T00:00:00Z"},
        "apps": {
            "a": {
                "config": {"flag": True, "name": "x", "unset": None},
                "leader": "a/0",
                "units": ["a/0", "a/1"],
                "planned_units": ["a/0", "a/1"],
                "endpoints": {"db": {"role": "requires"}, "peers": {"role": "peers"}},
                "status": dict(status),
            },
            "b": {
                "config": {},
                "leader": "b/0",
                "units": ["b/0"],
                "planned_units": ["b/0"],
                "endpoints": {"db": {"role": "provides"}},
                "status": dict(status),
            },
        },
        "units": {
            unit: {"status": dict(status), "ports": [], "state": {}, "address": "10.1.0.5"}
            for unit in ("a/0", "a/1", "b/0")
        },
        "relations": {
            "3": {
                "id": 3,
                "apps": {"a": "db", "b": "db"},
                "data": {
                    "app:a": {"mine": "1"},
                    "app:b": {"theirs": "2"},
                    "unit:b/0": {"ingress-address": "10.1.0.9"},
                    "unit:a/0": {},
                },
                "members": {"a/0": ["b/0"], "a/1": ["b/0"]},
                "gone_for": [],
            },
            "4": {
                "id": 4,
                "apps": {"a": "peers"},
                "data": {"app:a": {"p": "1"}},
                "members": {},
                "gone_for": [],
            },
        },
        "actions": {
            "act-1": {
                "name": "go",
                "unit": "a/0",
                "params": {"n": 1, "deep": {"k": "v"}},
                "results": {},
                "status": "running",
                "message": "",
                "log": [],
            }
        },
        "log": [],
        "calls": [],
    }


@pytest.fixture
def model_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    tools = tmp_path / "tools"
    juju_hook_tools.write_tools(tools, tmp_path, sys.executable)
    path = tmp_path / "ctx.json"
    path.write_text(json.dumps(initial_state()))
    monkeypatch.setenv("PATH", f"{tools}:/usr/bin:/bin")
    monkeypatch.setenv("JUJU_CONTEXT_ID", "ctx")
    monkeypatch.setenv("JUJU_MODEL_NAME", MODEL)
    monkeypatch.setenv("JUJU_MODEL_UUID", "u")
    monkeypatch.setenv("JUJU_VERSION", "3.6.14")
    monkeypatch.setenv("JUJU_UNIT_NAME", "a/0")
    monkeypatch.setenv("JUJU_DISPATCH_PATH", "hooks/db-relation-changed")
    monkeypatch.setenv("JUJU_RELATION", "db")
    monkeypatch.setenv("JUJU_RELATION_ID", "db:3")
    monkeypatch.setenv("JUJU_REMOTE_APP", "b")
    monkeypatch.setenv("JUJU_REMOTE_UNIT", "b/0")
    monkeypatch.setenv("JUJU_ACTION_UUID", "act-1")
    return path


def backend(unit: str = "a/0", monkeypatch: pytest.MonkeyPatch | None = None) -> _ModelBackend:
    if monkeypatch is not None:
        monkeypatch.setenv("JUJU_UNIT_NAME", unit)
    return _ModelBackend()


def saved(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def test_relation_tools(model_file: Path):
    b = backend()
    assert b.relation_ids("db") == [3]
    assert b.relation_ids("peers") == [4]
    assert b.relation_list(3) == ["b/0"]
    assert b.relation_remote_app_name(3) == "b"
    assert b.relation_get(3, "b", is_app=True) == {"theirs": "2"}
    assert b.relation_get(3, "b/0", is_app=False) == {"ingress-address": "10.1.0.9"}
    assert b.relation_get(3, "a", is_app=True) == {"mine": "1"}  # the leader reads its own
    b.relation_set(3, {"new": "v", "mine": ""}, is_app=True)  # empty deletes, as in Juju
    b.relation_set(3, {"u": "1"}, is_app=False)
    data = saved(model_file)["relations"]["3"]["data"]
    assert data["app:a"] == {"new": "v"}
    assert data["unit:a/0"] == {"u": "1"}
    with pytest.raises(ops.RelationNotFoundError):
        b.relation_get(99, "b", is_app=True)
    with pytest.raises(ops.RelationNotFoundError):
        b.relation_list(99)


# ops reports these refusals as security events, through juju-log when its handler is set up.
@pytest.mark.filterwarnings("ignore:JujuLogHandler is not set up:RuntimeWarning")
def test_follower_cannot_touch_its_app_databag(model_file: Path, monkeypatch: pytest.MonkeyPatch):
    b = backend("a/1", monkeypatch)
    assert b.is_leader() is False
    # Juju refuses both with wording that ops reports as an authorisation failure, not as a
    # gone relation (see _ModelBackend._relation_is_gone).
    with pytest.raises(ops.ModelError) as read:
        b.relation_get(3, "a", is_app=True)
    assert not isinstance(read.value, ops.RelationNotFoundError)
    assert "permission denied" in str(read.value)
    with pytest.raises(ops.ModelError) as write:
        b.relation_set(3, {"k": "v"}, is_app=True)
    assert not isinstance(write.value, ops.RelationNotFoundError)
    assert "cannot write relation settings" in str(write.value)
    assert b.relation_get(4, "a", is_app=True) == {"p": "1"}  # a peer app databag: readable
    with pytest.raises(ops.ModelError, match="not the leader"):
        b.status_set("active", "x", is_app=True)


def test_config_leader_status_and_goal_state(model_file: Path):
    b = backend()
    assert b.config_get() == {"flag": True, "name": "x"}  # unset, no default: left out
    assert b.is_leader() is True
    b.status_set("blocked", "-starts with a dash")
    assert b.status_get() == {"status": "blocked", "message": "-starts with a dash"}
    b.status_set("active", "", is_app=True)
    assert b.status_get(is_app=True) == {"status": "active", "message": ""}
    refused = subprocess.run(
        ["status-set", "error", "no"], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2  # not a status a charm may set
    assert b.planned_units() == 2
    assert saved(model_file)["apps"]["a"]["status"]["status"] == "active"


def test_state_ports_network_version_and_log(model_file: Path):
    b = backend()
    # ops' controller storage uses state-set/state-get through ops.hookcmds
    from ops import hookcmds

    hookcmds.state_set({"k": "v", "gone": "x"})
    hookcmds.state_delete("gone")
    assert hookcmds.state_get(None) == {"k": "v"}
    assert hookcmds.state_get("k") == "v"
    b.open_port("tcp", 8080)
    b.open_port("tcp", 8081)
    b.close_port("tcp", 8081)
    assert [(p.protocol, p.port) for p in b.opened_ports()] == [("tcp", 8080)]
    network = b.network_get("db", 3)
    assert network["ingress-addresses"] == ["10.1.0.5"]
    b.application_version_set("1.2")
    b.juju_log("WARNING", "hello")
    state = saved(model_file)
    assert state["apps"]["a"]["workload_version"] == "1.2"
    assert state["log"][-1] == {"unit": "a/0", "level": "WARNING", "message": "hello"}
    assert state["units"]["a/0"]["ports"] == ["8080/tcp"]


def test_action_tools(model_file: Path):
    b = backend()
    assert b.action_get() == {"n": 1, "deep": {"k": "v"}}
    b.action_set({"results": "[1]", "nested": {"key": "v"}})
    b.action_log("sending")
    refused = subprocess.run(
        ["action-set", "Bad_Key=x"], capture_output=True, text=True, check=False
    )
    assert refused.returncode == 2  # ops refuses such keys before asking; Juju refuses them too
    b.action_fail("went wrong")
    action = saved(model_file)["actions"]["act-1"]
    assert action["results"] == {"results": "[1]", "nested": {"key": "v"}}
    assert action["log"] == ["sending"]
    assert (action["status"], action["message"]) == ("failed", "went wrong")


def test_usage_errors_exit_2_with_juju_wording(model_file: Path):
    run = subprocess.run(["relation-set", "novalue"], capture_output=True, text=True, check=False)
    assert run.returncode == 2
    assert run.stderr.startswith("ERROR ")
    run = subprocess.run(
        ["relation-get", "-r", "db:99", "-", "b/0"], capture_output=True, text=True, check=False
    )
    assert (run.returncode, run.stderr) == (
        2,
        'ERROR invalid value "db:99" for option -r: relation not found\n',
    )
    calls = saved(model_file)["calls"]
    assert [c["exit"] for c in calls[-2:]] == [2, 2]
