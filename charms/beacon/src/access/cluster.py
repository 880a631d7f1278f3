"""Read what the access engine decides from: the model's Kubernetes objects and its requests.

One list per kind (namespace, StatefulSets, Services, AuthorizationPolicies) and one read of the
waypoint; everything else in the package is pure.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

from charms.istio_beacon_k8s.v0.service_mesh import (
    MissingCRDError,
    RelationRequest,
    authorization_policy_name,
)
from kube_names import (
    APP_NAME_LABEL,
    AUTHZ_CRD,
    NAMESPACE_OWNER_LABEL,
    USE_WAYPOINT_LABEL,
    authorization_policy_resource,
)
from kubernetes_client import is_unserved_kind, status_code
from lightkube import Client
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import Namespace, Service
from namespace_labels import owner_value
from ownership import MANAGED_BY
from policies import WaypointBinding, build_policy_manifests, check_requests, proven_owners
from waypoint import gateway_resource, waypoint_readiness

from access.model import Model, Refused, Requested, Workload
from access.parsing import parse_policy


def _labels(item: Any) -> dict[str, str]:
    metadata = getattr(item, "metadata", None)
    return dict(getattr(metadata, "labels", None) or {})


def workloads(
    statefulsets: Sequence[tuple[str, dict[str, str]]],
    services: Sequence[tuple[str, dict[str, str]]],
) -> tuple[Workload, ...]:
    """The model's apps from its StatefulSets (Juju makes one per app) and Services.

    Args:
        statefulsets: ``(name, pod template labels)`` of each StatefulSet.
        services: ``(name, labels)`` of each Service.
    """
    by_name = dict(services)
    result: list[Workload] = []
    for name, pod_labels in sorted(statefulsets):
        others = tuple(
            sorted(
                service
                for service, labels in services
                if service != name
                and labels.get(APP_NAME_LABEL) == name
                and service != f"{name}-endpoints"
            )
        )
        result.append(
            Workload(
                name=name,
                pod_labels=pod_labels,
                service=name if name in by_name else None,
                service_labels=by_name.get(name, {}),
                other_services=others,
            )
        )
    return tuple(result)


def requests_state(
    requests: Sequence[RelationRequest],
    namespace: str,
    services: dict[str, dict[str, str]],
    managing: bool,
    binding: WaypointBinding | None = None,
) -> tuple[tuple[Requested, ...], tuple[Refused, ...]]:
    """What the beacon accepted (and the policy it makes for each) and what it refused.

    The same pure checks as the reconcile; with ``managing`` false nothing is applied, so
    nothing is expected in the cluster.
    """
    accepted, refused = check_requests(requests, namespace, services, binding)
    _, unbuildable = build_policy_manifests(accepted)
    requested: list[Requested] = []
    if managing:
        for item in accepted:
            try:
                name = authorization_policy_name(item.policy)
            except ValueError:  # pragma: no cover - the name never fails for a valid policy
                continue
            requested.append(
                Requested(
                    item.app_name,
                    item.relation_id,
                    name,
                    item.policy.source_app_name,
                    item.policy.source_namespace,
                )
            )
    refusals = [Refused(r.app_name, r.relation_id, r.reason) for r in refused + unbuildable]
    return tuple(requested), tuple(refusals)


def _gateway(client: Client, name: str) -> dict[str, Any] | None:
    """The waypoint's Gateway as it is now (``None``: absent, or no Gateway API)."""
    api: Any = client
    try:
        return cast("dict[str, Any]", api.get(gateway_resource(), name).to_dict())
    except Exception as error:  # lightkube.ApiError, or an HTTP error: see status_code
        if status_code(error) == 404:
            return None
        raise


def read_model(
    client: Client,
    namespace: str,
    beacon_app: str,
    waypoint: str,
    requests: Sequence[RelationRequest],
    *,
    managing: bool = True,
) -> Model:
    """Read the model's state from Kubernetes and the relations.

    Raises:
        MissingCRDError: the AuthorizationPolicy CRD is not installed (Istio is missing).
        lightkube.ApiError: what Kubernetes refused (403: the charm is not trusted).
    """
    api: Any = client  # lightkube's list overloads are only partly typed
    ns = client.get(Namespace, namespace)
    namespace_labels = dict((ns.metadata.labels if ns.metadata else None) or {})
    statefulsets: list[tuple[str, dict[str, str]]] = []
    for item in api.list(StatefulSet, namespace=namespace):
        template = item.spec.template if item.spec else None
        labels = dict((template.metadata.labels if template and template.metadata else None) or {})
        statefulsets.append((item.metadata.name, labels))
    services = [
        (item.metadata.name, _labels(item)) for item in api.list(Service, namespace=namespace)
    ]
    owner = owner_value(namespace, beacon_app)
    resource = authorization_policy_resource()
    try:
        manifests = [
            cast("dict[str, Any]", item.to_dict())
            for item in api.list(resource, namespace=namespace)
        ]
    except Exception as error:  # lightkube.ApiError, or an HTTP error: see is_unserved_kind
        if is_unserved_kind(error):
            raise MissingCRDError(AUTHZ_CRD, "deploy istio-k8s") from error
        raise
    namespace_bound = (
        namespace_labels.get(NAMESPACE_OWNER_LABEL) == owner
        and namespace_labels.get(USE_WAYPOINT_LABEL) == waypoint
    )
    binding = WaypointBinding(waypoint, namespace_bound=namespace_bound)
    # Who owns each Service, as the beacon's reconcile decides it (a name, then its policies).
    ours = [m for m in manifests if (m["metadata"].get("labels") or {}).get(MANAGED_BY) == owner]
    owners = proven_owners(dict(services), [name for name, _ in statefulsets], ours)
    requested, refused = requests_state(requests, namespace, owners, managing, binding)
    return Model(
        namespace=namespace,
        namespace_labels=namespace_labels,
        workloads=workloads(statefulsets, services),
        waypoint=waypoint,
        waypoint_ready=waypoint_readiness(
            client, waypoint, _gateway(client, waypoint), None
        ).ready,
        policies=tuple(sorted((parse_policy(m, owner) for m in manifests), key=lambda p: p.name)),
        requested=requested,
        refused=refused,
    )
