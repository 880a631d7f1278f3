"""A Pebble API server stand-in: HTTP over a Unix socket that really runs the plan's services.

Pebble's Go module is not available to the test tiers, so this module answers the part of
Pebble's HTTP API that this repository's charms use, in Pebble's formats (the JSON envelope
``{"type": "sync"|"async"|"error", "status-code", "status", "result", "change"}``, multipart for
pushed files), and really runs what the plan says: each service's command is started as a
subprocess in its own process group, with the layer's environment, working directory and user,
and ``stop`` sends SIGTERM to the group, then SIGKILL after the kill delay, then SIGKILL to
whatever is left in the group. Service status (``active``, ``inactive``, ``backoff``,
``error``) is what the processes really did: a command that exits within the okay delay (1 s,
as Pebble) fails its start task, a service that exits later is restarted after Pebble's
backoff, unless ``on-success`` or ``on-failure`` says ``ignore``.

Answered: what ops' ``Container`` sends for the charms' calls (``can_connect``, ``add_layer``,
``replan``, ``get_services``, ``push``): ``GET /v1/system-info``, ``POST /v1/layers``,
``GET /v1/plan``, ``GET``/``POST /v1/services`` (autostart, replan, start, stop, restart),
``GET /v1/changes/{id}/wait`` and the multipart write of ``POST /v1/files``. Everything else
Pebble has answers an error envelope with status 501 that says so: the other change calls,
health and checks (and a layer with ``checks``, ``log-targets`` or ``workloads``, or a service
with ``workload`` or ``on-check-failure``), signals, reading, listing and removing files, making
directories, exec and its task websockets, logs, notices, identities, pairing, metrics. Paths
Pebble does not have answer Pebble's own 404.

Where it differs from Pebble on purpose:

- ``root`` maps the container's filesystem: the files API reads and writes under it, and a
  service's ``working-dir`` and every command argument that is an absolute path existing under
  it are mapped too (so ``/usr/bin/python3 /srv/app.py`` runs the host's Python on the pushed
  file). With the default root ``/`` nothing is mapped. It is not a security boundary.
- Layers added through the API are kept in memory, as Pebble does; ``<state-dir>/layers/*.yaml``
  (named ``NNN-label.yaml``) are read at start-up like ``$PEBBLE/layers``. Services are not
  started at start-up (Juju runs workload Pebbles with ``--hold``).
- Service output goes to ``<state-dir>/logs/<service>.log``; a failed start quotes its last
  lines in the task log, as Pebble does.
- ``on-success``/``on-failure`` shutdown actions do not shut the stand-in down; the service is
  left exited (status ``error``).

In-process use (threads)::

    with PebbleStandin(socket_path, state_dir, root=container_root) as pebble:
        client = ops.pebble.Client(socket_path=str(socket_path))

As its own process, so that it outlives a hook as a workload container's Pebble does::

    python tests/support/pebble_standin.py --socket PATH --state-dir DIR [--root DIR]

It prints ``ready`` on stdout once the socket accepts connections (the socket file only appears
then, so waiting for the file is enough), and on SIGTERM or SIGINT it stops every service, then
removes the socket. Only PyYAML is needed beyond the standard library (Pebble's layers and plan
are YAML; PyYAML is already required by ops).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import email.parser
import errno
import grp
import http.server
import json
import os
import posixpath
import pwd
import re
import secrets
import shlex
import signal
import socketserver
import subprocess
import sys
import threading
import urllib.parse
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any, cast

import yaml

#: Reported as the daemon version; names the Pebble API release the formats were checked against.
VERSION = "v1.32.1-standin"

OKAY_DELAY = 1.0
KILL_DELAY = 5.0
FAIL_DELAY = 5.0
BACKOFF_DELAY = 0.5
BACKOFF_FACTOR = 2.0
BACKOFF_LIMIT = 30.0
_LAST_LOG_LINES = 20
_MIN_BOUNDARY_LENGTH = 32

JSON = dict[str, Any]


# --------------------------------------------------------------------------------------------
# Small formats: times, durations, errors.


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _timestamp(moment: datetime.datetime) -> str:
    """RFC 3339 with sub-second digits and ``Z``, as Go prints a UTC ``time.Time``."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "\u00b5s": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|\u00b5s|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in a Go duration (``"1.5s"``, ``"2m30s"``, ``"0"``); raises ValueError."""
    if text in ("0", "+0", "-0"):
        return 0.0
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos = 0
    total = 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise ValueError(f"time: invalid duration {json.dumps(text)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(f"time: invalid duration {json.dumps(text)}")
    return sign * total


def format_duration(seconds: float) -> str:
    """A Go-like rendering of a duration (``4s``, ``1.5s``, ``250ms``, ``2m0s``)."""
    if seconds < 1 and seconds != 0:
        return f"{seconds * 1000:g}ms"
    minutes, secs = divmod(seconds, 60)
    if minutes >= 1:
        hours, minutes = divmod(int(minutes), 60)
        prefix = f"{hours}h" if hours else ""
        return f"{prefix}{minutes}m{secs:g}s"
    return f"{secs:g}s"


class APIError(Exception):
    """An error answer: an HTTP status, a message and an optional Pebble error kind."""

    def __init__(self, status: int, message: str, kind: str = "", value: Any = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.value = value

    def result(self) -> JSON:
        """The ``result`` object of the error envelope."""
        result: JSON = {"message": self.message}
        if self.kind:
            result["kind"] = self.kind
        if self.value is not None:
            result["value"] = self.value
        return result


def _bad_request(message: str) -> APIError:
    return APIError(HTTPStatus.BAD_REQUEST, message)


def _not_implemented(what: str) -> APIError:
    return APIError(
        HTTPStatus.NOT_IMPLEMENTED, f"{what} is not implemented by the Pebble stand-in"
    )


def _go_quote(text: str) -> str:
    """Go's ``%q`` for the strings that appear in messages."""
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# The plan: layers, their validation and combination.


class LayerError(ValueError):
    """A layer or plan that Pebble would refuse (its ``FormatError``)."""


_STR_FIELDS = (
    "summary",
    "description",
    "command",
    "user",
    "group",
    "working-dir",
)
_SERVICE_FIELDS = (
    "summary",
    "description",
    "startup",
    "override",
    "command",
    "after",
    "before",
    "requires",
    "environment",
    "user-id",
    "user",
    "group-id",
    "group",
    "working-dir",
    "on-success",
    "on-failure",
    "backoff-delay",
    "backoff-factor",
    "backoff-limit",
    "kill-delay",
)
_SECTIONS = ("summary", "description", "services")
# What Pebble has and the charms do not use: answered 501, never accepted and ignored.
_UNIMPLEMENTED_SECTIONS = ("checks", "log-targets", "workloads")
_UNIMPLEMENTED_SERVICE_FIELDS = ("workload", "on-check-failure")
_SERVICE_ACTIONS = ("", "restart", "shutdown", "ignore", "success-shutdown", "failure-shutdown")


def _scalar_to_str(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _decode_str(label: str, section: str, key: str, value: Any) -> str:
    if isinstance(value, (dict, list)):
        raise LayerError(
            f"cannot parse layer {_go_quote(label)} section {_go_quote(section)}: "
            f"cannot unmarshal a {type(value).__name__} into field {key} of type string"
        )
    return "" if value is None else _scalar_to_str(value)


def _decode_str_list(label: str, section: str, key: str, value: Any) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise LayerError(
            f"cannot parse layer {_go_quote(label)} section {_go_quote(section)}: "
            f"field {key} must be a list of strings"
        )
    return [_decode_str(label, section, key, item) for item in cast("list[Any]", value)]


def _decode_str_map(label: str, section: str, key: str, value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LayerError(
            f"cannot parse layer {_go_quote(label)} section {_go_quote(section)}: "
            f"field {key} must be a map of strings"
        )
    items = cast("dict[Any, Any]", value).items()
    return {str(k): _decode_str(label, section, key, v) for k, v in items}


def _decode_int(label: str, section: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise LayerError(
            f"cannot parse layer {_go_quote(label)} section {_go_quote(section)}: "
            f"cannot unmarshal {_go_quote(_scalar_to_str(value))} into field {key} of type int"
        )
    return value


def _decode_duration(label: str, section: str, key: str, value: Any) -> str:
    text = _decode_str(label, section, key, value)
    try:
        parse_duration(text)
    except ValueError:
        raise LayerError(
            f"cannot parse layer {_go_quote(label)} section {_go_quote(section)}: "
            f"invalid duration {_go_quote(text)}"
        ) from None
    return text


def _decode_service(label: str, name: str, raw: Any) -> JSON:
    if raw is None:
        raise LayerError(f"service object cannot be null for service {_go_quote(name)}")
    if not isinstance(raw, dict):
        raise LayerError(
            f'cannot parse layer {_go_quote(label)} section "services": '
            f"service {_go_quote(name)} must be a map"
        )
    service: JSON = {}
    for key, value in cast("dict[str, Any]", raw).items():
        if key in _UNIMPLEMENTED_SERVICE_FIELDS:
            raise _not_implemented(f"the service field {key}")
        if key not in _SERVICE_FIELDS:
            raise LayerError(
                f'cannot parse layer {_go_quote(label)} section "services": '
                f"field {key} not found in type plan.Service"
            )
        if key in ("after", "before", "requires"):
            service[key] = _decode_str_list(label, "services", key, value)
        elif key == "environment":
            service[key] = _decode_str_map(label, "services", key, value)
        elif key in ("user-id", "group-id"):
            service[key] = _decode_int(label, "services", key, value)
        elif key in ("backoff-delay", "backoff-limit", "kill-delay"):
            service[key] = _decode_duration(label, "services", key, value)
        elif key == "backoff-factor":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise LayerError(
                    f'cannot parse layer {_go_quote(label)} section "services": '
                    f"invalid floating-point number {_go_quote(_scalar_to_str(value))}"
                )
            service[key] = float(value)
        else:
            service[key] = _decode_str(label, "services", key, value)
    return service


def _validate_service(name: str, service: JSON) -> None:
    if name == "":
        raise LayerError("cannot use empty string as service name")
    if name == "pebble":
        raise LayerError(f"cannot use reserved service name {_go_quote(name)}")
    if name.startswith("-"):
        raise LayerError(
            f'cannot use service name {_go_quote(name)}: starting with "-" not allowed'
        )
    startup = service.get("startup", "")
    if startup not in ("", "enabled", "disabled"):
        raise LayerError(
            f"cannot parse layer: invalid startup value {_go_quote(startup)} "
            f"for service {_go_quote(name)}"
        )
    try:
        parse_command(name, service.get("command", ""))
    except ValueError as e:
        raise LayerError(f"plan service {_go_quote(name)} command invalid: {e}") from None
    for key, forbidden in (("on-success", "failure-shutdown"), ("on-failure", "success-shutdown")):
        action = service.get(key, "")
        if action not in _SERVICE_ACTIONS or action == forbidden:
            raise LayerError(
                f"plan service {_go_quote(name)} {key} action {_go_quote(action)} invalid"
            )
    factor = service.get("backoff-factor")
    if factor is not None and factor < 1:
        raise LayerError(
            f"plan service {_go_quote(name)} backoff-factor must be 1.0 or greater, not {factor:g}"
        )


@dataclass
class Layer:
    """One layer of the plan, decoded and checked the way Pebble parses a layer."""

    order: int
    label: str
    summary: str = ""
    description: str = ""
    services: dict[str, JSON] = field(default_factory=lambda: {})

    @classmethod
    def parse(cls, order: int, label: str, text: str) -> Layer:
        """Parse layer YAML; raises LayerError with Pebble's wording where it has one."""
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise LayerError(f"cannot parse layer {_go_quote(label)}: {e}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise LayerError(f"cannot parse layer {_go_quote(label)}: not a map")
        layer = cls(order=order, label=label)
        for key, value in cast("dict[Any, Any]", data).items():
            if key in _UNIMPLEMENTED_SECTIONS:
                raise _not_implemented(f"the layer section {key}")
            if key not in _SECTIONS:
                raise LayerError(
                    f"cannot parse layer {_go_quote(label)}: unknown section {_go_quote(str(key))}"
                )
            layer._set_section(str(key), value)
        layer.validate()
        return layer

    def _set_section(self, key: str, value: Any) -> None:
        if key in ("summary", "description"):
            setattr(self, key, _decode_str(self.label, key, key, value))
            return
        if value is None:
            return
        if not isinstance(value, dict):
            raise LayerError(
                f"cannot parse layer {_go_quote(self.label)} section {_go_quote(key)}: not a map"
            )
        entries = cast("dict[Any, Any]", value)
        self.services = {
            str(k): _decode_service(self.label, str(k), v) for k, v in entries.items()
        }

    def validate(self) -> None:
        """Pebble's checks on a single layer (before combining)."""
        if self.label.startswith("pebble-"):
            raise LayerError('cannot use reserved label prefix "pebble-"')
        for name, service in self.services.items():
            _validate_service(name, service)

    def combine(self, other: Layer) -> None:
        """Fold ``other`` (same label) into this layer, as Pebble's combine does."""
        merged = combine_layers([self, other])
        self.summary = other.summary or self.summary
        self.description = other.description or self.description
        self.services = merged.services


_LIST_FIELDS = ("after", "before", "requires")
_MAP_FIELDS = ("environment",)


def _merge_entry(old: JSON, new: JSON) -> None:
    for key, value in new.items():
        if key in _LIST_FIELDS:
            old[key] = [*old.get(key, []), *value]
        elif key in _MAP_FIELDS:
            old[key] = {**old.get(key, {}), **value}
        elif value not in ("", None):
            old[key] = copy.deepcopy(value)


def _combine_services(layers: Iterable[Layer]) -> dict[str, JSON]:
    combined: dict[str, JSON] = {}
    for layer in layers:
        for name, entry in layer.services.items():
            override = entry.get("override", "")
            if override == "merge" and name in combined:
                _merge_entry(combined[name], entry)
            elif override in ("merge", "replace"):
                combined[name] = copy.deepcopy(entry)
            elif override == "":
                raise LayerError(
                    f'layer {_go_quote(layer.label)} must define "override" for service '
                    f"{_go_quote(name)}"
                )
            else:
                raise LayerError(
                    f'layer {_go_quote(layer.label)} has invalid "override" value for service '
                    f"{_go_quote(name)}"
                )
    return combined


@dataclass
class Plan:
    """The combined plan: what ``GET /v1/plan`` shows and what services run."""

    services: dict[str, JSON] = field(default_factory=lambda: {})

    def to_yaml(self) -> str:
        """The plan as Pebble prints it (``{}`` when empty)."""
        if not self.services:
            return "{}\n"
        services = {name: _ordered(self.services[name]) for name in sorted(self.services)}
        return yaml.safe_dump(
            {"services": services}, sort_keys=False, default_flow_style=False, indent=4
        )

    def validate(self) -> None:
        """Pebble's checks on the combined plan."""
        for name, service in self.services.items():
            if not service.get("command"):
                raise LayerError(f'plan must define "command" for service {_go_quote(name)}')
        start_order(self.services, list(self.services))  # raises on before/after loops

    def start_order(self, names: list[str]) -> list[list[str]]:
        """Lanes of services to start (dependencies first); raises LayerError."""
        return start_order(self.services, names)

    def stop_order(self, names: list[str]) -> list[list[str]]:
        """Lanes of services to stop (dependants first); raises LayerError."""
        return stop_order(self.services, names)


def _ordered(entry: JSON) -> JSON:
    """A service with its fields in Pebble's order (the order of the Go struct)."""
    known = [key for key in _SERVICE_FIELDS if key in entry]
    rest = sorted(key for key in entry if key not in known)
    result: JSON = {}
    for key in [*known, *rest]:
        value = entry[key]
        result[key] = dict(sorted(value.items())) if isinstance(value, dict) else value
    return result


def combine_layers(layers: list[Layer]) -> Plan:
    """Combine layers in order into a plan; raises LayerError."""
    return Plan(services=_combine_services(layers))


def parse_command(name: str, command: str) -> tuple[list[str], list[str]]:
    """Split a service command into base arguments and default ``[ ... ]`` arguments."""
    try:
        args = shlex.split(command)
    except ValueError as e:
        raise ValueError(f"cannot parse service {_go_quote(name)} command: {e}") from None
    base: list[str] = []
    extra: list[str] = []
    in_brackets = got_brackets = False
    for index, arg in enumerate(args):
        problem = ""
        if in_brackets:
            if arg == "[":
                problem = "cannot nest [ ... ] groups"
            elif arg == "]":
                in_brackets = False
            else:
                extra.append(arg)
        elif got_brackets:
            problem = "cannot have any arguments after [ ... ] group"
        elif arg == "[":
            problem = "cannot start command with [ ... ] group" if index == 0 else ""
            in_brackets = got_brackets = True
        elif arg == "]":
            problem = "cannot have ] outside of [ ... ] group"
        else:
            base.append(arg)
        if problem:
            raise ValueError(f"cannot parse service {_go_quote(name)} command: {problem}")
    return base, extra


def _collect(services: Mapping[str, JSON], names: list[str], stop: bool) -> list[str]:
    """The named services plus what they require (start) or what requires them (stop)."""
    predecessors: dict[str, list[str]] = {}
    if stop:
        for name, service in services.items():
            for required in service.get("requires", []):
                predecessors.setdefault(required, []).append(name)
    wanted: list[str] = []
    pending = list(names)
    while pending:
        name = pending.pop(0)
        if name in wanted:
            continue
        if name not in services:
            raise LayerError(f"service {_go_quote(name)} does not exist")
        wanted.append(name)
        pending.extend(predecessors.get(name, []) if stop else services[name].get("requires", []))
    return wanted


def _order(services: Mapping[str, JSON], names: list[str], stop: bool) -> list[str]:
    """Services to start or stop, dependencies pulled in, sorted by before/after/requires."""
    wanted = _collect(services, names, stop)
    # edges[a] holds what must come before a.
    edges: dict[str, set[str]] = {name: set() for name in wanted}
    for name in wanted:
        after = services[name].get("after", [])
        before = services[name].get("before", [])
        if stop:
            after, before = before, after
        edges[name].update(other for other in after if other in edges)
        for other in before:
            if other in edges:
                edges[other].add(name)
    ordered: list[str] = []
    remaining = dict(edges)
    while remaining:
        ready = sorted(name for name, deps in remaining.items() if not deps - set(ordered))
        if not ready:
            loop = ", ".join(sorted(remaining))
            raise LayerError(f"services in before/after loop: {loop}")
        ordered.extend(ready)
        for name in ready:
            del remaining[name]
    return ordered


def _lanes(services: Mapping[str, JSON], names: list[str]) -> list[list[str]]:
    """Group ordered names into lanes: a service shares the lane of what it requires."""
    lane_of: dict[str, int] = {}
    lanes: list[list[str]] = []
    for name in names:
        lane = lane_of.get(name)
        if lane is None:
            lane = next(
                (lane_of[req] for req in services[name].get("requires", []) if req in lane_of),
                len(lanes),
            )
        if lane == len(lanes):
            lanes.append([])
        lane_of[name] = lane
        for required in services[name].get("requires", []):
            lane_of.setdefault(required, lane)
        lanes[lane].append(name)
    return lanes


def start_order(services: Mapping[str, JSON], names: list[str]) -> list[list[str]]:
    """Lanes of services to start; raises LayerError for an unknown service or a loop."""
    return _lanes(services, _order(services, names, stop=False))


def stop_order(services: Mapping[str, JSON], names: list[str]) -> list[list[str]]:
    """Lanes of services to stop; raises LayerError for an unknown service or a loop."""
    return _lanes(services, _order(services, names, stop=True))


# --------------------------------------------------------------------------------------------
# Changes and tasks.


@dataclass
class Task:
    """A task of a change (one service start or stop)."""

    id: str
    kind: str
    summary: str
    status: str = "Do"
    log: list[str] = field(default_factory=lambda: [])
    spawn_time: datetime.datetime = field(default_factory=_now)
    ready_time: datetime.datetime | None = None
    service: str = ""

    def add_log(self, level: str, message: str) -> None:
        """Log a line the way Pebble does: RFC 3339 time, level, message; ten lines kept."""
        stamp = _now().strftime("%Y-%m-%dT%H:%M:%SZ")
        self.log = [*self.log[-9:], f"{stamp} {level} {message}"]

    def finish(self, status: str) -> None:
        """Mark the task ready with ``status`` (Done, Error or Hold)."""
        self.status = status
        self.ready_time = _now()

    def to_json(self) -> JSON:
        """The task as ``/v1/changes`` shows it."""
        done = 1 if self.status in ("Done", "Error", "Hold", "Undone") else 0
        info: JSON = {
            "id": self.id,
            "kind": self.kind,
            "summary": self.summary,
            "status": self.status,
            "progress": {"label": "", "done": done, "total": 1},
            "spawn-time": _timestamp(self.spawn_time),
        }
        if self.log:
            info["log"] = list(self.log)
        if self.ready_time is not None:
            info["ready-time"] = _timestamp(self.ready_time)
        return info

    def error(self) -> str:
        """The task's error messages (what Pebble's ``ERROR`` log lines carry)."""
        return "\n".join(line.split(" ERROR ", 1)[1] for line in self.log if " ERROR " in line)


@dataclass
class Change:
    """A change: a kind, a summary, tasks, and an event set when it is ready."""

    id: str
    kind: str
    summary: str
    tasks: list[Task] = field(default_factory=lambda: [])
    service_names: list[str] = field(default_factory=lambda: [])
    spawn_time: datetime.datetime = field(default_factory=_now)
    ready_time: datetime.datetime | None = None
    ready_event: threading.Event = field(default_factory=threading.Event)

    @property
    def status(self) -> str:
        """Pebble's change status, from its tasks."""
        statuses = {task.status for task in self.tasks}
        if not self.tasks:
            return "Done"
        if statuses & {"Do", "Doing"}:
            return "Doing" if "Doing" in statuses else "Do"
        if "Error" in statuses:
            return "Error"
        if "Hold" in statuses:
            return "Hold"
        return "Done"

    @property
    def ready(self) -> bool:
        """Whether every task has finished."""
        return self.ready_event.is_set()

    def err(self) -> str:
        """Pebble's change error text, empty when the change did not fail."""
        if self.status != "Error":
            return ""
        lines = [
            f"- {task.summary} ({task.error()})" for task in self.tasks if task.status == "Error"
        ]
        return "cannot perform the following tasks:\n" + "\n".join(lines)

    def to_json(self) -> JSON:
        """The change as ``/v1/changes`` shows it."""
        info: JSON = {
            "id": self.id,
            "kind": self.kind,
            "summary": self.summary,
            "status": self.status,
            "tasks": [task.to_json() for task in self.tasks],
            "ready": self.ready,
            "spawn-time": _timestamp(self.spawn_time),
        }
        if not self.tasks:
            del info["tasks"]
        err = self.err()
        if err:
            info["err"] = err
        if self.ready_time is not None:
            info["ready-time"] = _timestamp(self.ready_time)
        return info


# --------------------------------------------------------------------------------------------
# Services: processes, their states and transitions.


class _TaskError(Exception):
    """A task's error, logged as its ``ERROR`` line."""


@dataclass
class ServiceRuntime:
    """What the stand-in knows about a service it has started at least once."""

    name: str
    config: JSON
    state: str = "initial"  # starting, running, terminating, killing, stopped, backoff, exited
    process: subprocess.Popen[bytes] | None = None
    current_since: datetime.datetime | None = None
    backoff_num: int = 0
    backoff_time: float = 0.0
    timer: threading.Timer | None = None
    started: threading.Event = field(default_factory=threading.Event)
    start_error: str = ""
    exited: threading.Event = field(default_factory=threading.Event)

    def transition(self, state: str) -> None:
        """Move to ``state``; ``current-since`` changes only when the status changes."""
        if _status(state) != _status(self.state) or self.current_since is None:
            self.current_since = _now()
        self.state = state

    def cancel_timer(self) -> None:
        """Cancel a pending backoff restart."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


def _status(state: str) -> str:
    if state in ("starting", "running"):
        return "active"
    if state in ("terminating", "killing", "stopped"):
        return "inactive"
    if state == "backoff":
        return "backoff"
    return "error"


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _optional_duration(config: JSON, key: str, default: float) -> float:
    return parse_duration(config[key]) if key in config else default


class ServiceManager:
    """Starts, watches and stops the plan's services; owns the changes."""

    def __init__(self, state_dir: Path, root: Path, okay_delay: float = OKAY_DELAY):
        self._lock = threading.RLock()
        self._state_dir = state_dir
        self._root = root
        self._okay_delay = okay_delay
        self.services: dict[str, ServiceRuntime] = {}
        self.changes: dict[str, Change] = {}
        self._next_id = 1
        self.plan = Plan()
        self._closing = False

    @property
    def lock(self) -> threading.RLock:
        """The lock over services, changes and the plan."""
        return self._lock

    def new_id(self) -> str:
        """The next change or task id (one counter, as Pebble's state has)."""
        with self._lock:
            value = str(self._next_id)
            self._next_id += 1
            return value

    # ---- what GET /v1/services shows

    def service_infos(self, names: list[str]) -> list[JSON]:
        """Services of the plan with their status, sorted by name, filtered by ``names``."""
        with self._lock:
            infos: list[JSON] = []
            for name in sorted(self.plan.services):
                if names and name not in names:
                    continue
                config = self.plan.services[name]
                info: JSON = {
                    "name": name,
                    "startup": "enabled" if config.get("startup") == "enabled" else "disabled",
                    "current": "inactive",
                }
                runtime = self.services.get(name)
                if runtime is not None:
                    info["current"] = _status(runtime.state)
                    if runtime.current_since is not None:
                        info["current-since"] = _timestamp(runtime.current_since)
                infos.append(info)
            return infos

    # ---- changes

    def submit(self, action: str, requested: list[str]) -> Change:
        """Create the change for a services action and run it in a thread."""
        with self._lock:
            try:
                stop_lanes, start_lanes, names, count = self._plan_action(action, requested)
            except LayerError as e:
                raise _bad_request(f"cannot {action} services: {e}") from None
            change = Change(id=self.new_id(), kind=action, summary="", service_names=names)
            stop_tasks = [[self._task("stop", name) for name in lane] for lane in stop_lanes]
            start_tasks = [[self._task("start", name) for name in lane] for lane in start_lanes]
            change.tasks = [task for lane in [*stop_tasks, *start_tasks] for task in lane]
            title = action.title()
            if not change.tasks:
                change.summary = f"{title} - no services"
            elif count == 1:
                change.summary = f"{title} service {_go_quote(names[0])}"
            else:
                change.summary = f"{title} service {_go_quote(names[0])} and {count - 1} more"
            self.changes[change.id] = change
            if not change.tasks:
                change.ready_time = _now()
                change.ready_event.set()
                return change
        thread = threading.Thread(
            target=self._run_change,
            args=(change, stop_tasks, start_tasks),
            name=f"pebble-change-{change.id}",
            daemon=True,
        )
        thread.start()
        return change

    def _task(self, kind: str, name: str) -> Task:
        summary = f"{kind.title()} service {_go_quote(name)}"
        return Task(id=self.new_id(), kind=kind, summary=summary, service=name)

    def _plan_action(
        self, action: str, requested: list[str]
    ) -> tuple[list[list[str]], list[list[str]], list[str], int]:
        """Lanes to stop, lanes to start, the change's service names and the summary's count.

        As Pebble: a replan stops what changed and starts what changed or is enabled; its
        names are every service it touches. Other actions name what was asked for and count
        what their lanes hold (dependencies included).
        """
        plan = self.plan
        if action == "replan":
            restart: list[str] = []
            for name, runtime in self.services.items():
                config = plan.services.get(name)
                if config is None or config == runtime.config:
                    continue
                runtime.config = copy.deepcopy(config)
                restart.append(name)
            start = [
                name
                for name, config in plan.services.items()
                if name in restart or config.get("startup") == "enabled"
            ]
            stop_lanes = plan.stop_order(restart)
            start_lanes = plan.start_order(start)
            names = sorted({n for lane in [*stop_lanes, *start_lanes] for n in lane})
            return stop_lanes, start_lanes, names, len(names)
        stop_lanes: list[list[str]] = []
        start_lanes: list[list[str]] = []
        if action in ("stop", "restart"):
            stop_lanes = plan.stop_order(requested)
        if action == "restart":
            stop_lanes = [
                kept for lane in stop_lanes if (kept := [n for n in lane if n in requested])
            ]
        if action != "stop":
            start_lanes = plan.start_order(requested)
        counted = stop_lanes if action == "stop" else start_lanes
        return stop_lanes, start_lanes, requested, sum(len(lane) for lane in counted)

    def _run_change(
        self, change: Change, stop_tasks: list[list[Task]], start_tasks: list[list[Task]]
    ) -> None:
        for phase in (stop_tasks, start_tasks):
            threads = [
                threading.Thread(target=self._run_lane, args=(change, lane), daemon=True)
                for lane in phase
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        with self._lock:
            change.ready_time = _now()
            change.ready_event.set()

    def _run_lane(self, change: Change, lane: list[Task]) -> None:
        failed = False
        for task in lane:
            with self._lock:
                if failed:
                    task.finish("Hold")
                    continue
                task.status = "Doing"
            name = task.service
            try:
                if task.kind == "start":
                    self._do_start(task, name)
                else:
                    self._do_stop(task, name)
            except Exception as e:
                message = str(e) if isinstance(e, _TaskError) else f"internal error: {e!r}"
                with self._lock:
                    task.add_log("ERROR", message)
                    task.finish("Error")
                failed = True
                continue
            with self._lock:
                task.finish("Done")

    # ---- start

    def _do_start(self, task: Task, name: str) -> None:
        with self._lock:
            config = self.plan.services.get(name)
            if config is None:
                raise _TaskError(f"cannot find service {_go_quote(name)} in plan")
            runtime = self.services.get(name)
            if runtime is None:
                runtime = ServiceRuntime(name=name, config=copy.deepcopy(config))
                self.services[name] = runtime
            else:
                runtime.config = copy.deepcopy(config)
                if runtime.state in ("initial", "starting", "running"):
                    task.add_log("INFO", f"Service {_go_quote(name)} already started.")
                    return
                if runtime.state in ("terminating", "killing"):
                    raise _TaskError(f"cannot start service while {runtime.state}")
                runtime.cancel_timer()
                runtime.backoff_num = 0
                runtime.backoff_time = 0.0
            runtime.started.clear()
            runtime.start_error = ""
            try:
                self._spawn(runtime)
            except (OSError, KeyError, subprocess.SubprocessError) as e:
                runtime.transition("stopped")
                raise _TaskError(f"cannot start service: {_spawn_error_text(e)}") from None
            runtime.transition("starting")
        self._watch_okay_delay(runtime)
        runtime.started.wait(self._okay_delay + 5)  # the okay timer or the exit sets it
        if runtime.start_error:
            self._log_last_output(task, name)
            raise _TaskError(f"service start attempt: {runtime.start_error}")

    def _watch_okay_delay(self, runtime: ServiceRuntime) -> None:
        process = runtime.process

        def elapsed() -> None:
            with self._lock:
                if runtime.state == "starting" and runtime.process is process:
                    runtime.transition("running")
                    runtime.started.set()

        timer = threading.Timer(self._okay_delay, elapsed)
        timer.daemon = True
        timer.start()

    def _log_last_output(self, task: Task, name: str) -> None:
        path = self._log_path(name)
        try:
            lines = path.read_text(errors="replace").splitlines()[-_LAST_LOG_LINES:]
        except OSError:
            return
        if lines:
            body = "\n".join(f"    {line}" for line in lines)
            with self._lock:
                task.add_log("INFO", f"Most recent service output:\n{body}")

    def _log_path(self, name: str) -> Path:
        return self._state_dir / "logs" / f"{name}.log"

    def map_path(self, path: str) -> str:
        """The host path of an absolute container path (under ``root``)."""
        normal = posixpath.normpath("/" + path.lstrip("/"))
        if str(self._root) == "/":
            return normal
        return str(self._root / normal.lstrip("/"))

    def _argv(self, name: str, config: JSON) -> list[str]:
        base, extra = parse_command(name, config.get("command", ""))
        argv = [*base, *extra]
        if str(self._root) == "/":
            return argv
        return [
            self.map_path(arg)
            if arg.startswith("/") and os.path.lexists(self.map_path(arg))
            else arg
            for arg in argv
        ]

    def _spawn(self, runtime: ServiceRuntime) -> None:
        """Start the service's command in a new process group (caller holds the lock)."""
        config = runtime.config
        argv = self._argv(runtime.name, config)
        environment: dict[str, str] = config.get("environment", {})
        env = {**os.environ, **environment}
        user, group = _resolve_user(config)
        if user is not None:
            with contextlib.suppress(KeyError):
                entry = pwd.getpwuid(user)
                if not environment.get("HOME"):
                    env["HOME"] = entry.pw_dir
                if not environment.get("USER"):
                    env["USER"] = entry.pw_name
        as_other = user is not None and (user, group) != (os.getuid(), os.getgid())
        cwd = self.map_path(config["working-dir"]) if config.get("working-dir") else None
        log_path = self._log_path(runtime.name)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
                user=user if as_other else None,
                group=group if as_other else None,
                extra_groups=[] if as_other else None,
            )
        runtime.process = process
        runtime.exited.clear()
        reaper = threading.Thread(
            target=self._reap,
            args=(runtime, process),
            name=f"pebble-reap-{runtime.name}",
            daemon=True,
        )
        reaper.start()

    def _reap(self, runtime: ServiceRuntime, process: subprocess.Popen[bytes]) -> None:
        code = process.wait()
        with self._lock:
            if runtime.process is not process:
                return
            self._exited(runtime, code)
            runtime.exited.set()

    def _exited(self, runtime: ServiceRuntime, code: int) -> None:
        """What Pebble does when a service's process exits (caller holds the lock)."""
        state = runtime.state
        if state in ("terminating", "killing"):
            runtime.transition("stopped")
            return
        if state not in ("starting", "running"):
            return
        success = code == 0
        key = "on-success" if success else "on-failure"
        action = runtime.config.get(key) or "restart"
        shown = code if code >= 0 else -1
        if state == "starting":
            runtime.start_error = f"exited quickly with code {shown}, will {action}"
        if action == "restart" and not self._closing:
            self._backoff(runtime)
        elif action == "ignore" and success:
            runtime.transition("stopped")
        else:
            runtime.transition("exited")
        runtime.started.set()
        if runtime.process is not None:
            _kill_group(runtime.process.pid, signal.SIGKILL)

    def _backoff(self, runtime: ServiceRuntime) -> None:
        config = runtime.config
        delay = _optional_duration(config, "backoff-delay", BACKOFF_DELAY)
        limit = _optional_duration(config, "backoff-limit", BACKOFF_LIMIT)
        factor = float(config.get("backoff-factor", BACKOFF_FACTOR))
        runtime.backoff_num += 1
        if runtime.backoff_time == 0:
            runtime.backoff_time = delay
        else:
            runtime.backoff_time = min(runtime.backoff_time * factor, limit)
        runtime.transition("backoff")

        def elapsed() -> None:
            with self._lock:
                if runtime.state != "backoff" or self._closing:
                    return
                try:
                    self._spawn(runtime)
                except (OSError, KeyError, subprocess.SubprocessError):
                    runtime.transition("exited")
                    return
                runtime.transition("running")

        runtime.timer = threading.Timer(runtime.backoff_time, elapsed)
        runtime.timer.daemon = True
        runtime.timer.start()

    # ---- stop

    def _do_stop(self, task: Task, name: str) -> None:
        with self._lock:
            runtime = self.services.get(name)
            quoted = _go_quote(name)
            if runtime is None:
                task.add_log("INFO", f"Service {quoted} has never been started.")
                return
            if runtime.state in ("terminating", "killing"):
                task.add_log("INFO", f"Service {quoted} already stopping.")
                return
            if runtime.state in ("stopped", "initial"):
                task.add_log("INFO", f"Service {quoted} already stopped.")
                return
            if runtime.state == "exited":
                runtime.transition("stopped")
                task.add_log("INFO", f"Service {quoted} had already exited.")
                return
            if runtime.state == "backoff":
                runtime.cancel_timer()
                runtime.transition("stopped")
                return
            if runtime.state == "starting":
                runtime.start_error = (
                    f"stopped before the {format_duration(self._okay_delay)} okay delay"
                )
                runtime.started.set()
            process = runtime.process
            assert process is not None
            _kill_group(process.pid, signal.SIGTERM)
            runtime.transition("terminating")
            kill_delay = _optional_duration(runtime.config, "kill-delay", KILL_DELAY)
        if not self.terminate(runtime, process, kill_delay):
            raise _TaskError(
                "cannot stop service: process still running after SIGTERM and SIGKILL"
            )

    def terminate(
        self, runtime: ServiceRuntime, process: subprocess.Popen[bytes], kill_delay: float
    ) -> bool:
        """Wait for a SIGTERMed process, SIGKILL it after ``kill_delay``; then clear its group."""
        if not runtime.exited.wait(kill_delay):
            with self._lock:
                if runtime.state == "terminating":
                    runtime.transition("killing")
            _kill_group(process.pid, signal.SIGKILL)
            if not runtime.exited.wait(FAIL_DELAY):
                with self._lock:
                    runtime.transition("stopped")
                return False
        # Pebble signals the group and waits for its leader only; leave nothing behind.
        _kill_group(process.pid, signal.SIGKILL)
        return True

    def shutdown(self) -> None:
        """Stop every service (SIGTERM, then SIGKILL) and wait for them; used on exit."""
        with self._lock:
            self._closing = True
            running: list[tuple[ServiceRuntime, subprocess.Popen[bytes], float]] = []
            for runtime in self.services.values():
                runtime.cancel_timer()
                process = runtime.process
                if process is None or runtime.state not in ("starting", "running"):
                    if process is not None:
                        _kill_group(process.pid, signal.SIGKILL)
                    continue
                if runtime.state == "starting":
                    runtime.start_error = "stopped before the okay delay: Pebble is shutting down"
                    runtime.started.set()
                _kill_group(process.pid, signal.SIGTERM)
                runtime.transition("terminating")
                delay = _optional_duration(runtime.config, "kill-delay", KILL_DELAY)
                running.append((runtime, process, delay))
        waiters = [
            threading.Thread(target=self.terminate, args=item, daemon=True) for item in running
        ]
        for waiter in waiters:
            waiter.start()
        for waiter in waiters:
            waiter.join()


def _resolve_user(config: JSON) -> tuple[int | None, int | None]:
    """The uid and gid a service runs as, from user/user-id/group/group-id (as Pebble)."""
    uid: int | None = config.get("user-id")
    gid: int | None = config.get("group-id")
    if config.get("user"):
        entry = pwd.getpwnam(config["user"])
        if uid is not None and uid != entry.pw_uid:
            raise OSError(errno.EINVAL, "user and user-id do not match")
        uid = entry.pw_uid
        if gid is None and not config.get("group"):
            gid = entry.pw_gid
    if config.get("group"):
        gid = grp.getgrnam(config["group"]).gr_gid
    if uid is not None and gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    if uid is None and gid is not None:
        raise OSError(errno.EINVAL, "must specify user, not just group")
    return uid, gid


def _spawn_error_text(error: Exception) -> str:
    if isinstance(error, KeyError):
        # pwd/grp: "getpwnam(): name not found: 'x'"; Go says "user: unknown user x".
        return f"user or group lookup failed: {error.args[0]}"
    if isinstance(error, FileNotFoundError) and error.filename and "/" not in str(error.filename):
        return f"exec: {_go_quote(str(error.filename))}: executable file not found in $PATH"
    if isinstance(error, OSError):
        return (
            _os_error_text(error, "fork/exec", str(error.filename))
            if error.filename
            else (_os_error_text(error))
        )
    return str(error)


def _os_error_text(error: OSError, op: str = "", path: str = "") -> str:
    """An OSError worded the way Go words it (``open /x: no such file or directory``)."""
    reason = error.strerror or str(error)
    reason = reason[:1].lower() + reason[1:]
    if op and path:
        return f"{op} {path}: {reason}"
    return reason


def _file_error(error: OSError, op: str, path: str) -> JSON:
    if error.errno == errno.ENOENT:
        kind = "not-found"
    elif error.errno in (errno.EACCES, errno.EPERM):
        kind = "permission-denied"
    else:
        kind = "generic-file-error"
    return {"message": _os_error_text(error, op, path), "kind": kind}


# --------------------------------------------------------------------------------------------
# HTTP: the routes and the handler.


# Pebble's endpoints that the charms do not call (checked against ops' client): 501, as for exec.
_UNIMPLEMENTED = (
    "/v1/changes",  # list, get, abort (ops waits on /v1/changes/{id}/wait, which is served)
    "/v1/checks",
    "/v1/health",
    "/v1/signals",
    "/v1/exec",
    "/v1/logs",
    "/v1/notices",
    "/v1/identities",
    "/v1/pairing",
    "/v1/metrics",
)


class _Response:
    """A JSON envelope: Pebble's ``type``, ``status-code``, ``status``, ``result``, ``change``."""

    def __init__(
        self,
        status: int = HTTPStatus.OK,
        result: Any = None,
        change: str = "",
        kind: str = "sync",
    ):
        self.status = status
        self.result = result
        self.change = change
        self.kind = kind

    def body(self) -> bytes:
        """The encoded body."""
        envelope: JSON = {
            "type": self.kind,
            "status-code": int(self.status),
            "status": HTTPStatus(self.status).phrase,
        }
        if self.change:
            envelope["change"] = self.change
        if self.result is not None or self.kind == "async":
            envelope["result"] = self.result
        return json.dumps(envelope).encode()


def _error_response(error: APIError) -> _Response:
    return _Response(status=error.status, result=error.result(), kind="error")


class _Request:
    """What a route handler needs from a request."""

    def __init__(
        self, method: str, path: str, query: dict[str, list[str]], headers: Any, body: bytes
    ):
        self.method = method
        self.path = path
        self.query = query
        self.headers = headers
        self.body = body

    def arg(self, name: str) -> str:
        """The first value of a query parameter, or ``""``."""
        return self.query.get(name, [""])[0]

    def names(self, key: str = "names") -> list[str]:
        """A repeated and/or comma-separated list parameter (Pebble's MultiCommaSeparatedList)."""
        return [
            item.strip()
            for value in self.query.get(key, [])
            for item in value.split(",")
            if item.strip()
        ]

    def json(self, wording: str = "cannot decode data from request body") -> JSON:
        """The body decoded as a JSON object; raises a 400 like Pebble's decoder errors."""
        try:
            data = json.loads(self.body or b"null")
        except ValueError as e:
            raise _bad_request(f"{wording}: {e}") from None
        if data is None:
            raise _bad_request(f"{wording}: EOF")
        if not isinstance(data, dict):
            raise _bad_request(f"{wording}: cannot unmarshal {type(data).__name__} into an object")
        return cast("JSON", data)


Route = Callable[[_Request], _Response]


class Pebble:
    """The API: system info, layers and plan, services, waiting on a change, pushing files."""

    def __init__(self, state_dir: Path, root: Path, okay_delay: float = OKAY_DELAY):
        self.state_dir = state_dir
        self.root = root
        self.boot_id = str(uuid.uuid4())
        self.services = ServiceManager(state_dir, root, okay_delay)
        self.layers: list[Layer] = []
        self.routes: dict[str, dict[str, Route]] = {
            "/v1/system-info": {"GET": self.get_system_info},
            "/v1/services": {"GET": self.get_services, "POST": self.post_services},
            "/v1/plan": {"GET": self.get_plan},
            "/v1/layers": {"POST": self.post_layers},
            "/v1/files": {"GET": self._unimplemented, "POST": self.post_files},
        }
        self._load_layers_dir()

    # ---- dispatch

    def handle(self, request: _Request) -> _Response:
        """Route a request; every failure becomes an error envelope."""
        try:
            return self._route(request)
        except APIError as e:
            return _error_response(e)
        except Exception as e:
            return _error_response(
                APIError(HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {e!r}")
            )

    def _route(self, request: _Request) -> _Response:
        path = request.path
        methods = self.routes.get(path)
        if methods is None:
            methods = self._pattern_route(path)
        if methods is None:
            if any(
                path == prefix or path.startswith(prefix + "/") for prefix in _UNIMPLEMENTED
            ) or (path.startswith("/v1/tasks/")):
                raise _not_implemented(path)
            raise APIError(HTTPStatus.NOT_FOUND, "invalid API endpoint requested")
        handler = methods.get(request.method)
        if handler is None:
            raise APIError(
                HTTPStatus.METHOD_NOT_ALLOWED, f"method {_go_quote(request.method)} not allowed"
            )
        return handler(request)

    def _unimplemented(self, request: _Request) -> _Response:
        raise _not_implemented(f"{request.method} {request.path}")

    def _pattern_route(self, path: str) -> dict[str, Route] | None:
        parts = path.split("/")
        if len(parts) == 5 and parts[:3] == ["", "v1", "changes"] and parts[4] == "wait":
            change_id = urllib.parse.unquote(parts[3])
            return {"GET": lambda r: self.get_change_wait(r, change_id)}
        if len(parts) == 4 and parts[:3] == ["", "v1", "services"] and parts[3]:
            return {
                "GET": lambda r: _error_response(_bad_request("not implemented")),
                "POST": lambda r: _error_response(_bad_request("not implemented")),
            }
        return None

    # ---- system

    def get_system_info(self, _: _Request) -> _Response:
        """``GET /v1/system-info``."""
        return _Response(result={"boot-id": self.boot_id, "version": VERSION})

    # ---- layers and plan

    def _load_layers_dir(self) -> None:
        directory = self.state_dir / "layers"
        if not directory.is_dir():
            return
        pattern = re.compile(r"^(\d{3})-([a-z](?:-?[a-z0-9]){2,})\.yaml$")
        for path in sorted(directory.iterdir()):
            match = pattern.match(path.name)
            if match is None:
                raise LayerError(
                    f"invalid layer filename: {_go_quote(path.name)} "
                    '(must look like "123-some-label.yaml")'
                )
            self.layers.append(Layer.parse(int(match.group(1)), match.group(2), path.read_text()))
        self._update_plan(self.layers)

    def _update_plan(self, layers: list[Layer]) -> None:
        plan = combine_layers(layers)
        plan.validate()
        with self.services.lock:
            self.layers = layers
            self.services.plan = plan

    def get_plan(self, request: _Request) -> _Response:
        """``GET /v1/plan?format=yaml``."""
        if request.arg("format") != "yaml":
            raise _bad_request(f"invalid format {_go_quote(request.arg('format'))}")
        with self.services.lock:
            return _Response(result=self.services.plan.to_yaml())

    def post_layers(self, request: _Request) -> _Response:
        """``POST /v1/layers``: add or combine a layer."""
        payload = request.json("cannot decode request body")
        if payload.get("action") != "add":
            raise _bad_request(f"invalid action {_go_quote(str(payload.get('action', '')))}")
        label = str(payload.get("label") or "")
        if not label:
            raise _bad_request("label must be set")
        if payload.get("format") != "yaml":
            raise _bad_request(f"invalid format {_go_quote(str(payload.get('format', '')))}")
        with self.services.lock:
            try:
                new = Layer.parse(0, label, str(payload.get("layer") or ""))
            except LayerError as e:
                raise _bad_request(f"cannot parse layer YAML: {e}") from None
            existing = next((layer for layer in self.layers if layer.label == label), None)
            layers = [copy.deepcopy(layer) for layer in self.layers]
            try:
                if existing is not None and not payload.get("combine"):
                    raise LayerError(f"layer {_go_quote(label)} already exists")
                if existing is not None:
                    target = next(layer for layer in layers if layer.label == label)
                    target.combine(new)
                else:
                    new.order = max((layer.order for layer in layers), default=0) + 1
                    layers.append(new)
                self._update_plan(layers)
            except LayerError as e:
                raise _bad_request(str(e)) from None
        return _Response(result=True)

    # ---- services and changes

    def get_services(self, request: _Request) -> _Response:
        """``GET /v1/services?names=...``."""
        return _Response(result=self.services.service_infos(request.names()))

    def post_services(self, request: _Request) -> _Response:
        """``POST /v1/services``: autostart, replan, start, stop, restart (async)."""
        payload = request.json()
        action = str(payload.get("action") or "")
        requested = _string_list(payload, "services", "cannot decode data from request body")
        if action in ("replan", "autostart"):
            if requested:
                raise _bad_request(f"{action} accepts no service names")
        elif not requested:
            raise _bad_request(f"must specify services for {action} action")
        elif action not in ("start", "stop", "restart"):
            raise _bad_request(f"invalid action {_go_quote(action)}")
        with self.services.lock:
            if action == "autostart":
                requested = self._default_services()
            change = self.services.submit(action, requested)
        return _Response(status=HTTPStatus.ACCEPTED, kind="async", change=change.id)

    def _default_services(self) -> list[str]:
        plan = self.services.plan
        enabled = [
            name for name, config in plan.services.items() if config.get("startup") == "enabled"
        ]
        if not enabled:
            raise APIError(
                HTTPStatus.BAD_REQUEST, "no default services", kind="no-default-services"
            )
        return [name for lane in plan.start_order(enabled) for name in lane]

    def _change(self, change_id: str) -> Change:
        change = self.services.changes.get(change_id)
        if change is None:
            raise APIError(
                HTTPStatus.NOT_FOUND, f"cannot find change with id {_go_quote(change_id)}"
            )
        return change

    def get_change_wait(self, request: _Request, change_id: str) -> _Response:
        """``GET /v1/changes/{id}/wait?timeout=...``: 504 when the timeout passes first."""
        with self.services.lock:
            change = self._change(change_id)
        text = request.arg("timeout")
        try:
            timeout = parse_duration(text) if text else 0.0
        except ValueError as e:
            raise _bad_request(f"invalid timeout: {e}") from None
        if not change.ready_event.wait(timeout if timeout > 0 else None):
            raise APIError(
                HTTPStatus.GATEWAY_TIMEOUT,
                f"timed out waiting for change after {format_duration(timeout)}",
            )
        with self.services.lock:
            return _Response(result=change.to_json())

    # ---- checks

    # ---- files

    def post_files(self, request: _Request) -> _Response:
        """``POST /v1/files``: a multipart write (ops' push); make-dirs and remove answer 501."""
        content_type = request.headers.get("Content-Type", "")
        message = email.parser.Parser().parsestr(f"Content-Type: {content_type}\n\n")
        media = message.get_content_type() if content_type else ""
        if media == "multipart/form-data":
            boundary = str(message.get_param("boundary") or "")
            if len(boundary) < _MIN_BOUNDARY_LENGTH:
                raise _bad_request(f"invalid boundary {_go_quote(boundary)}")
            return self._write_files(request.body, boundary)
        if media == "application/json":
            payload = request.json("cannot decode request body")
            action = payload.get("action")
            if action in ("make-dirs", "remove"):
                raise _not_implemented(f"/v1/files action {action}")
            if action == "write":
                raise _bad_request('must use multipart with "write" action')
            raise _bad_request(f"invalid action {_go_quote(str(action or ''))}")
        raise _bad_request(f"invalid media type {_go_quote(media)}")

    def _write_files(self, body: bytes, boundary: str) -> _Response:
        parts = _parse_multipart(body, boundary)
        if not parts or parts[0][0] != "request":
            got = parts[0][0] if parts else ""
            raise _bad_request(f'metadata field name must be "request", got {_go_quote(got)}')
        try:
            metadata = json.loads(parts[0][2])
        except ValueError as e:
            raise _bad_request(f"cannot decode request metadata: {e}") from None
        action = str(metadata.get("action", ""))
        if action != "write":
            raise _bad_request(f'multipart action must be "write", got {_go_quote(action)}')
        files: list[JSON] = metadata.get("files") or []
        if not files:
            raise _bad_request("must specify one or more files")
        infos = {str(item.get("path")): item for item in files}
        errors: dict[str, JSON | None] = {}
        for name, filename, content in parts[1:]:
            if name != "files":
                raise _bad_request(f'field name must be "files", got {_go_quote(name)}')
            if filename not in infos:
                raise _bad_request(f"no metadata for path {_go_quote(filename)}")
            errors[filename] = self._write_one(infos[filename], content)
        result: list[JSON] = []
        for item in files:
            path = str(item.get("path"))
            entry: JSON = {"path": path}
            error = (
                errors[path]
                if path in errors
                else {
                    "message": f"no file content for path {_go_quote(path)}",
                    "kind": "generic-file-error",
                }
            )
            if error is not None:
                entry["error"] = error
            result.append(entry)
        return _Response(result=result)

    def _write_one(self, item: JSON, content: bytes) -> JSON | None:
        path = str(item.get("path"))
        if not path.startswith("/"):
            return {
                "message": f"paths must be absolute, got {_go_quote(path)}",
                "kind": "generic-file-error",
            }
        try:
            mode = _permissions(item.get("permissions"), 0o644)
            owner = _owner(item)
        except ValueError as e:
            return {"message": str(e), "kind": "generic-file-error"}
        host = self.services.map_path(path)
        parent = os.path.dirname(host)
        if item.get("make-dirs"):
            try:
                _make_dirs(parent, 0o755, owner)
            except OSError as e:
                return _file_error(e, "mkdir", posixpath.dirname(path))
        temp = f"{host}.~{secrets.token_hex(6)}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        except OSError as e:
            return _file_error(e, "open", path)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(content)
            os.chmod(temp, mode)
            if owner is not None:
                os.chown(temp, *owner)
            os.replace(temp, host)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            return _file_error(e, "write", path)
        return None

    def close(self) -> None:
        """Stop the services."""
        self.services.shutdown()


def _json_type(value: Any) -> str:
    """How Go's JSON decoder names the type of a value it cannot decode."""
    names = {bool: "bool", str: "string", int: "number", float: "number", dict: "object"}
    return names.get(type(value), "array")


def _string_list(payload: JSON, key: str, wording: str) -> list[str]:
    """A JSON field that must be a list of strings (or absent), refused as Go's decoder would."""
    value = payload.get(key)
    if value is None:
        return []
    items = cast("list[Any]", value) if isinstance(value, list) else None
    if items is None or not all(isinstance(item, str) for item in items):
        raise _bad_request(
            f"{wording}: json: cannot unmarshal {_json_type(value)} into Go struct field "
            f".{key} of type []string"
        )
    return [str(item) for item in items]


def _permissions(value: Any, default: int) -> int:
    if not value:
        return default
    text = str(value)
    if len(text) != 3 or any(c not in "01234567" for c in text):
        raise ValueError(f"permissions must be a 3-digit octal string, got {_go_quote(text)}")
    return int(text, 8)


def _owner(item: JSON) -> tuple[int, int] | None:
    """The uid/gid to chown to, from user/user-id/group/group-id; None to leave as is."""
    if not any(
        item.get(key) not in (None, "") for key in ("user", "user-id", "group", "group-id")
    ):
        return None
    try:
        uid, gid = _resolve_user(item)
    except OSError as e:
        raise ValueError(f"cannot look up user and group: {e.strerror}") from None
    except KeyError as e:
        raise ValueError(f"cannot look up user and group: {e.args[0]}") from None
    if uid is None or gid is None:
        return None
    return uid, gid


def _make_dirs(path: str, mode: int, owner: tuple[int, int] | None) -> None:
    missing: list[str] = []
    current = path
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        os.mkdir(directory, mode)
        os.chmod(directory, mode)
        if owner is not None:
            os.chown(directory, *owner)


def _parse_multipart(body: bytes, boundary: str) -> list[tuple[str, str, bytes]]:
    """Split a multipart/form-data body into (field name, filename, content) triples."""
    delimiter = b"--" + boundary.encode()
    parts: list[tuple[str, str, bytes]] = []
    chunks = body.split(delimiter)
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            break
        head, sep, content = chunk.removeprefix(b"\r\n").partition(b"\r\n\r\n")
        if not sep:
            raise _bad_request("cannot read file part: malformed MIME header")
        headers = email.parser.BytesHeaderParser().parsebytes(head + b"\r\n\r\n")
        disposition = headers.get("Content-Disposition", "")
        message = email.parser.Parser().parsestr(f"Content-Disposition: {disposition}\n\n")
        name = str(message.get_param("name", header="content-disposition") or "")
        filename = message.get_filename() or ""
        parts.append((name, filename, content.removesuffix(b"\r\n")))
    return parts


class _Handler(http.server.BaseHTTPRequestHandler):
    """Decode HTTP/1.1 (including chunked bodies), hand the request to the API, answer."""

    protocol_version = "HTTP/1.1"
    pebble: Pebble

    def send_response(self, code: int, message: str | None = None) -> None:
        """Status line and Date, without the stdlib's Server header (Go's server sends none)."""
        self.log_request(code)
        self.send_response_only(code, message)
        self.send_header("Date", self.date_time_string())

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet; requests are not logged."""

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks: list[bytes] = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        request = _Request(
            self.command,
            url.path,
            urllib.parse.parse_qs(url.query, keep_blank_values=True),
            self.headers,
            self._body(),
        )
        response = self.pebble.handle(request)
        body = response.body()
        self.send_response(int(response.status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = _serve  # noqa: N815 - http.server's naming
    do_POST = _serve  # noqa: N815
    do_PUT = _serve  # noqa: N815
    do_DELETE = _serve  # noqa: N815
    do_PATCH = _serve  # noqa: N815


class _UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    allow_reuse_address = False


class PebbleStandin:
    """The stand-in server: ``start()`` listens on ``socket_path``, ``stop()`` ends everything.

    Args:
        socket_path: where to listen (the file is created atomically once it accepts
            connections, and removed by ``stop()``).
        state_dir: service logs under ``logs/``; layers read at start from ``layers/``.
        root: the container's root filesystem (see the module docstring); ``/`` maps nothing.
        okay_delay: how long a started command must keep running for its start to succeed.
    """

    def __init__(
        self,
        socket_path: str | os.PathLike[str],
        state_dir: str | os.PathLike[str],
        *,
        root: str | os.PathLike[str] = "/",
        okay_delay: float = OKAY_DELAY,
    ):
        self.socket_path = Path(socket_path)
        self.state_dir = Path(state_dir)
        self.root = Path(root)
        self._okay_delay = okay_delay
        self._server: _UnixServer | None = None
        self._thread: threading.Thread | None = None
        self.api: Pebble | None = None

    def start(self) -> None:
        """Listen and serve in a background thread."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        self.api = Pebble(self.state_dir, self.root, self._okay_delay)
        handler = type("BoundHandler", (_Handler,), {"pebble": self.api})
        # Two characters longer than the real name: AF_UNIX paths are limited to 107 bytes.
        temporary = self.socket_path.with_name(f".{self.socket_path.name}~")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        self._server = _UnixServer(str(temporary), handler)
        # The socket file appears under its real name only once it is listening.
        os.replace(temporary, self.socket_path)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="pebble-standin", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop every service and check, stop serving, remove the socket."""
        if self.api is not None:
            self.api.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def __enter__(self) -> PebbleStandin:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description="A Pebble API stand-in on a Unix socket.")
    parser.add_argument("--socket", required=True, help="the socket path to listen on")
    parser.add_argument("--state-dir", required=True, help="service logs and start-up layers")
    parser.add_argument("--root", default="/", help="the container's root filesystem")
    parser.add_argument("--okay-delay", type=float, default=OKAY_DELAY, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    standin = PebbleStandin(
        args.socket, args.state_dir, root=args.root, okay_delay=args.okay_delay
    )
    done = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        done.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    standin.start()
    print("ready", flush=True)
    try:
        while not done.wait(1):
            pass
    finally:
        standin.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
