"""Keeping Juju's model operator reachable while the whole model is on the mesh.

Juju runs a model operator in each model's namespace behind a Service named ``modeloperator``
(the controller, other models and the API server's admission webhook calls all reach it there).
Which labels its pods carry depends on the Juju version that created the model (legacy
``juju-modeloperator: modeloperator``, current ``operator.juju.is/name: modeloperator`` with
``operator.juju.is/target: model``), so the beacon never guesses: it selects the pods that the
Service itself selects.

With ``model-on-mesh`` the namespace label would bind that Service to the waypoint. The beacon
takes it off the waypoint (``istio.io/use-waypoint: none`` on the Service, with its ownership label
so that it removes exactly that later): the model operator must not depend on the waypoint being
up, and under istio-k8s's ``hardened-mode`` the waypoint refuses whatever no waypoint-level policy
allows. Its pods then only meet ztunnel, where an ALLOW-all policy selecting them keeps every
caller, in the mesh or not, able to connect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from display import display_text
from kube_names import AUTHZ_API_VERSION, AUTHZ_KIND, NAMESPACE_OWNER_LABEL, USE_WAYPOINT_LABEL
from kubernetes_client import status_code
from lightkube import ApiError, Client
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType

#: The Service Juju creates for the model operator in every model's namespace.
MODEL_OPERATOR_SERVICE = "modeloperator"
#: Name of the policy that keeps Juju's model operator reachable while the model is on the mesh.
MODEL_OPERATOR_POLICY = "allow-juju-model-operator"
#: The value of ``istio.io/use-waypoint`` that takes a Service off any waypoint.
NO_WAYPOINT = "none"
#: The pod selectors Juju gives the ``modeloperator`` Service: that of models made by older Juju
#: (label version 1) and the current one. Any other selector was written by someone else (every
#: app of the model may patch Services): the beacon never allows everything to the pods it picks.
JUJU_MODEL_OPERATOR_SELECTORS = (
    {"juju-modeloperator": "modeloperator"},
    {"operator.juju.is/name": "modeloperator", "operator.juju.is/target": "model"},
)


@dataclass(frozen=True)
class ServiceLabelPlan:
    """What to do to the model operator Service's labels.

    Attributes:
        patch: a JSON merge patch of the labels (``None`` removes one); empty: nothing to write.
        conflict: why the beacon leaves the Service's waypoint label alone.
    """

    patch: dict[str, str | None] = field(default_factory=dict)
    conflict: str | None = None


def plan_service_labels(
    current: Mapping[str, str], *, off_waypoint: bool, owner: str
) -> ServiceLabelPlan:
    """Decide the label changes that take the model operator's Service off the waypoint, or back.

    Args:
        current: the Service's labels now.
        off_waypoint: whether the beacon wants the Service off the waypoint (the namespace is on
            the mesh through this beacon).
        owner: this beacon's ownership label value.
    """
    ours = current.get(NAMESPACE_OWNER_LABEL) == owner
    label = current.get(USE_WAYPOINT_LABEL)
    if off_waypoint:
        if ours or label is None:
            wanted = {USE_WAYPOINT_LABEL: NO_WAYPOINT, NAMESPACE_OWNER_LABEL: owner}
            return ServiceLabelPlan(
                patch={key: value for key, value in wanted.items() if current.get(key) != value}
            )
        if label == NO_WAYPOINT:
            return ServiceLabelPlan()  # someone else took it off the waypoint already
        return ServiceLabelPlan(
            conflict=f"Service {MODEL_OPERATOR_SERVICE} is labelled {USE_WAYPOINT_LABEL}={label} "
            "by someone else"
        )
    if not ours:
        return ServiceLabelPlan()
    patch: dict[str, str | None] = {NAMESPACE_OWNER_LABEL: None}
    if label == NO_WAYPOINT:
        patch[USE_WAYPOINT_LABEL] = None
    return ServiceLabelPlan(patch=patch)


def service_selector(
    service: Mapping[str, Any] | None, namespace: str
) -> tuple[dict[str, str] | None, str | None]:
    """The model operator's pod selector read from its Service, or why there is none.

    Returns:
        ``(selector, None)``, or ``(None, problem)`` when the Service is missing or selects
        nothing usable (an empty selector would make the policy allow everything to every pod).
    """
    if service is None:
        return None, (
            f"no {MODEL_OPERATOR_SERVICE} Service in {namespace}: cannot tell which pods are "
            "Juju's model operator, so nothing keeps it reachable"
        )
    spec = cast("Mapping[str, Any]", service.get("spec") or {})
    raw = spec.get("selector")
    if not isinstance(raw, Mapping) or not raw:
        return None, (
            f"the {MODEL_OPERATOR_SERVICE} Service in {namespace} selects no pods: cannot tell "
            "which pods are Juju's model operator"
        )
    selector = {str(key): str(value) for key, value in cast("Mapping[Any, Any]", raw).items()}
    if selector not in JUJU_MODEL_OPERATOR_SELECTORS:
        shown = display_text(",".join(f"{k}={v}" for k, v in sorted(selector.items())), 120)
        return None, (
            f"the {MODEL_OPERATOR_SERVICE} Service in {namespace} selects {shown}, not the pods "
            "Juju's model operator has: refusing to allow everything to them (restore Juju's "
            "selector)"
        )
    return selector, None


def model_operator_policy(namespace: str, selector: Mapping[str, str]) -> dict[str, Any]:
    """An ALLOW-all policy on the model operator's pods (those ``selector`` matches).

    Enforced by ztunnel: it keeps every caller able to connect (in the mesh or not, whatever
    else selects the pods, hardened-mode's allow-nothing included).
    """
    return {
        "apiVersion": AUTHZ_API_VERSION,
        "kind": AUTHZ_KIND,
        "metadata": {"name": MODEL_OPERATOR_POLICY, "namespace": namespace},
        "spec": {"selector": {"matchLabels": dict(selector)}, "rules": [{}]},
    }


@dataclass(frozen=True)
class ModelOperatorAccess:
    """What the beacon found out about the model operator in a reconcile.

    Attributes:
        selector: the labels of its pods (from its Service), or ``None``.
        problem: why it cannot be kept reachable, for a status message, or ``None``.
    """

    selector: dict[str, str] | None = None
    problem: str | None = None


def reconcile_model_operator(
    client: Client, namespace: str, *, on_mesh: bool, owner: str
) -> ModelOperatorAccess:
    """Read the model operator's Service and keep it off the waypoint while the model is on it.

    One read, and a write only when a label changes. When the model is not on the mesh through
    this beacon, only the labels it put there earlier are removed.

    Args:
        client: the Kubernetes client.
        namespace: the model's namespace.
        on_mesh: whether this beacon put the namespace on the mesh (labels it, without conflict).
        owner: this beacon's ownership label value.

    Raises:
        lightkube.ApiError: when Kubernetes refuses (403: the charm is not trusted).
    """
    api: Any = client  # lightkube's patch overloads are only partly typed
    try:
        service: dict[str, Any] | None = cast(
            "dict[str, Any]",
            api.get(Service, MODEL_OPERATOR_SERVICE, namespace=namespace).to_dict(),
        )
    except ApiError as error:
        if status_code(error) != 404:
            raise
        service = None
    conflict: str | None = None
    if service is not None:
        metadata = cast("Mapping[str, Any]", service.get("metadata") or {})
        labels = cast("Mapping[str, str]", metadata.get("labels") or {})
        plan = plan_service_labels(labels, off_waypoint=on_mesh, owner=owner)
        if plan.patch:
            api.patch(
                Service,
                MODEL_OPERATOR_SERVICE,
                {"metadata": {"labels": plan.patch}},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
        conflict = plan.conflict
    if not on_mesh:
        return ModelOperatorAccess()
    selector, problem = service_selector(service, namespace)
    return ModelOperatorAccess(selector=selector, problem=conflict or problem)
