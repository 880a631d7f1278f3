"""Juju's hook tools (``relation-get``, ``status-set``, ...) backed by a JSON file.

A unit agent gives a hook its tools on ``PATH``; each one talks to the agent about the hook's
context (``JUJU_CONTEXT_ID``). Here each tool is a two-line shell script that runs this file as
``python3 juju_hook_tools.py <state-dir> <tool> ARGS``. The tool reads the hook's context from the
``JUJU_*`` environment the charm got (unit, relation, remote unit and app, action), and the model
from ``<state-dir>/<JUJU_CONTEXT_ID>.json``: a copy of the model that the harness
(``juju_unit_agent``) made for this hook, and keeps only when the hook succeeds, as Juju commits a
hook's relation settings, status and state only when it exits 0.

Answers follow Juju 3.6's hook tools: ``--format=json`` output, ``ERROR <message>`` on stderr with
exit 1 for a refused request and exit 2 for a usage error, the same wording as Juju where a caller
(ops' ``_ModelBackend``) reads it ("relation not found", "permission denied", "cannot write
relation settings", "not the leader"). docs/contributing/dispatch-tier.md says how each tool was
checked.

Every call is appended to the model's ``calls`` list (unit, tool, arguments, exit code), so tests
can see which tools a charm used. Only the standard library is used: the tools run under the test's
Python, whatever the charm's is.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import re
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

#: Every tool this file answers; anything else a charm calls is not on PATH ("not found").
TOOLS = (
    "action-fail",
    "action-get",
    "action-log",
    "action-set",
    "application-version-set",
    "close-port",
    "config-get",
    "goal-state",
    "is-leader",
    "juju-log",
    "network-get",
    "open-port",
    "opened-ports",
    "relation-get",
    "relation-ids",
    "relation-list",
    "relation-model-get",
    "relation-set",
    "state-delete",
    "state-get",
    "state-set",
    "status-get",
    "status-set",
)

SETTABLE_STATUSES = ("maintenance", "blocked", "waiting", "active")
ACTION_KEY = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")
RESERVED_ACTION_KEYS = ("stdout", "stdout-encoding", "stderr", "stderr-encoding")
PORT_SPEC = re.compile(r"^(?:(\d+)(?:-(\d+))?(?:/(tcp|udp))?|icmp)$")


class HookToolError(Exception):
    """A refusal: printed as ``ERROR <message>``; exit 1 (2 for a usage error)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors the way Juju's tools do (``ERROR ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise HookToolError(message, code=2)


def now() -> str:
    """The time in RFC 3339, as Juju writes ``since``."""
    return (
        datetime.datetime.now(datetime.timezone.utc)
        .isoformat(timespec="seconds")
        .replace("+00:00", "Z")
    )


# ------------------------------------------------------------------------------------- the model


@contextmanager
def locked_state(path: Path) -> Iterator[dict[str, Any]]:
    """Open the model file under an exclusive lock; write it back when the block succeeds."""
    with path.open("r+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        state: dict[str, Any] = json.load(handle)
        yield state
        handle.seek(0)
        handle.truncate()
        json.dump(state, handle, indent=1, sort_keys=True)


class Context:
    """One hook's view of the model: who runs, in which relation, with which data."""

    def __init__(self, state: dict[str, Any], env: dict[str, str]) -> None:
        self.state = state
        self.env = env
        self.unit: str = env.get("JUJU_UNIT_NAME", "")
        if self.unit not in state["units"]:
            raise HookToolError(f"unit {self.unit!r} is not in this model")
        self.app = self.unit.split("/")[0]
        self.relation_id = env.get("JUJU_RELATION_ID", "")
        self.remote_unit = env.get("JUJU_REMOTE_UNIT", "")
        self.remote_app = env.get("JUJU_REMOTE_APP", "")
        self.action_uuid = env.get("JUJU_ACTION_UUID", "")

    # ------------------------------------------------------------------------------- relations

    def is_leader(self) -> bool:
        return self.state["apps"][self.app]["leader"] == self.unit

    def visible_relations(self) -> dict[str, dict[str, Any]]:
        """Relations this unit is in and has not finished (its relation-broken not yet run)."""
        return {
            rid: rel
            for rid, rel in self.state["relations"].items()
            if self.app in rel["apps"] and self.unit not in rel.get("gone_for", [])
        }

    def relation(self, ref: str | None) -> tuple[str, dict[str, Any]]:
        """The relation named by ``-r`` (``ID`` or ``endpoint:ID``), else the hook's own."""
        if ref is None:
            if not self.relation_id:
                raise HookToolError("no relation id specified")
            ref = self.relation_id
        endpoint, _, number = ref.rpartition(":")
        relations = self.visible_relations()
        rel = relations.get(number)
        if rel is None or (endpoint and rel["apps"][self.app] != endpoint):
            raise HookToolError(f'invalid value "{ref}" for option -r: relation not found', 2)
        return number, rel

    def remote_app_of(self, rel: dict[str, Any]) -> str:
        others = [app for app in rel["apps"] if app != self.app]
        return others[0] if others else self.app  # a peer relation's remote app is its own

    def relation_key(self, rel: dict[str, Any]) -> str:
        return f"{rel['apps'][self.app]}:{rel['id']}"


# ------------------------------------------------------------------------------------ the tools


def _dump(value: Any, fmt: str) -> str:  # noqa: PLR0911 - one return per kind of value
    if fmt == "json":
        return json.dumps(value)
    # Juju's default ("smart") format: plain text for strings and booleans, YAML-ish otherwise.
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(str(item) for item in value)
    if isinstance(value, dict):
        return "\n".join(f"{key}: {item}" for key, item in value.items())
    return str(value)


def _format_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", default="smart", choices=("json", "yaml", "smart"))
    parser.add_argument("-o", "--output", default=None)


def _out(args: argparse.Namespace, value: Any) -> str:
    text = _dump(value, args.format)
    if args.output:
        Path(args.output).write_text(text + "\n")
        return ""
    return text


def _read_settings_file(path: str, stdin: str) -> dict[str, str]:
    raw = stdin if path == "-" else Path(path).read_text()
    try:
        data = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError as e:
        raise HookToolError(f"cannot parse settings file: {e}") from e
    if not isinstance(data, dict):
        raise HookToolError("settings file must hold a map")
    result: dict[str, str] = {}
    for key, value in data.items():
        if not isinstance(value, str):
            raise HookToolError(f"value of {key!r} must be a string")
        result[str(key)] = value
    return result


def _key_values(pairs: list[str]) -> dict[str, str]:
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise HookToolError(f'expected "key=value", got "{pair}"', 2)
        result[key] = value
    return result


def relation_get(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="relation-get")
    p.add_argument("-r", "--relation", dest="relation")
    p.add_argument("--app", action="store_true")
    _format_arg(p)
    p.add_argument("key", nargs="?", default="-")
    p.add_argument("member", nargs="?")
    args = p.parse_args(argv)
    _rid, rel = ctx.relation(args.relation)
    if args.app:
        member = args.member or (ctx.remote_app if args.relation is None else "")
        if not member:
            raise HookToolError("no unit or application specified")
        if member not in rel["apps"]:
            raise HookToolError(
                f'application "{member}" is not in the relation: permission denied'
            )
        peer = len(rel["apps"]) == 1
        if member == ctx.app and not peer and not ctx.is_leader():
            raise HookToolError("permission denied")
        bag = rel["data"].get(f"app:{member}", {})
    else:
        member = args.member or (ctx.remote_unit if args.relation is None else "")
        if not member:
            raise HookToolError("no unit or application specified")
        if member.split("/")[0] not in rel["apps"]:
            raise HookToolError(f'cannot read settings for unit "{member}": permission denied')
        if f"unit:{member}" not in rel["data"]:
            raise HookToolError(
                f'cannot read settings for unit "{member}" in relation '
                f'"{ctx.relation_key(rel)}": unit "{member}": settings not found'
            )
        bag = rel["data"][f"unit:{member}"]
    if args.key == "-":
        return _out(args, dict(bag))
    return _out(args, bag.get(args.key))


def relation_set(ctx: Context, argv: list[str], stdin: str) -> str:
    p = _Parser(prog="relation-set")
    p.add_argument("-r", "--relation", dest="relation")
    p.add_argument("--app", action="store_true")
    p.add_argument("--file", dest="file")
    p.add_argument("pairs", nargs="*")
    args = p.parse_args(argv)
    _rid, rel = ctx.relation(args.relation)
    settings: dict[str, str] = {}
    if args.file:
        settings.update(_read_settings_file(args.file, stdin))
    settings.update(_key_values(args.pairs))
    if args.app:
        if not ctx.is_leader():
            raise HookToolError("cannot write relation settings")
        bag = rel["data"].setdefault(f"app:{ctx.app}", {})
    else:
        bag = rel["data"].setdefault(f"unit:{ctx.unit}", {})
    for key, value in settings.items():
        if value == "":
            bag.pop(key, None)
        else:
            bag[key] = value
    return ""


def relation_ids(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="relation-ids")
    _format_arg(p)
    p.add_argument("endpoint", nargs="?")
    args = p.parse_args(argv)
    endpoint = args.endpoint
    if endpoint is None:
        if not ctx.relation_id:
            raise HookToolError("no endpoint name specified", 2)
        endpoint = ctx.state["relations"][ctx.relation_id]["apps"][ctx.app]
    if endpoint not in ctx.state["apps"][ctx.app]["endpoints"]:
        raise HookToolError(f'invalid value "{endpoint}" for option: no endpoint named', 2)
    ids = [
        f"{endpoint}:{rid}"
        for rid, rel in sorted(ctx.visible_relations().items(), key=lambda item: int(item[0]))
        if rel["apps"][ctx.app] == endpoint
    ]
    return _out(args, ids)


def relation_list(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="relation-list")
    p.add_argument("-r", "--relation", dest="relation")
    p.add_argument("--app", action="store_true")
    _format_arg(p)
    args = p.parse_args(argv)
    _rid, rel = ctx.relation(args.relation)
    if args.app:
        return _out(args, ctx.remote_app_of(rel))
    return _out(args, sorted(rel.get("members", {}).get(ctx.unit, [])))


def relation_model_get(ctx: Context, argv: list[str], _stdin: str) -> str:
    """The model of the relation's remote app: ``{"uuid"}`` (this model's, unless it is remote)."""
    p = _Parser(prog="relation-model-get")
    p.add_argument("-r", "--relation", dest="relation")
    _format_arg(p)
    args = p.parse_args(argv)
    _rid, rel = ctx.relation(args.relation)
    remote = ctx.state["apps"].get(ctx.remote_app_of(rel), {})
    return _out(args, {"uuid": remote.get("model_uuid") or ctx.state["model"]["uuid"]})


def config_get(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="config-get")
    p.add_argument("-a", "--all", action="store_true")
    _format_arg(p)
    p.add_argument("key", nargs="?")
    args = p.parse_args(argv)
    config = ctx.state["apps"][ctx.app]["config"]
    if args.key is not None:
        return _out(args, config.get(args.key))
    # Without --all, options with neither a value nor a default are left out.
    return _out(args, {k: v for k, v in config.items() if args.all or v is not None})


def is_leader(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="is-leader")
    _format_arg(p)
    return _out(p.parse_args(argv), ctx.is_leader())


def _bool_flag(value: str) -> str:
    """A boolean flag's value as Go's strconv.ParseBool reads it (``--application=True``)."""
    if value.lower() in ("1", "t", "true"):
        return "true"
    if value.lower() in ("0", "f", "false"):
        return "false"
    raise HookToolError(f'invalid boolean value "{value}" for flag --application', 2)


def status_set(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="status-set")
    p.add_argument("--application", nargs="?", const="true", default="false")
    p.add_argument("status")
    p.add_argument("message", nargs="?", default="")
    args = p.parse_args(argv)
    args.application = _bool_flag(args.application)
    if args.status not in SETTABLE_STATUSES:
        raise HookToolError(
            f'invalid status "{args.status}", expected one of {list(SETTABLE_STATUSES)}', 2
        )
    record = {"status": args.status, "message": args.message, "since": now()}
    if args.application == "true":
        if not ctx.is_leader():
            raise HookToolError("this unit is not the leader")
        ctx.state["apps"][ctx.app]["status"] = record
    else:
        ctx.state["units"][ctx.unit]["status"] = record
    ctx.state["units"][ctx.unit].setdefault("status_history", []).append(
        {"app" if args.application == "true" else "unit": [args.status, args.message]}
    )
    return ""


def _status_view(record: dict[str, Any], include_data: bool) -> dict[str, Any]:
    view: dict[str, Any] = {"message": record["message"], "status": record["status"]}
    if include_data:
        view["status-data"] = {}
    return view


def status_get(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="status-get")
    p.add_argument("--application", nargs="?", const="true", default="false")
    p.add_argument("--include-data", action="store_true")
    _format_arg(p)
    args = p.parse_args(argv)
    args.application = _bool_flag(args.application)
    if args.application == "true":
        if not ctx.is_leader():
            raise HookToolError("finding application status: this unit is not the leader")
        app = ctx.state["apps"][ctx.app]
        view = _status_view(app["status"], args.include_data)
        view["units"] = {
            unit: _status_view(ctx.state["units"][unit]["status"], args.include_data)
            for unit in app["units"]
        }
        return _out(args, {"application-status": view})
    record = ctx.state["units"][ctx.unit]["status"]
    if args.format != "json" and not args.include_data:
        return record["status"]
    return _out(args, _status_view(record, args.include_data))


def juju_log(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="juju-log")
    p.add_argument("-l", "--log-level", default="INFO")
    p.add_argument("--debug", action="store_true")
    p.add_argument("message", nargs="+")
    args = p.parse_args(argv)
    level = "DEBUG" if args.debug else args.log_level.upper()
    ctx.state["log"].append({"unit": ctx.unit, "level": level, "message": " ".join(args.message)})
    return ""


def _action(ctx: Context) -> dict[str, Any]:
    if not ctx.action_uuid or ctx.action_uuid not in ctx.state["actions"]:
        raise HookToolError("not running an action")
    return ctx.state["actions"][ctx.action_uuid]


def action_get(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="action-get")
    _format_arg(p)
    p.add_argument("key", nargs="?")
    args = p.parse_args(argv)
    params = _action(ctx)["params"]
    if args.key is None:
        return _out(args, params)
    value: Any = params
    for part in args.key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return _out(args, value)


def action_set(ctx: Context, argv: list[str], _stdin: str) -> str:
    action = _action(ctx)
    pairs = _key_values(argv)
    for key, value in pairs.items():
        parts = key.split(".")
        if not all(ACTION_KEY.match(part) for part in parts):
            raise HookToolError(
                f'key "{key}" must start and end with lowercase alphanumeric, '
                "and contain only lowercase alphanumeric, hyphens and periods",
                2,
            )
        if parts[0] in RESERVED_ACTION_KEYS:
            raise HookToolError(f'cannot set reserved action key "{parts[0]}"', 2)
        node = action["results"]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return ""


def action_fail(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="action-fail")
    p.add_argument("message", nargs="?", default="action failed without reason given")
    args = p.parse_args(argv)
    action = _action(ctx)
    action["status"] = "failed"
    action["message"] = args.message
    return ""


def action_log(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="action-log")
    p.add_argument("message", nargs="+")
    args = p.parse_args(argv)
    _action(ctx)["log"].append(" ".join(args.message))
    return ""


def goal_state(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="goal-state")
    _format_arg(p)
    args = p.parse_args(argv)
    app = ctx.state["apps"][ctx.app]
    since = ctx.state["model"]["since"]
    units = {unit: {"status": "active", "since": since} for unit in app["planned_units"]}
    relations: dict[str, dict[str, Any]] = {}
    for rel in ctx.state["relations"].values():
        if ctx.app not in rel["apps"] or rel.get("removing"):
            continue
        endpoint = rel["apps"][ctx.app]
        goals = relations.setdefault(endpoint, {})
        for other in rel["apps"]:
            if other == ctx.app and len(rel["apps"]) > 1:
                continue
            goals[other] = {"status": "joined", "since": since}
            for unit in ctx.state["apps"][other]["planned_units"]:
                if unit != ctx.unit:
                    goals[unit] = {"status": "active", "since": since}
    return _out(args, {"units": units, "relations": relations})


def state_get(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="state-get")
    _format_arg(p)
    p.add_argument("--strict", action="store_true")
    p.add_argument("key", nargs="?")
    args = p.parse_args(argv)
    store = ctx.state["units"][ctx.unit]["state"]
    if args.key is None:
        return _out(args, dict(store))
    if args.key not in store and args.strict:
        raise HookToolError(f'key "{args.key}" not found')
    return _out(args, store.get(args.key))


def state_set(ctx: Context, argv: list[str], stdin: str) -> str:
    p = _Parser(prog="state-set")
    p.add_argument("--file", dest="file")
    p.add_argument("pairs", nargs="*")
    args = p.parse_args(argv)
    settings: dict[str, str] = {}
    if args.file:
        settings.update(_read_settings_file(args.file, stdin))
    settings.update(_key_values(args.pairs))
    store = ctx.state["units"][ctx.unit]["state"]
    for key, value in settings.items():
        if value == "":
            store.pop(key, None)
        else:
            store[key] = value
    return ""


def state_delete(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="state-delete")
    p.add_argument("key")
    args = p.parse_args(argv)
    ctx.state["units"][ctx.unit]["state"].pop(args.key, None)
    return ""


def _port_spec(spec: str) -> str:
    match = PORT_SPEC.match(spec)
    if match is None:
        raise HookToolError(f'invalid port "{spec}"', 2)
    if spec == "icmp":
        return "icmp"
    low, high, protocol = match.group(1), match.group(2), match.group(3) or "tcp"
    if not 1 <= int(low) <= 65535 or (high and not int(low) <= int(high) <= 65535):
        raise HookToolError(f'invalid port "{spec}"', 2)
    return f"{low}-{high}/{protocol}" if high else f"{low}/{protocol}"


def _ports(ctx: Context, argv: list[str], prog: str) -> tuple[list[str], str]:
    p = _Parser(prog=prog)
    p.add_argument("--endpoints", default="")
    p.add_argument("port")
    args = p.parse_args(argv)
    return ctx.state["units"][ctx.unit]["ports"], _port_spec(args.port)


def open_port(ctx: Context, argv: list[str], _stdin: str) -> str:
    ports, spec = _ports(ctx, argv, "open-port")
    if spec not in ports:
        ports.append(spec)
    return ""


def close_port(ctx: Context, argv: list[str], _stdin: str) -> str:
    ports, spec = _ports(ctx, argv, "close-port")
    if spec in ports:
        ports.remove(spec)
    return ""


def opened_ports(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="opened-ports")
    p.add_argument("--endpoints", action="store_true")
    _format_arg(p)
    args = p.parse_args(argv)
    ports = ctx.state["units"][ctx.unit]["ports"]
    if args.endpoints:
        return _out(args, [f"{port} (*)" for port in ports])
    return _out(args, list(ports))


def application_version_set(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="application-version-set")
    p.add_argument("version")
    args = p.parse_args(argv)
    ctx.state["apps"][ctx.app]["workload_version"] = args.version
    return ""


def network_get(ctx: Context, argv: list[str], _stdin: str) -> str:
    p = _Parser(prog="network-get")
    p.add_argument("-r", "--relation", dest="relation")
    p.add_argument("--primary-address", action="store_true")
    p.add_argument("--bind-address", action="store_true")
    p.add_argument("--ingress-address", action="store_true")
    p.add_argument("--egress-subnets", action="store_true")
    _format_arg(p)
    p.add_argument("binding")
    args = p.parse_args(argv)
    if args.relation is not None:
        ctx.relation(args.relation)
    if args.binding not in ctx.state["apps"][ctx.app]["endpoints"]:
        raise HookToolError(f'no network config found for binding "{args.binding}"')
    address = ctx.state["units"][ctx.unit]["address"]
    if args.primary_address or args.bind_address or args.ingress_address:
        return _out(args, address)
    info = {
        "bind-addresses": [
            {
                "mac-address": "",
                "interface-name": "eth0",
                "addresses": [{"hostname": "", "value": address, "cidr": f"{address}/32"}],
                "macaddress": "",
                "interfacename": "eth0",
            }
        ],
        "egress-subnets": [f"{address}/32"],
        "ingress-addresses": [address],
    }
    return _out(args, info)


HANDLERS: dict[str, Callable[[Context, list[str], str], str]] = {
    "action-fail": action_fail,
    "action-get": action_get,
    "action-log": action_log,
    "action-set": action_set,
    "application-version-set": application_version_set,
    "close-port": close_port,
    "config-get": config_get,
    "goal-state": goal_state,
    "is-leader": is_leader,
    "juju-log": juju_log,
    "network-get": network_get,
    "open-port": open_port,
    "opened-ports": opened_ports,
    "relation-get": relation_get,
    "relation-ids": relation_ids,
    "relation-list": relation_list,
    "relation-model-get": relation_model_get,
    "relation-set": relation_set,
    "state-delete": state_delete,
    "state-get": state_get,
    "state-set": state_set,
    "status-get": status_get,
    "status-set": status_set,
}
assert set(HANDLERS) == set(TOOLS)


def run_tool(
    state_path: Path, tool: str, argv: list[str], env: dict[str, str], stdin: str
) -> tuple[int, str, str]:
    """Run one tool against the model file; return ``(exit code, stdout, stderr)``."""
    with locked_state(state_path) as state:
        code, out, err = 0, "", ""
        try:
            out = HANDLERS[tool](Context(state, env), argv, stdin)
        except HookToolError as e:
            code, err = e.code, f"ERROR {e}\n"
        state["calls"].append(
            {"unit": env.get("JUJU_UNIT_NAME", ""), "tool": tool, "args": argv, "exit": code}
        )
    if out and not out.endswith("\n"):
        out += "\n"
    return code, out, err


def write_tools(directory: Path, state_dir: Path, python: str) -> None:
    """Write one executable per tool into ``directory`` (put it on the hook's PATH)."""
    directory.mkdir(parents=True, exist_ok=True)
    here = Path(__file__).resolve()
    for tool in TOOLS:
        path = directory / tool
        path.write_text(f'#!/bin/sh\nexec "{python}" -I -S "{here}" "{state_dir}" {tool} "$@"\n')
        path.chmod(0o755)


def main(argv: list[str]) -> int:
    """Entry point of the tool scripts: ``juju_hook_tools.py STATE_DIR TOOL ARGS...``."""
    state_dir, tool, rest = Path(argv[0]), argv[1], argv[2:]
    context_id = os.environ.get("JUJU_CONTEXT_ID", "")
    state_path = state_dir / f"{context_id}.json"
    if not context_id or not state_path.exists():
        sys.stderr.write(f"ERROR {tool}: no hook context (JUJU_CONTEXT_ID={context_id!r})\n")
        return 1
    # Only `--file -` reads standard input (as in Juju); never block on an inherited one otherwise.
    stdin = sys.stdin.read() if "-" in rest and "--file" in rest and sys.stdin else ""
    code, out, err = run_tool(state_path, tool, rest, dict(os.environ), stdin)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
