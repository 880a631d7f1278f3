"""The waypoint: a Gateway that Istio turns into a proxy Deployment, and its autoscaler.

Pure builders first (no client), then the functions that converge and delete them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from charms.istio_beacon_k8s.v0.service_mesh import MissingCRDError

# The waypoint's name and the labels it publishes live in kube_names (pure, no lightkube, needed
# by every hook); importable from here too, as they always were.
from kube_names import (  # noqa: F401
    GATEWAY_CRD,
    GATEWAY_GROUP,
    GATEWAY_PLURAL,
    GATEWAY_VERSION,
    WAYPOINT_FOR_LABEL,
    consumer_labels,
    waypoint_name,
    waypoint_principal,
)
from kubernetes_client import is_applied, is_unserved_kind, status_code
from lightkube import ApiError, Client
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from ownership import owns_waypoint_autoscaler

WAYPOINT_CLASS = "istio-waypoint"
WAYPOINT_PORT = 15008


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
            "labels": {**(extra_labels or {}), **labels, WAYPOINT_FOR_LABEL: "service"},
        },
        "spec": {
            "gatewayClassName": WAYPOINT_CLASS,
            "listeners": [
                {
                    "name": "mesh",
                    "port": WAYPOINT_PORT,
                    "protocol": "HBONE",
                    "allowedRoutes": {"namespaces": {"from": "Same"}},
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
    """Whether Istio uses the waypoint yet, and what is missing until it does.

    Istio sends traffic through a waypoint only once its Gateway is Programmed and has an
    address; until then the L7 policies are not enforced.

    Attributes:
        ready: the Gateway is Programmed for its current generation, has an address, and the
            Deployment Istio made from it has every wanted replica ready.
        detail: what is missing, for a status message (empty when ready).
    """

    ready: bool
    detail: str = ""


@functools.cache
def gateway_resource() -> type[GenericNamespacedResource]:
    """The lightkube resource class of Gateway API Gateways."""
    return create_namespaced_resource(GATEWAY_GROUP, GATEWAY_VERSION, "Gateway", GATEWAY_PLURAL)


def _to_dict(item: Any) -> dict[str, Any]:
    return cast("dict[str, Any]", item.to_dict())


def _delete(client: Client, resource: Any, name: str, namespace: str) -> None:
    api: Any = client
    try:
        api.delete(resource, name, namespace=namespace)
    except Exception as error:  # lightkube.ApiError, or an HTTP error if the kind went away
        if status_code(error) != 404:
            raise


class NotOwnedError(Exception):
    """An object the beacon would write exists under the same name and is not the beacon's.

    A forced server-side apply would take it over (keeping what its owner set besides): the
    beacon refuses instead, and says which object is in the way.
    """

    def __init__(self, kind: str, namespace: str, name: str):
        super().__init__(
            f"{kind} {namespace}/{name} exists and is not the beacon's (no "
            "charms.canonical.com/service-mesh.managed-by label of this beacon): remove or "
            "rename it"
        )


#: Whether an object that is not (yet) the beacon's may be taken over: the deployed charm's, after
#: a refresh (see adoption.py). ``None``: never.
TakeOver = Callable[[Mapping[str, Any]], bool]


def _converge_gateway(
    client: Client,
    wanted: dict[str, Any] | None,
    labels: Mapping[str, str],
    take_over: TakeOver | None = None,
) -> dict[str, Any] | None:
    """Make the beacon's Gateways be ``wanted`` (or none); returns the wanted one as it now is.

    Istio never generates Gateways, so the beacon's are those carrying its ownership labels.

    Raises:
        NotOwnedError: a Gateway of the wanted name exists and is neither the beacon's nor one
            ``take_over`` accepts.
    """
    api: Any = client  # lightkube's list overloads are only partly typed
    namespace = str(client.namespace)
    resource = gateway_resource()
    existing = {
        item.metadata.name: _to_dict(item)
        for item in api.list(resource, namespace=namespace, labels=dict(labels))
    }
    current: dict[str, Any] | None = None
    if wanted is not None:
        name = wanted["metadata"]["name"]
        current = existing.pop(name, None)
        if current is None:
            _check_unowned(client, resource, name, take_over)
        if current is None or not is_applied(wanted, current):
            current = _to_dict(api.apply(resource.from_dict(wanted), force=True))
    for name in existing:
        _delete(client, resource, name, namespace)
    return current


def _check_unowned(client: Client, resource: Any, name: str, take_over: TakeOver | None) -> None:
    """Refuse to apply over an object of that name that is not the beacon's (one GET)."""
    api: Any = client
    namespace = str(client.namespace)
    try:
        found = _to_dict(api.get(resource, name, namespace=namespace))
    except ApiError as error:
        if status_code(error) == 404:
            return
        raise
    if take_over is None or not take_over(found):
        raise NotOwnedError(resource.__name__, namespace, name)


def _carries(manifest: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    metadata = cast("Mapping[str, Any]", manifest.get("metadata") or {})
    have = cast("Mapping[str, str]", metadata.get("labels") or {})
    return all(have.get(key) == value for key, value in labels.items())


def _converge_autoscaler(
    client: Client,
    name: str,
    wanted: dict[str, Any] | None,
    labels: Mapping[str, str],
    take_over: TakeOver | None = None,
) -> dict[str, Any] | None:
    """Make the waypoint's autoscaler be ``wanted`` (or gone), never touching one of Istio's.

    Returns:
        The autoscaler Istio generated under that name (the beacon then leaves the replicas to
        it), or ``None``.
    """
    api: Any = client
    namespace = str(client.namespace)
    try:
        current: dict[str, Any] | None = _to_dict(
            api.get(HorizontalPodAutoscaler, name, namespace=namespace)
        )
    except ApiError as error:
        if status_code(error) != 404:
            raise
        current = None
    if current is not None and not owns_waypoint_autoscaler(current, name):
        return current  # Istio's: never adopted, changed or deleted
    if (
        wanted is not None
        and current is not None
        and not _carries(current, labels)
        and not (take_over is not None and take_over(current))
    ):
        raise NotOwnedError("HorizontalPodAutoscaler", namespace, name)
    if wanted is None:
        if current is not None and _carries(current, labels):
            # Only one the beacon wrote: a same-named autoscaler of the deployed charm that was
            # never adopted, or anyone else's, is not the beacon's to remove.
            _delete(client, HorizontalPodAutoscaler, name, namespace)
    elif current is None or not is_applied(wanted, current):
        api.apply(HorizontalPodAutoscaler.from_dict(wanted), force=True)
    return None


def reconcile_waypoint(
    client: Client,
    name: str,
    replicas: int,
    labels: Mapping[str, str],
    gateway_labels: Mapping[str, str] | None = None,
    rollback_labels: Mapping[str, str] | None = None,
    take_over: TakeOver | None = None,
) -> WaypointReadiness:
    """Converge the waypoint Gateway and its autoscaler, then report the waypoint's readiness.

    With ``replicas`` 0 both are removed (the app is going away). Nothing is written when the
    objects already are as wanted.

    Args:
        client: the Kubernetes client; its namespace is the waypoint's.
        name: the waypoint name (see :func:`waypoint_name`).
        replicas: how many waypoint replicas (the beacon's planned units).
        labels: the ownership labels that mark the objects as the beacon's.
        gateway_labels: more labels for the Gateway only (Istio copies them onto the pods).
        rollback_labels: more labels for the Gateway and the autoscaler: those by which the
            deployed charm recognises them after a rollback (``adoption.rollback_labels``).
        take_over: which same-named objects that are not the beacon's it may take over (the
            deployed charm's, after a refresh); any other is refused.

    Raises:
        NotOwnedError: a same-named Gateway or autoscaler is someone else's.
        MissingCRDError: the Gateway CRD is not installed (Istio is missing).
        lightkube.ApiError: anything else Kubernetes refused (403: the charm is not trusted).
    """
    namespace = str(client.namespace)
    extra = {**(gateway_labels or {}), **(rollback_labels or {})}
    wanted = build_gateway(name, namespace, labels, extra) if replicas > 0 else None
    try:
        gateway = _converge_gateway(client, wanted, labels, take_over)
    except Exception as error:  # lightkube.ApiError, or an HTTP error: see is_unserved_kind
        if is_unserved_kind(error):
            raise MissingCRDError(GATEWAY_CRD, "deploy istio-k8s") from error
        raise
    autoscaler = (
        build_autoscaler(name, namespace, replicas, {**(rollback_labels or {}), **labels})
        if replicas > 0
        else None
    )
    istio_autoscaler = _converge_autoscaler(client, name, autoscaler, labels, take_over)
    if replicas == 0:
        return WaypointReadiness(ready=True)
    return waypoint_readiness(
        client, name, gateway, None if istio_autoscaler is not None else replicas
    )


def _condition(manifest: Mapping[str, Any] | None, kind: str) -> Mapping[str, Any] | None:
    status = cast("Mapping[str, Any]", (manifest or {}).get("status") or {})
    for condition in cast("list[Mapping[str, Any]]", status.get("conditions") or []):
        if condition.get("type") == kind:
            return condition
    return None


def _short(text: object, limit: int = 80) -> str:
    """Text written by the cluster, cut short and kept on one line for a status message."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else f"{line[: limit - 3]}..."


def gateway_missing(gateway: Mapping[str, Any] | None) -> list[str]:
    """What keeps Istio from using the waypoint Gateway, from its status (empty: nothing).

    Istio uses a waypoint once its Gateway is ``Programmed`` (for the generation it has now) and
    has at least one address in ``status.addresses``.
    """
    if gateway is None:
        return ["no Gateway"]
    missing: list[str] = []
    generation = cast("Mapping[str, Any]", gateway.get("metadata") or {}).get("generation")
    programmed = _condition(gateway, "Programmed")
    if programmed is None:
        missing.append("Istio has not programmed the Gateway yet")
    elif programmed.get("status") != "True":
        reason = _short(programmed.get("reason") or "no reason")
        message = programmed.get("message")
        missing.append(
            f"Gateway not Programmed ({reason}{': ' + _short(message) if message else ''})"
        )
    elif generation is not None and programmed.get("observedGeneration") not in (None, generation):
        missing.append("Istio has not programmed the Gateway's latest change yet")
    status = cast("Mapping[str, Any]", gateway.get("status") or {})
    if not status.get("addresses"):
        missing.append("the Gateway has no address yet")
    return missing


def waypoint_readiness(
    client: Client,
    name: str,
    gateway: Mapping[str, Any] | None,
    wanted_replicas: int | None,
) -> WaypointReadiness:
    """Whether Istio uses the waypoint yet: the Gateway's status, then its Deployment's replicas.

    Args:
        client: the Kubernetes client; its namespace is the waypoint's.
        name: the waypoint name (its Gateway's and Deployment's).
        gateway: the Gateway as it is now (``None`` when absent).
        wanted_replicas: how many replicas the beacon wants; ``None`` when the replicas are
            someone else's to decide (an autoscaler Istio generated): then the Deployment's own.
    """
    missing = gateway_missing(gateway)
    try:
        deployment = client.get(Deployment, name, namespace=str(client.namespace))
    except ApiError as error:
        if status_code(error) != 404:
            raise
        missing.append(f"Istio has not created the {name} Deployment yet")
    else:
        spec_replicas = deployment.spec.replicas if deployment.spec else None
        wanted = wanted_replicas if wanted_replicas is not None else (spec_replicas or 1)
        ready = (deployment.status.readyReplicas if deployment.status else None) or 0
        if ready < wanted:
            missing.append(f"{ready}/{wanted} {name} replicas ready")
    if missing:
        return WaypointReadiness(False, "; ".join(missing))
    return WaypointReadiness(ready=True)


def delete_waypoint(client: Client, name: str, labels: Mapping[str, str]) -> None:
    """Delete the beacon's Gateways and its waypoint autoscaler; a missing Gateway CRD is fine.

    What Istio generated from the Gateway is left to Kubernetes' garbage collector.

    Raises:
        lightkube.ApiError: when Kubernetes refuses (403: the charm is not trusted).
    """
    try:
        _converge_gateway(client, None, labels)
    except Exception as error:  # lightkube.ApiError, or an HTTP error: see is_unserved_kind
        if not is_unserved_kind(error):
            raise
    _converge_autoscaler(client, name, None, labels)
