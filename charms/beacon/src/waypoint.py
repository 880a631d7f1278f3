"""The waypoint: a Gateway that Istio turns into a proxy Deployment, and its autoscaler.

Pure builders first (no client), then the functions that converge and delete them.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from charms.istio_beacon_k8s.v0.service_mesh import MissingCRDError
from kubernetes_client import is_applied, is_unserved_kind, status_code
from lightkube import ApiError, Client
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSION = "v1"
GATEWAY_PLURAL = "gateways"
GATEWAY_CRD = f"{GATEWAY_PLURAL}.{GATEWAY_GROUP}"
WAYPOINT_CLASS = "istio-waypoint"
WAYPOINT_PORT = 15008
_MAX_NAME = 63  # the Gateway's name becomes a Service name and a label value


def waypoint_name(model_name: str, app_name: str) -> str:
    """``<model>-<app>-waypoint``, shortened with a hash suffix when longer than 63 characters."""
    name = f"{model_name}-{app_name}-waypoint"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - len(digest) - 1].rstrip('-')}-{digest}"


def consumer_labels(waypoint: str, namespace: str, model_on_mesh: bool) -> dict[str, str]:
    """The labels published to related apps: what puts a pod and Service behind the waypoint.

    Empty when the whole namespace is labelled instead (consumers then remove theirs).
    """
    if model_on_mesh:
        return {}
    return {
        "istio.io/dataplane-mode": "ambient",
        "istio.io/use-waypoint": waypoint,
        "istio.io/use-waypoint-namespace": namespace,
    }


def build_gateway(
    name: str,
    namespace: str,
    labels: Mapping[str, str],
    extra_labels: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The waypoint Gateway manifest; ``extra_labels`` reach the waypoint pods too (telemetry)."""
    return {
        "apiVersion": f"{GATEWAY_GROUP}/{GATEWAY_VERSION}",
        "kind": "Gateway",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {**(extra_labels or {}), **labels, "istio.io/waypoint-for": "service"},
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [
                {
                    "name": "mesh",
                    "port": WAYPOINT_PORT,
                    "protocol": "HBONE",
                    "allowedRoutes": {"namespaces": {"from": "All"}},
                }
            ],
        },
    }


def build_autoscaler(
    name: str, namespace: str, replicas: int, labels: Mapping[str, str]
) -> dict[str, Any]:
    """An autoscaler that pins the waypoint Deployment (named like the Gateway) to ``replicas``.

    Raises:
        ValueError: when ``replicas`` is below 1 (Kubernetes refuses such an autoscaler).
    """
    if replicas < 1:
        raise ValueError(f"a waypoint autoscaler needs at least 1 replica, got {replicas}")
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": replicas,
            "maxReplicas": replicas,
        },
    }


@dataclass(frozen=True)
class WaypointReadiness:
    """How far the waypoint Deployment that Istio creates from the Gateway is.

    Attributes:
        ready: whether every wanted replica is ready.
        detail: what is missing, for a status message (empty when ready).
    """

    ready: bool
    detail: str = ""


@functools.cache
def gateway_resource() -> type[GenericNamespacedResource]:
    """The lightkube resource class of Gateway API Gateways."""
    return create_namespaced_resource(GATEWAY_GROUP, GATEWAY_VERSION, "Gateway", GATEWAY_PLURAL)


def _list_owned(
    client: Client, resource: Any, namespace: str, labels: Mapping[str, str]
) -> dict[str, dict[str, Any]]:
    """The owned objects of a kind, by name, as plain dicts."""
    api: Any = client  # lightkube's list overloads are only partly typed
    items: list[Any] = list(api.list(resource, namespace=namespace, labels=dict(labels)))
    return {item.metadata.name: cast("dict[str, Any]", item.to_dict()) for item in items}


def _converge(
    client: Client, resource: Any, wanted: dict[str, Any] | None, labels: Mapping[str, str]
) -> bool:
    """Make the owned objects of one kind be ``wanted`` (or nothing); returns whether it wrote."""
    api: Any = client
    namespace = str(client.namespace)
    existing = _list_owned(client, resource, namespace, labels)
    wrote = False
    if wanted is not None:
        name = wanted["metadata"]["name"]
        current = existing.pop(name, None)
        if current is None or not is_applied(wanted, current):
            api.apply(resource.from_dict(wanted), force=True)
            wrote = True
    for name in existing:
        _delete(client, resource, name, namespace)
        wrote = True
    return wrote


def _delete(client: Client, resource: Any, name: str, namespace: str) -> None:
    api: Any = client
    try:
        api.delete(resource, name, namespace=namespace)
    except Exception as error:  # lightkube.ApiError, or an HTTP error if the kind went away
        if status_code(error) != 404:
            raise


def reconcile_waypoint(
    client: Client,
    name: str,
    replicas: int,
    labels: Mapping[str, str],
    gateway_labels: Mapping[str, str] | None = None,
) -> WaypointReadiness:
    """Converge the waypoint Gateway and its autoscaler, then report the waypoint's readiness.

    With ``replicas`` 0 both are removed (the app is going away). Nothing is written when the
    objects already are as wanted; every kind costs one list.

    Args:
        client: the Kubernetes client; its namespace is the waypoint's.
        name: the waypoint name (see :func:`waypoint_name`).
        replicas: how many waypoint replicas (the beacon's planned units).
        labels: the ownership labels that mark the objects as the beacon's.
        gateway_labels: more labels for the Gateway only (Istio copies them onto the pods).

    Raises:
        MissingCRDError: the Gateway CRD is not installed (Istio is missing).
        lightkube.ApiError: anything else Kubernetes refused (403: the charm is not trusted).
    """
    namespace = str(client.namespace)
    gateway = build_gateway(name, namespace, labels, gateway_labels) if replicas > 0 else None
    try:
        _converge(client, gateway_resource(), gateway, labels)
    except Exception as error:  # lightkube.ApiError, or an HTTP error: see is_unserved_kind
        if is_unserved_kind(error):
            raise MissingCRDError(GATEWAY_CRD, "deploy istio-k8s") from error
        raise
    autoscaler = build_autoscaler(name, namespace, replicas, labels) if replicas > 0 else None
    _converge(client, HorizontalPodAutoscaler, autoscaler, labels)
    if replicas == 0:
        return WaypointReadiness(ready=True)
    return waypoint_readiness(client, name)


def waypoint_readiness(client: Client, name: str) -> WaypointReadiness:
    """Whether the Deployment Istio made for the waypoint has all its replicas ready."""
    try:
        deployment = client.get(Deployment, name, namespace=str(client.namespace))
    except ApiError as error:
        if status_code(error) != 404:
            raise
        return WaypointReadiness(False, f"Istio has not created the {name} Deployment yet")
    wanted = deployment.spec.replicas if deployment.spec and deployment.spec.replicas else 1
    ready = (deployment.status.readyReplicas if deployment.status else None) or 0
    if ready < wanted:
        return WaypointReadiness(False, f"{ready}/{wanted} {name} replicas ready")
    return WaypointReadiness(ready=True)


def delete_waypoint(client: Client, labels: Mapping[str, str]) -> None:
    """Delete every Gateway and autoscaler the beacon owns; a missing Gateway CRD is fine.

    Raises:
        lightkube.ApiError: when Kubernetes refuses (403: the charm is not trusted).
    """
    try:
        _converge(client, gateway_resource(), None, labels)
    except Exception as error:  # lightkube.ApiError, or an HTTP error: see is_unserved_kind
        if not is_unserved_kind(error):
            raise
    _converge(client, HorizontalPodAutoscaler, None, labels)
