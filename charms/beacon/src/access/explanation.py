"""Nearest misses: why no ALLOW policy lets a request through, in words a Juju user acts on.

One account serves both enforcement points: the rule that came closest (what it opens that the
request missed), else a refusal of the app's request, else a grant at the other level (Service
or pods), else no grant at all; at the pods, also what the waypoint's binding changes.
"""

from __future__ import annotations

from collections.abc import Sequence

from access.matching import (
    Attributes,
    http_parts,
    match_path,
    match_string,
    source_matches,
    tri_any,
)
from access.model import (
    Level,
    Model,
    Point,
    Request,
    split_principal,
    waypoint_policies,
    ztunnel_policies,
)
from access.parsing import AuthzPolicy, Operation, Rule


def nearest_miss(
    point: Point,
    model: Model,
    policies: Sequence[AuthzPolicy],
    attrs: Attributes,
    request: Request,
    *,
    via_waypoint: bool = False,
    bound: bool = False,
) -> str:
    """Why no ALLOW policy at ``point`` matches ``attrs`` (the request as that point sees it).

    Args:
        point: the waypoint or ztunnel.
        model: the model.
        policies: the policies that apply there.
        attrs: what the point sees (at the pods behind a waypoint: the waypoint's identity).
        request: the question asked.
        via_waypoint: the request reached the pods through the waypoint.
        bound: the app's Service is bound to this beacon's ready waypoint, and istiod lets the
            waypoint reach its pods.
    """
    allows = [p for p in policies if p.action == "ALLOW" and not p.problem]
    near = _rule_miss(allows, attrs, point)
    if near:
        return near
    who = _who(attrs.principal, model)
    target = request.target
    if point is Point.waypoint:
        nothing = f"no policy lets {who} reach {target} through its Service"
        return _no_grant(model, request, attrs, point, nothing)
    for_waypoint = [p for p in allows if p.generated_by or _waypoint_access(p)]
    named = [p.name for p in allows if p not in for_waypoint]
    names = _listing(named)
    if (bound or for_waypoint) and not named and not via_waypoint:
        other = _other_level(model, request, attrs)
        hint = (
            f"; {other.describe()} lets {who} in through the Service (level=app)" if other else ""
        )
        return (
            f"the Service of {target} is bound to the waypoint, so its pods accept only "
            f"the waypoint and what unit policies allow, and no unit policy allows {who}{hint}"
        )
    if via_waypoint:
        return (
            f"the waypoint passed it, but the pods of {target} only accept what "
            f"{names} allow, and none allows the waypoint's identity {model.waypoint_principal}"
        )
    if attrs.principal is None:
        return (
            f"the caller has no mesh identity and the pods of {target} only accept "
            f"what {names} allow"
        )
    return _no_grant(
        model,
        request,
        attrs,
        point,
        f"the pods of {target} only accept what {names} allow, and none allows {who}",
    )


def origin(policy: AuthzPolicy) -> str:
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


def _no_grant(
    model: Model, request: Request, attrs: Attributes, point: Point, nothing: str
) -> str:
    """Why nothing lets the caller in at ``point``: a refusal, the other level, or ``nothing``."""
    who = _who(attrs.principal, model)
    target = request.target
    at_pods = point is Point.ztunnel
    refusals = [r for r in model.refused if r.app == target]
    if refusals:
        where = f"the pods of {target}" if at_pods else target
        return (
            f"no policy lets {who} reach {where}: the beacon refused "
            f"{target}'s request over relation {refusals[0].relation_id} "
            f"({refusals[0].reason})"
        )
    other = _other_level(model, request, attrs)
    if other is not None:
        instead = (
            f"{target} through its Service (level=app), not its pods straight"
            if at_pods
            else f"the pods of {target} straight (level=unit), not through its Service"
        )
        return f"related at the other level only: {other.describe()} lets {who} reach {instead}"
    return f"no relation between these apps grants access: {nothing}"


def _rule_miss(allows: Sequence[AuthzPolicy], attrs: Attributes, point: Point) -> str:
    """The nearest miss among rules that let this caller in at ``point`` ("" if none does)."""
    l7 = point is Point.waypoint
    for policy in allows:
        for rule in policy.rules:
            if not _rule_source_matches(rule, attrs, policy.namespace):
                continue
            dropped = [] if l7 else http_parts(rule)
            if dropped:
                return (
                    f"{policy.describe()} names {_listing(dropped)}, which ztunnel cannot "
                    "check, so that rule allows nothing at the pods (use an app policy)"
                )
            misses = [m for m in (_operation_miss(o, attrs, l7) for o in rule.operations) if m]
            if misses:
                return f"{_explain_owned(policy)} {'; or '.join(misses)}"
    return ""


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


def _operation_miss(operation: Operation, attrs: Attributes, l7: bool) -> str:
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


def _rule_source_matches(rule: Rule, attrs: Attributes, namespace: str) -> bool:
    return not rule.sources or bool(
        tri_any(source_matches(s, attrs, namespace, []) for s in rule.sources)
    )


def _explain_owned(policy: AuthzPolicy) -> str:
    """The policy, and for the beacon's own the relation it answers ("related, but ...")."""
    if not origin(policy):
        return policy.describe()
    return f"related, but {policy.describe()}{origin(policy)}"


def _other_level(model: Model, request: Request, attrs: Attributes) -> AuthzPolicy | None:
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
