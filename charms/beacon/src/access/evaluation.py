"""The decision: who may reach whom, step by step through the enforcement points.

At each point, CUSTOM, then DENY, then ALLOW (:func:`evaluate_point`); :func:`decide` follows a
request from the caller through the waypoint (when the Service has one) to the pods.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from access.explanation import nearest_miss, origin
from access.matching import Attributes, policy_matches
from access.model import (
    Decision,
    Level,
    Model,
    Point,
    Request,
    Step,
    Verdict,
    Workload,
    bound_waypoint,
    on_mesh,
    uses_beacon_waypoint,
    waypoint_policies,
    ztunnel_policies,
)
from access.parsing import AuthzPolicy, Rule, Source


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
    policies: Iterable[AuthzPolicy], attrs: Attributes, point: Point
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
    policies: Sequence[AuthzPolicy], attrs: Attributes, point: Point
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
    allows: Sequence[AuthzPolicy], attrs: Attributes, point: Point
) -> tuple[Decision, str, AuthzPolicy | None]:
    """The ALLOW stage: none applies, one matches, one may match, or none matches."""
    if not allows:
        return Decision.allow, "no ALLOW policy applies here, so everything is allowed", None
    allowed, maybe = _first_match(allows, attrs, point)
    if allowed is not None:
        return Decision.allow, f"{allowed.describe()}{origin(allowed)} allows it", allowed
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
    attrs = Attributes(
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
    attrs = Attributes(
        request.source_principal, request.port, request.method, request.path, request.host
    )
    via_waypoint = False
    if request.level is Level.app:
        via_waypoint = _waypoint_path(model, workload, request, steps, notes)
        if steps and steps[-1].decision is not Decision.allow:
            return Verdict(steps[-1].decision, tuple(steps), tuple(notes))
    ztunnel_attrs = Attributes(model.waypoint_principal, request.port) if via_waypoint else attrs
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
    attrs: Attributes,
    via_waypoint: bool,
    implicit_waypoint_policy: bool,
) -> tuple[Step, list[str]]:
    """Decide in front of the pods; istiod may add its ALLOW for the waypoint's identity."""
    policies = ztunnel_policies(model, workload)
    if implicit_waypoint_policy:
        policies.append(_waypoint_allow_policy(model))
    decision, reason, policy, notes = evaluate_point(policies, attrs, Point.ztunnel)
    if decision is Decision.deny and policy is None:
        reason = nearest_miss(
            Point.ztunnel,
            model,
            policies,
            attrs,
            request,
            via_waypoint=via_waypoint,
            bound=implicit_waypoint_policy,
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
    attrs = Attributes(
        request.source_principal, request.port, request.method, request.path, request.host
    )
    policies = waypoint_policies(model, workload.service)
    decision, reason, policy, point_notes = evaluate_point(policies, attrs, Point.waypoint)
    notes.extend(point_notes)
    if decision is Decision.deny and policy is None:
        reason = nearest_miss(Point.waypoint, model, policies, attrs, request)
    steps.append(Step(Point.waypoint, decision, reason, policy))
    return True
