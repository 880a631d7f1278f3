"""AuthorizationPolicies as the engine reads them: the parsed form, and the parser.

A manifest that cannot be read comes back with ``problem`` set (it is reported, never evaluated);
the beacon's own policies carry the relation that asked for them (:class:`Provenance`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, cast

from kube_names import MANAGED_BY, RELATION_ID, REQUESTED_BY, WAYPOINT_ACCESS_FOR

#: The beacon's relation endpoint over which apps request access.
MESH_ENDPOINT = "service-mesh"
#: Istio's conditions on a policy: whether the waypoint or ztunnel enforces it.
ISTIO_CONDITIONS = ("WaypointAccepted", "ZtunnelAccepted")

_SOURCE_FIELDS = {
    "principals": "principals",
    "notPrincipals": "not_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "serviceAccounts": "service_accounts",
    "notServiceAccounts": "not_service_accounts",
}
#: Source fields ztunnel cannot see (HTTP-only): they make an ALLOW rule drop there.
HTTP_SOURCE_FIELDS = ("requestPrincipals", "notRequestPrincipals", "remoteIpBlocks",
                      "notRemoteIpBlocks")  # fmt: skip
#: Source fields the engine does not model (it knows identities, not addresses).
_UNMODELLED_SOURCE_FIELDS = ("ipBlocks", "notIpBlocks", *HTTP_SOURCE_FIELDS)
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
