"""The engine's world: the model's apps, its waypoint and policies, the questions and answers.

Plain frozen values, read from Kubernetes elsewhere (``access.cluster``); the functions here say
which policies apply where (pods or the waypoint), not whether they match.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from kube_names import (
    DATAPLANE_LABEL,
    GATEWAY_GROUP,
    USE_WAYPOINT_LABEL,
    USE_WAYPOINT_NAMESPACE_LABEL,
)

from access.parsing import AuthzPolicy, TargetRef

TRUST_DOMAIN = "cluster.local"
_PRINCIPAL = re.compile(r"^(?P<domain>[^/]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")


class Decision(str, enum.Enum):
    """What happens to a request."""

    allow = "allow"
    deny = "deny"
    unknown = "unknown"


class Level(str, enum.Enum):
    """Where a request goes: the app's Service (through the waypoint) or straight to its pods."""

    app = "app"
    unit = "unit"


class Point(str, enum.Enum):
    """Where a decision is taken."""

    mesh = "mesh"  # enrolment: is anything enforced at all
    waypoint = "waypoint"  # Envoy, L7, for the Service
    ztunnel = "ztunnel"  # L4, in front of the pods


def principal(namespace: str, service_account: str) -> str:
    """The mesh identity of a workload: ``cluster.local/ns/<namespace>/sa/<service account>``."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def split_principal(value: str | None) -> tuple[str, str] | None:
    """``(namespace, service account)`` of a principal, or ``None`` if it has no such form."""
    found = _PRINCIPAL.match(value or "")
    return (found["ns"], found["sa"]) if found else None


@dataclass(frozen=True)
class Workload:
    """A Juju app's Kubernetes objects, as far as the mesh cares.

    Attributes:
        name: the app name (also its ServiceAccount: its mesh identity).
        pod_labels: the labels of its pods (the StatefulSet's pod template).
        service: its Service (named after the app), or ``None`` when it has none.
        service_labels: the Service's labels.
        other_services: other Services labelled as the app's (``app.kubernetes.io/name``).
    """

    name: str
    pod_labels: Mapping[str, str] = field(default_factory=dict[str, str])
    service: str | None = None
    service_labels: Mapping[str, str] = field(default_factory=dict[str, str])
    other_services: tuple[str, ...] = ()

    def services(self) -> tuple[str, ...]:
        """Every Service of the app."""
        return ((self.service,) if self.service else ()) + self.other_services


@dataclass(frozen=True)
class Refused:
    """A request the beacon refused: who asked, over which relation, why."""

    app: str
    relation_id: int
    reason: str


@dataclass(frozen=True)
class Requested:
    """A request the beacon accepted: the policy it should have made for it."""

    app: str
    relation_id: int
    policy_name: str
    source_app: str
    source_model: str


@dataclass(frozen=True)
class Model:
    """Everything the engine decides from.

    Attributes:
        namespace: the model's namespace.
        namespace_labels: its labels.
        workloads: its apps.
        waypoint: the beacon's waypoint name.
        waypoint_ready: whether Istio uses it yet.
        policies: every AuthorizationPolicy in the namespace.
        requested: the requests the beacon accepted.
        refused: the requests it refused.
        auto_allow_waypoint: whether istiod lets the waypoint's identity reach the pods bound
            to it (istio-k8s's ``auto-allow-waypoint-policy``); ``None``: not known.
    """

    namespace: str
    namespace_labels: Mapping[str, str] = field(default_factory=dict[str, str])
    workloads: tuple[Workload, ...] = ()
    waypoint: str = ""
    waypoint_ready: bool = False
    policies: tuple[AuthzPolicy, ...] = ()
    requested: tuple[Requested, ...] = ()
    refused: tuple[Refused, ...] = ()
    auto_allow_waypoint: bool | None = True

    def workload(self, app: str) -> Workload | None:
        """The app named ``app``, if the model has it."""
        return next((w for w in self.workloads if w.name == app), None)

    @property
    def waypoint_principal(self) -> str:
        """The waypoint's identity (Istio gives it a ServiceAccount named after the Gateway)."""
        return principal(self.namespace, self.waypoint)


def on_mesh(model: Model, workload: Workload) -> bool:
    """Whether the app's pods are in the ambient data plane (pod label, else namespace label)."""
    mode = workload.pod_labels.get(DATAPLANE_LABEL) or model.namespace_labels.get(DATAPLANE_LABEL)
    return mode == "ambient"


def bound_waypoint(model: Model, service_labels: Mapping[str, str]) -> tuple[str, str] | None:
    """``(namespace, name)`` of the waypoint a Service uses (Service label, else namespace's)."""
    name = service_labels.get(USE_WAYPOINT_LABEL)
    labels = service_labels
    if name is None:
        name = model.namespace_labels.get(USE_WAYPOINT_LABEL)
        labels = model.namespace_labels
    if not name or name == "none":
        return None
    return labels.get(USE_WAYPOINT_NAMESPACE_LABEL) or model.namespace, name


def uses_beacon_waypoint(model: Model, workload: Workload) -> bool:
    """Whether the app's Service is bound to this beacon's waypoint, and Istio uses it."""
    return (
        workload.service is not None
        and model.waypoint_ready
        and bound_waypoint(model, workload.service_labels) == (model.namespace, model.waypoint)
    )


def selects(policy: AuthzPolicy, labels: Mapping[str, str]) -> bool:
    """Whether the policy's selector (none: every pod) selects pods with these labels."""
    selector = policy.selector or {}
    return all(labels.get(key) == value for key, value in selector.items())


def ztunnel_policies(model: Model, workload: Workload) -> list[AuthzPolicy]:
    """The policies ztunnel applies to the app's pods: no targetRefs, and a selector that fits."""
    return [
        policy
        for policy in model.policies
        if not policy.target_refs
        and policy.namespace == model.namespace
        and selects(policy, workload.pod_labels)
    ]


def waypoint_policies(model: Model, service: str) -> list[AuthzPolicy]:
    """The policies the waypoint applies to traffic for ``service``: targetRefs only."""
    return [
        policy
        for policy in model.policies
        if policy.namespace == model.namespace
        and any(attaches(ref, model, service) for ref in policy.target_refs)
    ]


def attaches(ref: TargetRef, model: Model, service: str) -> bool:
    """Whether a targetRef attaches its policy to the waypoint's traffic for ``service``."""
    if ref.namespace not in ("", model.namespace):
        return False
    if ref.kind == "Service" and ref.group in ("", "core"):
        return ref.name == service
    return ref.kind == "Gateway" and ref.group == GATEWAY_GROUP and ref.name == model.waypoint


@dataclass(frozen=True)
class Request:
    """A question: may this caller reach this app there?

    Attributes:
        source_principal: the caller's mesh identity; ``None``: it has none (not on the mesh).
        target: the app called.
        port: the destination port.
        method: the HTTP method (``None``: not given).
        path: the HTTP path (``None``: not given).
        host: the HTTP Host (``None``: not given).
        level: through the app's Service (``app``) or straight to its pods (``unit``).
    """

    source_principal: str | None
    target: str
    port: int
    method: str | None = None
    path: str | None = None
    host: str | None = None
    level: Level = Level.app


@dataclass(frozen=True)
class Step:
    """One link of the chain that decides a request.

    Attributes:
        point: where it is decided.
        decision: what it decides there.
        reason: in words.
        policy: the deciding policy, if one decides.
    """

    point: Point
    decision: Decision
    reason: str
    policy: AuthzPolicy | None = None


@dataclass(frozen=True)
class Verdict:
    """The answer to a :class:`Request`: the decision, and every step that led to it.

    Attributes:
        decision: the answer.
        steps: the chain, in the order the request meets it.
        notes: what the answer assumes.
        deciding: the index in ``steps`` of the step that decides for this caller (negative:
            from the end). For a deny or ``unknown``, the step that says so; for an allow
            through the waypoint, the waypoint's step: it is the last one that sees the
            caller's identity (ztunnel then sees only the waypoint's, so its step supports
            the answer without telling this caller from any other).
    """

    decision: Decision
    steps: tuple[Step, ...]
    notes: tuple[str, ...] = ()
    deciding: int = -1

    @property
    def deciding_step(self) -> Step | None:
        """The step that decides for this caller (``None``: no steps)."""
        return self.steps[self.deciding] if self.steps else None

    @property
    def reason(self) -> str:
        """The deciding step's reason."""
        step = self.deciding_step
        return step.reason if step else ""

    @property
    def policy(self) -> AuthzPolicy | None:
        """The deciding step's policy, if one decides there."""
        step = self.deciding_step
        return step.policy if step else None
