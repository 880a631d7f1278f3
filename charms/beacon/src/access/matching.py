"""Whether a policy's rules match what an enforcement point sees, in three-valued logic.

``True``, ``False`` or ``None`` (cannot tell: the request left out an attribute the rule
restricts, or the rule names something the engine does not model), combined with Kleene's
AND/OR/NOT. The waypoint's Envoy sees every field; ztunnel sees connections, and istiod converts
the rules it gets (:func:`http_parts`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from access.model import Point, split_principal
from access.parsing import HTTP_SOURCE_FIELDS, AuthzPolicy, Condition, Operation, Rule, Source

_L4_WHEN_KEYS = frozenset(
    {"source.ip", "source.namespace", "source.principal", "destination.ip", "destination.port"}
)
_MODELLED_WHEN_KEYS = frozenset({"source.namespace", "source.principal", "destination.port"})
# Envoy's URI template operators: one path segment, or any number of them.
_SEGMENT = r"[A-Za-z0-9\-._~%!$&'()+,;:@=]+"
_SEGMENTS = r"[A-Za-z0-9\-._~%!$&'()+,;:@=/]*"

Tri = bool | None


def tri_all(values: Iterable[Tri]) -> Tri:
    """Kleene's AND: any ``False`` wins, else any ``None``."""
    result: Tri = True
    for value in values:
        if value is False:
            return False
        if value is None:
            result = None
    return result


def tri_any(values: Iterable[Tri]) -> Tri:
    """Kleene's OR: any ``True`` wins, else any ``None``."""
    result: Tri = False
    for value in values:
        if value is True:
            return True
        if value is None:
            result = None
    return result


def tri_not(value: Tri) -> Tri:
    """Kleene's NOT: unknown stays unknown."""
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


@dataclass(frozen=True)
class Attributes:
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


def source_matches(source: Source, attrs: Attributes, policy_ns: str, unknowns: list[str]) -> Tri:
    """Whether one ``from[].source`` entry matches the caller (unknowns: what it cannot tell)."""
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
    return tri_all(results)


def _ports_match(patterns: Sequence[str], port: int, unknowns: list[str], name: str) -> Tri:
    if not all(pattern.isdigit() for pattern in patterns):
        unknowns.append(f"{name} (not a port number)")
        return None
    return str(port) in {str(int(pattern)) for pattern in patterns}


def _operation_match(
    operation: Operation, attrs: Attributes, unknowns: list[str], l7: bool
) -> Tri:
    results: list[Tri] = []
    if operation.ports:
        results.append(_ports_match(operation.ports, attrs.port, unknowns, "to.operation.ports"))
    if operation.not_ports:
        results.append(
            tri_not(
                _ports_match(operation.not_ports, attrs.port, unknowns, "to.operation.notPorts")
            )
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
                results.append(tri_not(found) if negate else found)
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
    return tri_all(results)


def _condition_match(
    condition: Condition, attrs: Attributes, policy_ns: str, unknowns: list[str]
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
        results.append(tri_not(negative))
    return tri_all(results)


def _rule_match_waypoint(
    rule: Rule, attrs: Attributes, policy_ns: str, unknowns: list[str]
) -> Tri:
    """Envoy's (the waypoint's) view of one rule: every field counts."""
    parts: list[Tri] = []
    if rule.sources:
        parts.append(tri_any(source_matches(s, attrs, policy_ns, unknowns) for s in rule.sources))
    if rule.operations:
        parts.append(tri_any(_operation_match(o, attrs, unknowns, True) for o in rule.operations))
    parts.extend(_condition_match(c, attrs, policy_ns, unknowns) for c in rule.conditions)
    return tri_all(parts)


def http_parts(rule: Rule) -> list[str]:
    """The parts of a rule ztunnel cannot enforce (what istiod warns about)."""
    found: list[str] = []
    for operation in rule.operations:
        found.extend(
            name for name in operation.http_fields if name not in found
        )  # methods, paths, ...
    for source in rule.sources:
        found.extend(
            name for name in source.unmodelled if name in HTTP_SOURCE_FIELDS and name not in found
        )
    found.extend(f"when {c.key}" for c in rule.conditions if c.key not in _L4_WHEN_KEYS)
    return found


def _rule_match_ztunnel(
    rule: Rule, action: str, attrs: Attributes, policy_ns: str, unknowns: list[str]
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
                    tuple(n for n in s.unmodelled if n not in HTTP_SOURCE_FIELDS),
                )
                for s in rule.sources
            ),
            operations=tuple(Operation(o.ports, o.not_ports) for o in rule.operations),
            conditions=tuple(c for c in rule.conditions if c.key in _L4_WHEN_KEYS),
        )
    parts: list[Tri] = []
    if rule.sources:
        parts.append(tri_any(source_matches(s, attrs, policy_ns, unknowns) for s in rule.sources))
    if rule.operations:
        parts.append(tri_any(_operation_match(o, attrs, unknowns, False) for o in rule.operations))
    for condition in rule.conditions:
        if condition.key in ("source.ip", "destination.ip"):
            unknowns.append(f"when {condition.key}")
            parts.append(None)
        else:
            parts.append(_condition_match(condition, attrs, policy_ns, unknowns))
    return tri_all(parts)


def policy_matches(
    policy: AuthzPolicy, attrs: Attributes, point: Point, unknowns: list[str]
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
    return tri_any(results)
