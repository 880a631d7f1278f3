"""From what related apps request to the AuthorizationPolicies the beacon applies.

The safety rule: an app may only open access to itself. Every requested policy is checked against
the relation it arrived on, with pure functions (requests in, accepted policies and refusals out);
a refused request is reported and skipped, and every other request is still applied.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from charms.istio_beacon_k8s.v0.service_mesh import (
    MeshPolicy,
    PolicyTargetType,
    RelationRequest,
    build_authorization_policy,
)

#: Label and annotation: the app whose request an AuthorizationPolicy implements.
REQUESTED_BY = "charms.canonical.com/service-mesh.requested-by"
#: Annotation: the id of the relation the request arrived on.
RELATION_ID = "charms.canonical.com/service-mesh.relation-id"
#: Label Juju puts on an app's Services and pods.
APP_NAME_LABEL = "app.kubernetes.io/name"
#: Name of the policy that keeps Juju's model operator reachable while the model is on the mesh.
MODEL_OPERATOR_POLICY = "allow-juju-model-operator"


@dataclass(frozen=True)
class AcceptedPolicy:
    """A requested policy that passed the checks.

    Attributes:
        policy: the policy.
        app_name: the app that asked for it.
        relation_id: the relation it arrived on.
    """

    policy: MeshPolicy
    app_name: str
    relation_id: int


@dataclass(frozen=True)
class Refusal:
    """A request the beacon will not apply.

    Attributes:
        app_name: the app that asked.
        relation_id: the relation it arrived on.
        reason: why it is refused.
    """

    app_name: str
    relation_id: int
    reason: str


def needs_services(requests: Iterable[RelationRequest]) -> bool:
    """Whether any request names a Service, so that the Services must be listed to check it."""
    return any(policy.target_service for request in requests for policy in request.policies)


def service_owner_error(app: str, service: str, services: Mapping[str, Mapping[str, str]]) -> str:
    """Why Service ``service`` is not ``app``'s, or ``""`` when it is.

    A Service belongs to an app when it exists and carries ``app.kubernetes.io/name: <app>``
    (Juju labels the Services it creates so), or when it carries no such label at all and is named
    ``<app>`` or ``<app>-endpoints``.

    Args:
        app: the app that asks.
        service: the Service its policy names.
        services: the namespace's Services, name to labels.
    """
    if service not in services:
        return f"Service {service} does not exist"
    owner = services[service].get(APP_NAME_LABEL)
    if owner is None:
        if service in (app, f"{app}-endpoints"):
            return ""
        return f"Service {service} is not labelled {APP_NAME_LABEL}={app}"
    if owner != app:
        return f"Service {service} belongs to {owner}"
    return ""


def policy_error(
    policy: MeshPolicy, app: str, namespace: str, services: Mapping[str, Mapping[str, str]]
) -> str:
    """Why ``app`` may not have ``policy``, or ``""`` when it may.

    Args:
        policy: the requested policy.
        app: the app on the other side of the relation the request arrived on.
        namespace: the beacon's namespace (model name): the only one it manages.
        services: the namespace's Services, name to labels (for policies naming a Service).
    """
    if policy.target_namespace != namespace:
        return f"targets namespace {policy.target_namespace}, not {namespace}"
    if policy.target_app_name is not None and policy.target_app_name != app:
        return f"targets app {policy.target_app_name}"
    if policy.target_type is PolicyTargetType.app:
        if policy.target_service:
            return service_owner_error(app, policy.target_service, services)
        return ""
    return _unit_target_error(policy, app)


def _unit_target_error(policy: MeshPolicy, app: str) -> str:
    """Why a unit policy's pods are not ``app``'s, or ``""``."""
    if policy.target_app_name == app:
        return ""
    selector = policy.target_selector_labels
    if not selector:
        return "unit policy names no target: it would apply to every pod in the namespace"
    if selector.get(APP_NAME_LABEL) != app:
        return f"unit policy selects pods without {APP_NAME_LABEL}={app}"
    return ""


def check_requests(
    requests: Iterable[RelationRequest],
    namespace: str,
    services: Mapping[str, Mapping[str, str]],
) -> tuple[list[AcceptedPolicy], list[Refusal]]:
    """Sort the requested policies into those the beacon applies and those it refuses.

    Args:
        requests: what each relation asked for (relations whose data is malformed included).
        namespace: the beacon's namespace (model name).
        services: the namespace's Services, name to labels; only consulted for policies that
            name a Service (see :func:`needs_services`).
    """
    accepted: list[AcceptedPolicy] = []
    refusals: list[Refusal] = []
    for request in requests:
        app = request.app_name
        if app is None:
            continue
        if request.error:
            refusals.append(Refusal(app, request.relation_id, f"invalid data: {request.error}"))
            continue
        for policy in request.policies:
            error = policy_error(policy, app, namespace, services)
            if error:
                refusals.append(Refusal(app, request.relation_id, error))
            else:
                accepted.append(AcceptedPolicy(policy, app, request.relation_id))
    return accepted, refusals


def build_policy_manifests(
    accepted: Sequence[AcceptedPolicy],
) -> tuple[list[dict[str, Any]], list[Refusal]]:
    """The AuthorizationPolicy manifests of the accepted policies, saying who asked for each.

    A policy the library cannot build (a unit policy restricting more than ports) is refused.
    """
    manifests: list[dict[str, Any]] = []
    refusals: list[Refusal] = []
    for item in accepted:
        try:
            manifests.append(
                build_authorization_policy(
                    item.policy,
                    labels={REQUESTED_BY: item.app_name},
                    annotations={
                        REQUESTED_BY: item.app_name,
                        RELATION_ID: str(item.relation_id),
                    },
                )
            )
        except ValueError as error:
            refusals.append(Refusal(item.app_name, item.relation_id, str(error)))
    return manifests, refusals


def model_operator_policy(namespace: str) -> dict[str, Any]:
    """An ALLOW-all policy for Juju's model operator, reachable while the model is on the mesh."""
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": MODEL_OPERATOR_POLICY, "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"juju-modeloperator": "modeloperator"}},
            "rules": [{}],
        },
    }


def refusal_message(refusals: Sequence[Refusal]) -> str:
    """A status message naming the first refused request and counting the others."""
    first = refusals[0]
    message = f"refused a request from {first.app_name}: {first.reason}"
    if len(refusals) > 1:
        apps = ", ".join(sorted({refusal.app_name for refusal in refusals}))
        message += f" (and {len(refusals) - 1} more from {apps}; see juju debug-log)"
    return message
