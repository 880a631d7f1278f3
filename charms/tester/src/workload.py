"""The tester's workload: which servers run in the workload container and how Pebble runs them."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ops

CONTAINER_NAME = "workload"
# The ports the tester's policies open, and the Service exposes.
POLICY_PORTS = (8080, 8081)
# Served too, but named by no policy: a request that reaches it through the mesh proves that the
# mesh enforces nothing (with no server there, "refused" would prove nothing).
UNLISTED_PORT = 8083
SERVER_PORTS = (*POLICY_PORTS, UNLISTED_PORT)

# The chiselled Python rock has no shell and no PATH lookup to rely on: run python3 directly.
PYTHON = "/usr/bin/python3"
SERVER_SCRIPT_PATH = "/srv/service-mesh-tester/workload_server.py"
_SERVER_SOURCE = Path(__file__).with_name("workload_server.py")


def service_name(port: int) -> str:
    """Name of the Pebble service serving ``port``."""
    return f"http-{port}"


def server_source() -> str:
    """The source of the HTTP server script that is pushed into the workload container."""
    return _SERVER_SOURCE.read_text()


def pebble_layer(app_name: str, unit_name: str, source: str) -> ops.pebble.LayerDict:
    """The Pebble layer that runs one HTTP server process per port.

    The script's hash is part of each service's environment, so a charm upgrade that changes the
    script changes the layer and ``replan`` restarts the servers with the new code.
    """
    digest = hashlib.sha256(source.encode()).hexdigest()
    services: dict[str, ops.pebble.ServiceDict] = {
        service_name(port): {
            "override": "replace",
            "summary": f"HTTP server answering on port {port}",
            "command": f"{PYTHON} {SERVER_SCRIPT_PATH} --port {port}",
            "startup": "enabled",
            "environment": {
                "TESTER_APP": app_name,
                "TESTER_UNIT": unit_name,
                "TESTER_SERVER_SHA256": digest,
                "PYTHONUNBUFFERED": "1",
            },
        }
        for port in SERVER_PORTS
    }
    return {"summary": "service mesh tester HTTP servers", "services": services}


def ensure_running(container: ops.Container, app_name: str, unit_name: str) -> None:
    """Push the server script, apply the layer and (re)start what changed.

    Raises:
        ops.pebble.ConnectionError: if Pebble is not reachable (the caller checks
            ``can_connect`` first; Pebble can still go away in between).
    """
    source = server_source()
    container.push(SERVER_SCRIPT_PATH, source, make_dirs=True)
    container.add_layer(
        "service-mesh-tester", pebble_layer(app_name, unit_name, source), combine=True
    )
    container.replan()


def stopped_services(container: ops.Container) -> list[str]:
    """Names of the tester's services that are not running (all of them when none exist yet)."""
    names = [service_name(port) for port in SERVER_PORTS]
    services = container.get_services(*names)
    return [name for name in names if name not in services or not services[name].is_running()]
