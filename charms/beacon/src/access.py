"""Who may reach whom in the model, and why: Istio's authorization semantics for ambient, pure.

Inputs are plain values read elsewhere (namespace and workload labels, the waypoint's readiness,
every AuthorizationPolicy in the namespace, what related apps requested and what was refused);
nothing here talks to Kubernetes or to Juju.

The semantics followed (Istio 1.29, ambient data plane):

- A request through an app's Service that is bound to a ready waypoint is checked twice: by the
  waypoint (Envoy) against the policies whose ``targetRefs`` name that Service or the waypoint's
  Gateway, with every L7 field; then by ztunnel in front of the pods, against the policies that
  select the pods (``selector``, or none for the whole namespace), where the caller is the
  waypoint's own identity. A request straight to the pods (or through a Service without a ready
  waypoint) is only checked by ztunnel, with the caller's identity.
- At each point: a CUSTOM policy that applies hands the decision to an external authorizer; a
  matching DENY policy denies; then, if no ALLOW policy applies, the request is allowed, else it
  must match one.
- ztunnel sees connections, not requests. As istiod converts policies for it, an ALLOW rule that
  names any HTTP attribute (hosts, methods, paths, request principals, remote IP blocks, or a
  ``when`` key other than source.ip, source.namespace, source.principal, destination.ip,
  destination.port) is dropped, so it matches nothing (fail closed); in a DENY rule those parts
  are ignored, so the rule denies more. ztunnel does not support CUSTOM (istiod skips it).
- Pods not on the mesh are not enforced at all.

What it cannot evaluate (CUSTOM's external authorizer, source IP blocks, request principals,
``when`` keys it does not model, an attribute the question left out) makes the answer "unknown"
with the reason; it never guesses.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

TRUST_DOMAIN = "cluster.local"
#: Label Juju puts on an app's Services and pods.
APP_NAME_LABEL = "app.kubernetes.io/name"
DATAPLANE_LABEL = "istio.io/dataplane-mode"
USE_WAYPOINT_LABEL = "istio.io/use-waypoint"
USE_WAYPOINT_NAMESPACE_LABEL = "istio.io/use-waypoint-namespace"
#: Marks the AuthorizationPolicies a beacon owns (``<model>.<app>``).
MANAGED_BY = "charms.canonical.com/service-mesh.managed-by"
#: Annotations on the beacon's policies: who asked for it, over which relation.
REQUESTED_BY = "charms.canonical.com/service-mesh.requested-by"
RELATION_ID = "charms.canonical.com/service-mesh.relation-id"
#: Annotation on the beacon's policies that let the waypoint reach an app's pods.
WAYPOINT_ACCESS_FOR = "charms.canonical.com/service-mesh.waypoint-access-for"
#: The beacon's relation endpoint over which apps request access.
MESH_ENDPOINT = "service-mesh"
#: Istio's conditions on a policy: whether the waypoint or ztunnel enforces it.
ISTIO_CONDITIONS = ("WaypointAccepted", "ZtunnelAccepted")

_GATEWAY_GROUP = "gateway.networking.k8s.io"
_L4_WHEN_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
_MODELLED_WHEN_KEYS = frozenset({"source.namespace", "source.principal", "destination.port"})
_SOURCE_FIELDS = {
    "principals": "principals",
    "notPrincipals": "not_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "serviceAccounts": "service_accounts",
    "notServiceAccounts": "not_service_accounts",
}
#: Source fields ztunnel cannot see (HTTP-only): they make an ALLOW rule drop there.
_HTTP_SOURCE_FIELDS = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks",
                       "notRemoteIpBlocks")  # fmt: skip
#: Source fields the engine does not model (it knows identities, not addresses).
_UNMODELLED_SOURCE_FIELDS = ("ipBlocks", "notIpBlocks", *_HTTP_SOURCE_FIELDS)
_OPERATION_FIELDS = {
    "ports": "ports",
    "notPorts": "not_ports",
    "methods": "methods",
    "notMethods": "not_methods",
    "paths": "paths",
    "notPaths": "not_paths",
    "hosts": "hosts",
    "notHosts": "not_hosts",
}
_HTTP_OPERATION_FIELDS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")
_PRINCIPAL = re.compile(r"^(?P<domain>[^/]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")
# Envoy's URI template operators: one path segment, or any number of them.
_SEGMENT = r"[A-Za-z0-9\-._~%!$&'()+,;:@=]+"
_SEGMENTS = r"[A-Za-z0-9\-._~%!$&'()+,;:@=/]*"


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


# --------------------------------------------------------------------------------------------
# Three-valued matching: True, False, or None (cannot tell), with Kleene's AND/OR/NOT
# --------------------------------------------------------------------------------------------

Tri = bool | None


def _all(values: Iterable[Tri]) -> Tri:
    result: Tri = True
    for value in values:
        if value is False:
            return False
        if value is None:
            result = None
    return result


def _any(values: Iterable[Tri]) -> Tri:
    result: Tri = False
    for value in values:
        if value is True:
            return True
        if value is None:
            result = None
    return result


def _not(value: Tri) -> Tri:
    return None if value is None else not value


def match_string(pattern: str, value: str | None, *, ignore_case: bool = False) -> bool:
    """Istio's string match: ``*`` alone (present), ``*suffix``, ``prefix*``, or exact."""
    if value is None:
        return False
    if ignore_case:
        pattern, value = pattern.lower(), value.lower()
    if pattern == "*":
        return True
    if pattern.startswith("*"):
        return value.endswith(pattern[1:])
    if pattern.endswith("*"):
        return value.startswith(pattern[:-1])
    return value == pattern


def match_path(pattern: str, path: str) -> bool:
    """Istio's path match: ``{*}``/``{**}`` URI templates, else like :func:`match_string`.

    ``path`` is compared without its query string or fragment (as Envoy's ``url_path``).
    """
    path = path.split("?", 1)[0].split("#", 1)[0]
    if "{*}" in pattern or "{**}" in pattern:
        regex = "".join(
            _SEGMENTS if part == "{**}" else _SEGMENT if part == "{*}" else re.escape(part)
            for part in re.split(r"(\{\*\*\}|\{\*\})", pattern)
        )
        return re.fullmatch(regex, path) is not None
    return match_string(pattern, path)


def principal(namespace: str, service_account: str) -> str:
    """The mesh identity of a workload: ``cluster.local/ns/<namespace>/sa/<service account>``."""
    return f"{TRUST_DOMAIN}/ns/{namespace}/sa/{service_account}"


def split_principal(value: str | None) -> tuple[str, str] | None:
    """``(namespace, service account)`` of a principal, or ``None`` if it has no such form."""
    found = _PRINCIPAL.match(value or "")
    return (found["ns"], found["sa"]) if found else None


# --------------------------------------------------------------------------------------------
# AuthorizationPolicies, parsed
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """One ``from[].source`` entry. Empty tuples do not restrict.

    Attributes:
        unmodelled: names of fields set that the engine cannot evaluate (IP blocks, request
            principals).
    """

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    service_accounts: tuple[str, ...] = ()
    not_service_accounts: tuple[str, ...] = ()
    unmodelled: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    """One ``to[].operation`` entry; ports are strings, as in the API. Empty: no restriction."""

    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()

    @property
    def http_fields(self) -> tuple[str, ...]:
        """The HTTP-only fields set (what ztunnel cannot enforce)."""
        return tuple(name for name in _HTTP_OPERATION_FIELDS if getattr(self, name))


@dataclass(frozen=True)
class Condition:
    """One ``when`` entry."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rule:
    """One rule: every part present must match (``from`` and ``to`` entries are alternatives)."""

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


@dataclass(frozen=True)
class TargetRef:
    """One ``targetRefs`` entry."""

    kind: str
    name: str
    group: str = ""
    namespace: str = ""


@dataclass(frozen=True)
class Provenance:
    """Why the beacon made a policy: the relation a related app asked for it on.

    Attributes:
        requested_by: the app that asked (for a waypoint-access policy, the app it serves).
        relation_id: the relation; ``None`` for the beacon's own policies.
        endpoint: the beacon's endpoint of that relation.
        waypoint_access: the policy lets the waypoint reach ``requested_by``'s pods.
    """

    requested_by: str
    relation_id: int | None
    endpoint: str = MESH_ENDPOINT
    waypoint_access: bool = False


@dataclass(frozen=True)
class AuthzPolicy:
    """An AuthorizationPolicy as the engine reads it.

    Attributes:
        name: its name.
        namespace: its namespace.
        action: ALLOW, DENY, CUSTOM or AUDIT.
        selector: ``matchLabels`` of its selector; ``None``: no selector.
        target_refs: its ``targetRefs`` (and legacy ``targetRef``).
        rules: its rules (``()``: none, which matches nothing).
        owned: whether this beacon made it.
        provenance: for the beacon's own policies, who asked for it.
        problem: why it cannot be read at all (it is then never evaluated, only reported).
        generated_by: for a policy no object holds (istiod's own), what makes it.
        not_enforced: what Istio's own status conditions say where it does not enforce it.
    """

    name: str
    namespace: str
    action: str = "ALLOW"
    selector: Mapping[str, str] | None = None
    target_refs: tuple[TargetRef, ...] = ()
    rules: tuple[Rule, ...] = ()
    owned: bool = False
    provenance: Provenance | None = None
    problem: str = ""
    generated_by: str = ""
    not_enforced: tuple[str, ...] = ()

    @property
    def foreign(self) -> bool:
        """Whether someone other than this beacon made it."""
        return not self.owned

    def describe(self) -> str:
        """``AuthorizationPolicy <name>``, saying when the beacon did not make it."""
        if self.generated_by:
            return self.generated_by
        if self.owned:
            return f"AuthorizationPolicy {self.name}"
        return f"AuthorizationPolicy {self.name} (not made by the beacon)"


class _MalformedError(ValueError):
    pass


def _strings(value: object, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(
        isinstance(item, str) for item in cast("list[object]", value)
    ):
        raise _MalformedError(f"{where} is not a list of strings")
    return tuple(cast("list[str]", value))


def _object(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _MalformedError(f"{where} is not an object")
    return cast("dict[str, Any]", value)


def _list(value: object, where: str) -> list[object]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _MalformedError(f"{where} is not a list")
    return cast("list[object]", value)


def _parse_source(raw: object, where: str) -> Source:
    body = _object(_object(raw, where).get("source"), f"{where}.source")
    fields = {
        attr: _strings(body.get(key), f"{where}.source.{key}")
        for key, attr in _SOURCE_FIELDS.items()
    }
    unmodelled = tuple(key for key in _UNMODELLED_SOURCE_FIELDS if body.get(key))
    return Source(**fields, unmodelled=unmodelled)


def _parse_operation(raw: object, where: str) -> Operation:
    body = _object(_object(raw, where).get("operation"), f"{where}.operation")
    return Operation(
        **{
            attr: _strings(body.get(key), f"{where}.operation.{key}")
            for key, attr in _OPERATION_FIELDS.items()
        }
    )


def _parse_rule(raw: object, where: str) -> Rule:
    body = _object(raw, where)
    conditions: list[Condition] = []
    for i, item in enumerate(_list(body.get("when"), f"{where}.when")):
        condition = _object(item, f"{where}.when[{i}]")
        key = condition.get("key")
        if not isinstance(key, str):
            raise _MalformedError(f"{where}.when[{i}].key is not a string")
        conditions.append(
            Condition(
                key,
                _strings(condition.get("values"), f"{where}.when[{i}].values"),
                _strings(condition.get("notValues"), f"{where}.when[{i}].notValues"),
            )
        )
    return Rule(
        sources=tuple(
            _parse_source(item, f"{where}.from[{i}]")
            for i, item in enumerate(_list(body.get("from"), f"{where}.from"))
        ),
        operations=tuple(
            _parse_operation(item, f"{where}.to[{i}]")
            for i, item in enumerate(_list(body.get("to"), f"{where}.to"))
        ),
        conditions=tuple(conditions),
    )


def _parse_target_refs(spec: Mapping[str, Any]) -> tuple[TargetRef, ...]:
    raw = _list(spec.get("targetRefs"), "spec.targetRefs")
    if not raw and spec.get("targetRef") is not None:
        raw = [spec["targetRef"]]
    refs: list[TargetRef] = []
    for i, item in enumerate(raw):
        ref = _object(item, f"spec.targetRefs[{i}]")
        values = [ref.get(key) or "" for key in ("kind", "name", "group", "namespace")]
        if not all(isinstance(value, str) for value in values):
            raise _MalformedError(f"spec.targetRefs[{i}] has a field that is not a string")
        refs.append(TargetRef(*cast("list[str]", values)))
    return tuple(refs)


def parse_policy(manifest: Mapping[str, Any], owner: str) -> AuthzPolicy:
    """Read an AuthorizationPolicy manifest; a malformed one comes back with ``problem`` set.

    Args:
        manifest: the object as Kubernetes returns it (a plain dict).
        owner: this beacon's ownership label value (``<model>.<app>``), to tell ours apart.
    """
    metadata = manifest.get("metadata")
    metadata = cast("dict[str, Any]", metadata) if isinstance(metadata, dict) else {}
    name = str(metadata.get("name") or "")
    namespace = str(metadata.get("namespace") or "")
    labels = metadata.get("labels")
    labels = cast("dict[str, Any]", labels) if isinstance(labels, dict) else {}
    owned = labels.get(MANAGED_BY) == owner
    provenance = _provenance(metadata) if owned else None
    try:
        spec = _object(manifest.get("spec"), "spec")
        action = spec.get("action") or "ALLOW"
        if action not in ("ALLOW", "DENY", "CUSTOM", "AUDIT"):
            raise _MalformedError(f"spec.action {str(action)[:20]!r} is not one Istio knows")
        selector: dict[str, str] | None = None
        if spec.get("selector") is not None:
            match_labels = _object(
                _object(spec["selector"], "spec.selector").get("matchLabels"),
                "spec.selector.matchLabels",
            )
            if not all(isinstance(value, str) for value in match_labels.values()):
                raise _MalformedError("spec.selector.matchLabels has a value that is not a string")
            selector = cast("dict[str, str]", match_labels)
        rules = tuple(
            _parse_rule(item, f"spec.rules[{i}]")
            for i, item in enumerate(_list(spec.get("rules"), "spec.rules"))
        )
        return AuthzPolicy(
            name=name,
            namespace=namespace,
            action=str(action),
            selector=selector,
            target_refs=_parse_target_refs(spec),
            rules=rules,
            owned=owned,
            provenance=provenance,
            not_enforced=_not_enforced(manifest, metadata),
        )
    except _MalformedError as error:
        return AuthzPolicy(name, namespace, owned=owned, provenance=provenance, problem=str(error))


def _not_enforced(manifest: Mapping[str, Any], metadata: Mapping[str, Any]) -> tuple[str, ...]:
    """Istio's conditions that say it does not enforce the policy (current generation only)."""
    status = manifest.get("status")
    conditions = (
        cast("dict[str, Any]", status).get("conditions") if isinstance(status, dict) else None
    )
    found: list[str] = []
    for condition in cast("list[Any]", conditions) if isinstance(conditions, list) else []:
        if not isinstance(condition, dict):
            continue
        item = cast("dict[str, Any]", condition)
        observed = item.get("observedGeneration")
        if observed not in (None, 0, metadata.get("generation")):
            continue  # about an older version of the policy
        if item.get("type") in ISTIO_CONDITIONS and item.get("status") == "False":
            where = "the waypoint" if item["type"] == "WaypointAccepted" else "ztunnel"
            found.append(
                f"Istio says {where} does not enforce it: {item.get('reason') or 'no reason'}"
                + (f": {item['message']}" if item.get("message") else "")
            )
    return tuple(found)


def _provenance(metadata: Mapping[str, Any]) -> Provenance | None:
    annotations = metadata.get("annotations")
    annotations = cast("dict[str, Any]", annotations) if isinstance(annotations, dict) else {}
    waypoint_for = annotations.get(WAYPOINT_ACCESS_FOR)
    if isinstance(waypoint_for, str):
        return Provenance(waypoint_for, None, waypoint_access=True)
    requested_by = annotations.get(REQUESTED_BY)
    if not isinstance(requested_by, str):
        return None
    relation = annotations.get(RELATION_ID)
    relation_id = int(relation) if isinstance(relation, str) and relation.isdigit() else None
    return Provenance(requested_by, relation_id)


# --------------------------------------------------------------------------------------------
# The model: its apps, the waypoint, the requests
# --------------------------------------------------------------------------------------------


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
    return ref.kind == "Gateway" and ref.group == _GATEWAY_GROUP and ref.name == model.waypoint


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Attributes:
    """What an enforcement point sees of a request."""

    principal: str | None
    port: int
    method: str | None = None
    path: str | None = None
    host: str | None = None


def _match_field(
    patterns: Sequence[str], value: str | None, name: str, unknowns: list[str], **kwargs: bool
) -> Tri:
    if not patterns:
        return True
    if value is None:
        unknowns.append(name)
        return None
    return any(match_string(pattern, value, **kwargs) for pattern in patterns)


def _service_account_match(patterns: Sequence[str], principal_value: str | None, ns: str) -> bool:
    parts = split_principal(principal_value)
    if parts is None:
        return False
    for pattern in patterns:
        namespace, _, account = pattern.rpartition("/")
        if (namespace or ns, account) == parts:
            return True
    return False


def _source_match(source: Source, attrs: _Attributes, policy_ns: str, unknowns: list[str]) -> Tri:
    ns = (split_principal(attrs.principal) or (None, None))[0]
    results: list[Tri] = []
    if source.principals:
        results.append(any(match_string(p, attrs.principal) for p in source.principals))
    if source.not_principals:
        results.append(not any(match_string(p, attrs.principal) for p in source.not_principals))
    if source.namespaces:
        results.append(any(match_string(p, ns) for p in source.namespaces))
    if source.not_namespaces:
        results.append(not any(match_string(p, ns) for p in source.not_namespaces))
    if source.service_accounts:
        results.append(_service_account_match(source.service_accounts, attrs.principal, policy_ns))
    if source.not_service_accounts:
        results.append(
            not _service_account_match(source.not_service_accounts, attrs.principal, policy_ns)
        )
    for name in source.unmodelled:
        unknowns.append(f"from.source.{name}")
        results.append(None)
    return _all(results)


def _ports_match(patterns: Sequence[str], port: int, unknowns: list[str], name: str) -> Tri:
    if not all(pattern.isdigit() for pattern in patterns):
        unknowns.append(f"{name} (not a port number)")
        return None
    return str(port) in {str(int(pattern)) for pattern in patterns}


def _operation_match(
    operation: Operation, attrs: _Attributes, unknowns: list[str], l7: bool
) -> Tri:
    results: list[Tri] = []
    if operation.ports:
        results.append(_ports_match(operation.ports, attrs.port, unknowns, "to.operation.ports"))
    if operation.not_ports:
        results.append(
            _not(_ports_match(operation.not_ports, attrs.port, unknowns, "to.operation.notPorts"))
        )
    if l7:
        checks: list[tuple[tuple[str, ...], str | None, str, bool, bool]] = [
            (operation.methods, attrs.method, "method", False, False),
            (operation.not_methods, attrs.method, "method", False, True),
            (operation.hosts, attrs.host, "host", True, False),
            (operation.not_hosts, attrs.host, "host", True, True),
        ]
        for patterns, value, name, ignore_case, negate in checks:
            if patterns:
                found = _match_field(patterns, value, name, unknowns, ignore_case=ignore_case)
                results.append(_not(found) if negate else found)
        for patterns, negate in ((operation.paths, False), (operation.not_paths, True)):
            if not patterns:
                continue
            if attrs.path is None:
                unknowns.append("path")
                results.append(None)
                continue
            path = attrs.path
            found_path = any(match_path(pattern, path) for pattern in patterns)
            results.append(not found_path if negate else found_path)
    return _all(results)


def _condition_match(
    condition: Condition, attrs: _Attributes, policy_ns: str, unknowns: list[str]
) -> Tri:
    key = condition.key
    if key not in _MODELLED_WHEN_KEYS:
        unknowns.append(f"when {key}")
        return None
    if key == "destination.port":
        positive = _ports_match(condition.values, attrs.port, unknowns, f"when {key}")
        negative = _ports_match(condition.not_values, attrs.port, unknowns, f"when {key}")
    else:
        value = attrs.principal
        if key == "source.namespace":
            value = (split_principal(attrs.principal) or (None, None))[0]
        positive = any(match_string(p, value) for p in condition.values)
        negative = any(match_string(p, value) for p in condition.not_values)
    results: list[Tri] = []
    if condition.values:
        results.append(positive)
    if condition.not_values:
        results.append(_not(negative))
    return _all(results)


def _rule_match_waypoint(
    rule: Rule, attrs: _Attributes, policy_ns: str, unknowns: list[str]
) -> Tri:
    """Envoy's (the waypoint's) view of one rule: every field counts."""
    parts: list[Tri] = []
    if rule.sources:
        parts.append(_any(_source_match(s, attrs, policy_ns, unknowns) for s in rule.sources))
    if rule.operations:
        parts.append(_any(_operation_match(o, attrs, unknowns, True) for o in rule.operations))
    parts.extend(_condition_match(c, attrs, policy_ns, unknowns) for c in rule.conditions)
    return _all(parts)


def http_parts(rule: Rule) -> list[str]:
    """The parts of a rule ztunnel cannot enforce (what istiod warns about)."""
    found: list[str] = []
    for operation in rule.operations:
        found.extend(
            name for name in operation.http_fields if name not in found
        )  # methods, paths, ...
    for source in rule.sources:
        found.extend(
            name for name in source.unmodelled if name in _HTTP_SOURCE_FIELDS and name not in found
        )
    found.extend(f"when {c.key}" for c in rule.conditions if c.key not in _L4_WHEN_KEYS)
    return found


def _rule_match_ztunnel(
    rule: Rule, action: str, attrs: _Attributes, policy_ns: str, unknowns: list[str]
) -> Tri:
    """Ztunnel's view of one rule, as istiod converts it.

    An ALLOW rule with HTTP parts never matches; in a DENY rule those parts are left out.
    """
    if http_parts(rule):
        if action == "ALLOW":
            return False
        rule = Rule(
            sources=tuple(
                Source(
                    s.principals,
                    s.not_principals,
                    s.namespaces,
                    s.not_namespaces,
                    s.service_accounts,
                    s.not_service_accounts,
                    tuple(n for n in s.unmodelled if n not in _HTTP_SOURCE_FIELDS),
                )
                for s in rule.sources
            ),
            operations=tuple(Operation(o.ports, o.not_ports) for o in rule.operations),
            conditions=tuple(c for c in rule.conditions if c.key in _L4_WHEN_KEYS),
        )
    parts: list[Tri] = []
    if rule.sources:
        parts.append(_any(_source_match(s, attrs, policy_ns, unknowns) for s in rule.sources))
    if rule.operations:
        parts.append(_any(_operation_match(o, attrs, unknowns, False) for o in rule.operations))
    for condition in rule.conditions:
        if condition.key in ("source.ip", "destination.ip"):
            unknowns.append(f"when {condition.key}")
            parts.append(None)
        else:
            parts.append(_condition_match(condition, attrs, policy_ns, unknowns))
    return _all(parts)


def policy_matches(
    policy: AuthzPolicy, attrs: _Attributes, point: Point, unknowns: list[str]
) -> Tri:
    """Whether any rule of the policy matches at ``point`` (no rules: matches nothing)."""
    results: list[Tri] = []
    for rule in policy.rules:
        if point is Point.waypoint:
            results.append(_rule_match_waypoint(rule, attrs, policy.namespace, unknowns))
        else:
            results.append(
                _rule_match_ztunnel(rule, policy.action, attrs, policy.namespace, unknowns)
            )
    return _any(results)


def _unknown_reason(policy: AuthzPolicy, unknowns: Sequence[str]) -> str:
    unique = list(dict.fromkeys(unknowns))
    missing = [u for u in unique if u in ("method", "path", "host")]
    if missing and len(missing) == len(unique):
        return (
            f"{policy.describe()} restricts the {' and '.join(missing)}: give "
            f"{', '.join(f'{m}=' for m in missing)} to decide"
        )
    return f"{policy.describe()} depends on {', '.join(unique)}, which the beacon cannot evaluate"


def _usable(policies: Sequence[AuthzPolicy], point: Point) -> tuple[list[AuthzPolicy], list[str]]:
    """The policies that take part at ``point``, and notes on those set aside."""
    notes: list[str] = []
    usable: list[AuthzPolicy] = []
    for policy in policies:
        if policy.problem:
            notes.append(f"{policy.describe()} cannot be read ({policy.problem}); set aside")
        elif policy.action == "CUSTOM" and point is Point.ztunnel:
            notes.append(f"{policy.describe()} is CUSTOM, which ztunnel ignores")
        elif policy.action != "AUDIT":
            usable.append(policy)
    return usable, notes


def _first_match(
    policies: Iterable[AuthzPolicy], attrs: _Attributes, point: Point
) -> tuple[AuthzPolicy | None, tuple[AuthzPolicy, list[str]] | None]:
    """The first policy that matches, else the first that may (with what it depends on)."""
    undecided: tuple[AuthzPolicy, list[str]] | None = None
    for policy in policies:
        unknowns: list[str] = []
        found = policy_matches(policy, attrs, point, unknowns)
        if found:
            return policy, None
        if found is None and undecided is None:
            undecided = (policy, unknowns)
    return None, undecided


def evaluate_point(
    policies: Sequence[AuthzPolicy], attrs: _Attributes, point: Point
) -> tuple[Decision, str, AuthzPolicy | None, list[str]]:
    """CUSTOM, then DENY, then ALLOW at one enforcement point.

    Returns:
        The decision, why ("" for a deny because no ALLOW policy matches: the caller words
        the nearest miss), the deciding policy (if any), and notes on policies set aside.
    """
    usable, notes = _usable(policies, point)
    custom, maybe = _first_match((p for p in usable if p.action == "CUSTOM"), attrs, point)
    custom = custom or (maybe[0] if maybe else None)
    if custom is not None:
        reason = f"{custom.describe()} is CUSTOM: an external authorizer decides"
        return Decision.unknown, reason, custom, notes
    denied, maybe = _first_match((p for p in usable if p.action == "DENY"), attrs, point)
    if denied is not None:
        return Decision.deny, f"{denied.describe()} denies it", denied, notes
    if maybe is not None:
        return Decision.unknown, _unknown_reason(*maybe), maybe[0], notes
    return (*_allow_step([p for p in usable if p.action == "ALLOW"], attrs, point), notes)


def _allow_step(
    allows: Sequence[AuthzPolicy], attrs: _Attributes, point: Point
) -> tuple[Decision, str, AuthzPolicy | None]:
    """The ALLOW stage: none applies, one matches, one may match, or none matches."""
    if not allows:
        return Decision.allow, "no ALLOW policy applies here, so everything is allowed", None
    allowed, maybe = _first_match(allows, attrs, point)
    if allowed is not None:
        return Decision.allow, f"{allowed.describe()}{_origin(allowed)} allows it", allowed
    if maybe is not None:
        return Decision.unknown, _unknown_reason(*maybe), maybe[0]
    return Decision.deny, "", None


def decide_at(
    point: Point, policies: Sequence[AuthzPolicy], request: Request
) -> tuple[Decision, str]:
    """The decision of one enforcement point alone (and why), from plain inputs.

    What the waypoint's Envoy (``Point.waypoint``: the policies attached to the Service) or
    ztunnel (``Point.ztunnel``: the policies selecting the pods, as istiod converts them) decides
    about ``request``; for comparing the engine with real Envoy and with istiod's conversion.
    """
    attrs = _Attributes(
        request.source_principal, request.port, request.method, request.path, request.host
    )
    decision, reason, _, _ = evaluate_point(policies, attrs, point)
    return decision, reason or "no ALLOW policy matches"


def _waypoint_allow_policy(model: Model) -> AuthzPolicy:
    """What istiod adds when auto-allow-waypoint-policy is on: the waypoint may reach the pods."""
    return AuthzPolicy(
        name=f"istio_allow_waypoint_{model.namespace}_{model.waypoint}",
        namespace=model.namespace,
        rules=(Rule(sources=(Source(principals=(model.waypoint_principal,)),)),),
        generated_by="istiod's policy that lets the waypoint reach the pods bound to it "
        "(auto-allow-waypoint-policy)",
    )


def decide(model: Model, request: Request) -> Verdict:
    """Whether ``request`` is allowed, and the chain of steps that decides it."""
    workload = model.workload(request.target)
    if workload is None:
        return Verdict(
            Decision.unknown,
            (Step(Point.mesh, Decision.unknown, f"the model has no app {request.target}"),),
        )
    if not on_mesh(model, workload):
        return Verdict(
            Decision.allow,
            (
                Step(
                    Point.mesh,
                    Decision.allow,
                    f"{request.target} is not on the mesh, so nothing is enforced",
                ),
            ),
        )
    steps: list[Step] = []
    notes: list[str] = []
    attrs = _Attributes(
        request.source_principal, request.port, request.method, request.path, request.host
    )
    via_waypoint = False
    if request.level is Level.app:
        via_waypoint = _waypoint_path(model, workload, request, steps, notes)
        if steps and steps[-1].decision is not Decision.allow:
            return Verdict(steps[-1].decision, tuple(steps), tuple(notes))
    ztunnel_attrs = _Attributes(model.waypoint_principal, request.port) if via_waypoint else attrs
    bound = uses_beacon_waypoint(model, workload)
    settings = (
        [model.auto_allow_waypoint] if model.auto_allow_waypoint is not None else [True, False]
    )
    outcomes = [
        _ztunnel_step(model, workload, request, ztunnel_attrs, via_waypoint, bound and auto)
        for auto in settings
    ]
    step, point_notes = outcomes[0]
    notes.extend(point_notes)
    if any(other.decision is not step.decision for other, _ in outcomes[1:]):
        off = outcomes[1][0]
        step = Step(
            Point.ztunnel,
            Decision.unknown,
            "depends on istiod's auto-allow-waypoint-policy (on in istio-k8s): on, "
            f"{step.decision.value} ({step.reason}); off, {off.decision.value} ({off.reason})",
        )
    steps.append(step)
    if via_waypoint and step.decision is Decision.allow:
        # The waypoint's step is the one that saw this caller; the pods saw the waypoint.
        return Verdict(step.decision, tuple(steps), tuple(notes), deciding=len(steps) - 2)
    return Verdict(step.decision, tuple(steps), tuple(notes))


def _ztunnel_step(
    model: Model,
    workload: Workload,
    request: Request,
    attrs: _Attributes,
    via_waypoint: bool,
    implicit_waypoint_policy: bool,
) -> tuple[Step, list[str]]:
    """Decide in front of the pods; istiod may add its ALLOW for the waypoint's identity."""
    policies = ztunnel_policies(model, workload)
    if implicit_waypoint_policy:
        policies.append(_waypoint_allow_policy(model))
    decision, reason, policy, notes = evaluate_point(policies, attrs, Point.ztunnel)
    if decision is Decision.deny and policy is None:
        reason = _ztunnel_miss(
            model, policies, attrs, request, via_waypoint, implicit_waypoint_policy
        )
    return Step(Point.ztunnel, decision, reason, policy), notes


def _waypoint_path(
    model: Model, workload: Workload, request: Request, steps: list[Step], notes: list[str]
) -> bool:
    """Decide at the waypoint when the Service has one; returns whether the waypoint is used."""
    if workload.service is None:
        steps.append(
            Step(Point.mesh, Decision.unknown, f"{request.target} has no Service to go through")
        )
        return False
    if request.source_principal is None:
        notes.append(
            "the caller is not on the mesh: its traffic goes straight to the pods, past the "
            "waypoint, without an identity"
        )
        return False
    bound = bound_waypoint(model, workload.service_labels)
    if bound is None:
        notes.append(
            f"Service {workload.service} uses no waypoint: app policies are not enforced, "
            "only the pods' policies"
        )
        return False
    if bound != (model.namespace, model.waypoint):
        steps.append(
            Step(
                Point.waypoint,
                Decision.unknown,
                f"Service {workload.service} uses waypoint {bound[0]}/{bound[1]}, which this "
                "beacon does not run",
            )
        )
        return False
    if not model.waypoint_ready:
        notes.append(
            f"the waypoint {model.waypoint} is not ready: Istio does not use it yet, so app "
            "policies are not enforced"
        )
        return False
    attrs = _Attributes(
        request.source_principal, request.port, request.method, request.path, request.host
    )
    policies = waypoint_policies(model, workload.service)
    decision, reason, policy, point_notes = evaluate_point(policies, attrs, Point.waypoint)
    notes.extend(point_notes)
    if decision is Decision.deny and policy is None:
        reason = _waypoint_miss(model, policies, attrs, request)
    steps.append(Step(Point.waypoint, decision, reason, policy))
    return True


# --------------------------------------------------------------------------------------------
# Nearest misses, in words a Juju user acts on
# --------------------------------------------------------------------------------------------


def _listing(values: Sequence[str]) -> str:
    values = list(dict.fromkeys(values))
    if not values:
        return "no policy"
    if len(values) == 1:
        return values[0]
    return f"{', '.join(values[:-1])} and {values[-1]}"


def _who(principal_value: str | None, model: Model) -> str:
    parts = split_principal(principal_value)
    if principal_value is None:
        return "a caller without a mesh identity"
    if parts is None:
        return principal_value
    namespace, account = parts
    if principal_value == model.waypoint_principal:
        return f"the waypoint {account}"
    return account if namespace == model.namespace else f"{account} (model {namespace})"


def _operation_miss(operation: Operation, attrs: _Attributes, l7: bool) -> str:
    """What in one operation the request misses ("" when it matches or cannot tell)."""
    port = str(attrs.port)
    misses = [
        (bool(operation.ports) and port not in operation.ports,
         f"opens {_listing(operation.ports)}, not {port}"),
        (bool(operation.not_ports) and port in operation.not_ports, f"excludes port {port}"),
    ]  # fmt: skip
    if l7:
        method, path, host = attrs.method, attrs.path, attrs.host
        misses += [
            (bool(operation.methods and method and method not in operation.methods),
             f"allows {_listing(operation.methods)}, not {method}"),
            (bool(operation.paths and path
                  and not any(match_path(p, path) for p in operation.paths)),
             f"allows the paths {_listing(operation.paths)}, not {path}"),
            (bool(operation.hosts and host
                  and not any(match_string(h, host, ignore_case=True) for h in operation.hosts)),
             f"allows the hosts {_listing(operation.hosts)}, not {host}"),
            (True, "does not allow it (an excluded method, path or host)"),
        ]  # fmt: skip
    return next((text for missed, text in misses if missed), "")


def _rule_source_matches(rule: Rule, attrs: _Attributes, namespace: str) -> bool:
    return not rule.sources or bool(
        _any(_source_match(s, attrs, namespace, []) for s in rule.sources)
    )


def _origin(policy: AuthzPolicy) -> str:
    """`` (asked for by <app> over relation <id>, <endpoint>)`` for a policy a relation made."""
    provenance = policy.provenance
    if provenance is None or provenance.waypoint_access:
        return ""
    relation = (
        f"relation {provenance.relation_id}"
        if provenance.relation_id is not None
        else "a relation"
    )
    return f" (asked for by {provenance.requested_by} over {relation}, {provenance.endpoint})"


def _explain_owned(policy: AuthzPolicy) -> str:
    """The policy, and for the beacon's own the relation it answers ("related, but ...")."""
    if not _origin(policy):
        return policy.describe()
    return f"related, but {policy.describe()}{_origin(policy)}"


def _waypoint_miss(
    model: Model, policies: Sequence[AuthzPolicy], attrs: _Attributes, request: Request
) -> str:
    allows = [p for p in policies if p.action == "ALLOW" and not p.problem]
    who = _who(attrs.principal, model)
    for policy in allows:
        for rule in policy.rules:
            if not _rule_source_matches(rule, attrs, policy.namespace):
                continue
            misses = [_operation_miss(o, attrs, True) for o in rule.operations]
            if misses:
                return f"{_explain_owned(policy)} {'; or '.join(m for m in misses if m)}"
    refusals = [r for r in model.refused if r.app == request.target]
    if refusals:
        return (
            f"no policy lets {who} reach {request.target}: the beacon refused "
            f"{request.target}'s request over relation {refusals[0].relation_id} "
            f"({refusals[0].reason})"
        )
    other = _other_level(model, request, attrs)
    if other is not None:
        return (
            f"related at the other level only: {other.describe()} lets {who} reach the pods of "
            f"{request.target} straight (level=unit), not through its Service"
        )
    return (
        f"no relation between these apps grants access: no policy lets {who} reach "
        f"{request.target} through its Service"
    )


def _other_level(model: Model, request: Request, attrs: _Attributes) -> AuthzPolicy | None:
    """A policy that lets this caller in at the other level (pods for app, Service for unit)."""
    workload = model.workload(request.target)
    if workload is None:
        return None
    if request.level is Level.app:
        candidates = ztunnel_policies(model, workload)
    else:
        candidates = waypoint_policies(model, workload.service) if workload.service else []
    for policy in candidates:
        if policy.action != "ALLOW" or policy.problem or _waypoint_access(policy):
            continue
        if any(
            r.sources and _rule_source_matches(r, attrs, policy.namespace) for r in policy.rules
        ):
            return policy
    return None


def _waypoint_access(policy: AuthzPolicy) -> bool:
    return bool(policy.provenance and policy.provenance.waypoint_access)


def _ztunnel_rule_miss(allows: Sequence[AuthzPolicy], attrs: _Attributes) -> str:
    """The nearest miss among rules that let this caller in at the pods ("" if none does)."""
    for policy in allows:
        for rule in policy.rules:
            if not _rule_source_matches(rule, attrs, policy.namespace):
                continue
            dropped = http_parts(rule)
            if dropped:
                return (
                    f"{policy.describe()} names {_listing(dropped)}, which ztunnel cannot "
                    "check, so that rule allows nothing at the pods (use an app policy)"
                )
            misses = [m for m in (_operation_miss(o, attrs, False) for o in rule.operations) if m]
            if misses:
                return f"{_explain_owned(policy)} {'; or '.join(misses)}"
    return ""


def _ztunnel_miss(
    model: Model,
    policies: Sequence[AuthzPolicy],
    attrs: _Attributes,
    request: Request,
    via_waypoint: bool,
    bound: bool,
) -> str:
    who = _who(attrs.principal, model)
    allows = [p for p in policies if p.action == "ALLOW" and not p.problem]
    near = _ztunnel_rule_miss(allows, attrs)
    if near:
        return near
    for_waypoint = [p for p in allows if p.generated_by or _waypoint_access(p)]
    named = [p.name for p in allows if p not in for_waypoint]
    names = _listing(named)
    if (bound or for_waypoint) and not named and not via_waypoint:
        other = _other_level(model, request, attrs)
        hint = (
            f"; {other.describe()} lets {who} in through the Service (level=app)" if other else ""
        )
        return (
            f"the Service of {request.target} is bound to the waypoint, so its pods accept only "
            f"the waypoint and what unit policies allow, and no unit policy allows {who}{hint}"
        )
    if via_waypoint:
        return (
            f"the waypoint passed it, but the pods of {request.target} only accept what "
            f"{names} allow, and none allows the waypoint's identity {model.waypoint_principal}"
        )
    if attrs.principal is None:
        return (
            f"the caller has no mesh identity and the pods of {request.target} only accept "
            f"what {names} allow"
        )
    return _no_grant_at_pods(model, request, attrs, names)


def _no_grant_at_pods(model: Model, request: Request, attrs: _Attributes, names: str) -> str:
    """Why no policy lets the caller reach the pods: a refusal, the other level, or nothing."""
    who = _who(attrs.principal, model)
    refusals = [r for r in model.refused if r.app == request.target]
    if refusals:
        return (
            f"no policy lets {who} reach the pods of {request.target}: the beacon refused "
            f"{request.target}'s request over relation {refusals[0].relation_id} "
            f"({refusals[0].reason})"
        )
    other = _other_level(model, request, attrs)
    if other is not None:
        return (
            f"related at the other level only: {other.describe()} lets {who} reach "
            f"{request.target} through its Service (level=app), not its pods straight"
        )
    return (
        f"no relation between these apps grants access: the pods of {request.target} only "
        f"accept what {names} allow, and none allows {who}"
    )
