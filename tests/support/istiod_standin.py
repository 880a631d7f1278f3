"""What istiod does with the beacon's waypoint Gateway, for tiers where no istiod runs.

istiod programs a waypoint Gateway (a ``Programmed`` condition for its generation and an address)
and runs it as a Deployment of ``istio-proxy`` pods selected by the Gateway's name. The beacon
reads both to decide whether the waypoint is ready. These builders give the objects as istiod
would leave them; :func:`run_waypoint` writes them to a real API server, where the status of an
object is only written through its ``status`` subresource.
"""

from __future__ import annotations

from typing import Any

from lightkube import Client, codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import DeploymentStatus
from lightkube.types import PatchType

GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"
#: The address istiod's Service for a waypoint gets, as the beacon's tests expect it.
WAYPOINT_ADDRESS = "10.152.183.7"

_GATEWAY = create_namespaced_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")


def programmed_status(generation: int, address: str = WAYPOINT_ADDRESS) -> dict[str, Any]:
    """The status istiod writes on a Gateway it has programmed (for ``generation``)."""
    condition = {
        "type": "Programmed",
        "status": "True",
        "reason": "Programmed",
        "message": "Resource programmed, assigned to service(s)",
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    return {"conditions": [condition], "addresses": [{"type": "IPAddress", "value": address}]}


def waypoint_deployment(
    name: str, namespace: str, replicas: int = 1, ready: int | None = None
) -> dict[str, Any]:
    """The Deployment istiod makes for waypoint ``name``: ``ready`` of ``replicas`` ready (all)."""
    selector = {GATEWAY_NAME_LABEL: name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": selector},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {
                "metadata": {"labels": selector},
                "spec": {"containers": [{"name": "istio-proxy", "image": "proxyv2"}]},
            },
        },
        "status": {"replicas": replicas, "readyReplicas": replicas if ready is None else ready},
    }


def program_gateway(admin: Client, name: str, namespace: str) -> None:
    """On a real API server: what istiod writes on Gateway ``name`` once it runs the waypoint."""
    gateway = admin.get(_GATEWAY, name, namespace=namespace)
    generation = (gateway.metadata.generation if gateway.metadata else None) or 1
    admin.patch(
        _GATEWAY.Status,
        name,
        {"status": programmed_status(generation)},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


def run_deployment(
    admin: Client, name: str, namespace: str, replicas: int = 1, ready: int | None = None
) -> None:
    """On a real API server: the waypoint's Deployment, with its status (a subresource there)."""
    manifest = waypoint_deployment(name, namespace, replicas, ready)
    status = manifest.pop("status")
    admin.create(codecs.from_dict(manifest))
    admin.patch(
        DeploymentStatus, name, {"status": status}, namespace=namespace, patch_type=PatchType.MERGE
    )


def run_waypoint(
    admin: Client, name: str, namespace: str, replicas: int = 1, ready: int | None = None
) -> None:
    """On a real API server: program Gateway ``name`` and run its Deployment."""
    program_gateway(admin, name, namespace)
    run_deployment(admin, name, namespace, replicas, ready)
