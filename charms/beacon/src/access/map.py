"""The model's access map and the answer to "may A reach B", from ``access.evaluation``.

Pure: a :class:`access.model.Model` in, frozen dataclasses out; ``access.report`` lays them out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from policies import holding_note

from access.evaluation import decide
from access.matching import http_parts
from access.model import (
    Decision,
    Level,
    Model,
    Request,
    Verdict,
    Workload,
    attaches,
    bound_waypoint,
    on_mesh,
    principal,
    selects,
    split_principal,
    uses_beacon_waypoint,
)
from access.parsing import AuthzPolicy, Operation, Rule, Source

ANYONE = "anyone"


@dataclass(frozen=True)
class Grant:
    """One access an ALLOW policy grants.

    Attributes:
        source: who (an app name, ``anyone``, or a pattern such as ``any app in model m``).
        source_model: the source's model when ``source`` is an app; ``""`` otherwise.
        target: the app reached.
        level: ``app`` (through its Service, at the waypoint) or ``unit`` (to its pods).
        ports: the ports, ``()``: any.
        methods: the methods, ``()``: any.
        paths: the paths, ``()``: any.
        hosts: the hosts, ``()``: any.
        excluded: what the rule excludes (``notPorts`` and the like), in words.
        policy: the AuthorizationPolicy's name.
        foreign: whether someone other than the beacon made the policy.
        requested_by: the app that asked for it (the beacon's own policies).
        relation_id: the relation it was asked for on.
        endpoint: the beacon's endpoint of that relation.
        caveats: what limits or voids the grant, in words.
        waypoint_access: the beacon made it so that the waypoint reaches ``requested_by``.
    """

    source: str
    source_model: str
    target: str
    level: str
    ports: tuple[str, ...]
    methods: tuple[str, ...]
    paths: tuple[str, ...]
    hosts: tuple[str, ...]
    excluded: tuple[str, ...]
    policy: str
    foreign: bool
    requested_by: str | None
    relation_id: int | None
    endpoint: str | None
    caveats: tuple[str, ...] = ()
    waypoint_access: bool = False


@dataclass(frozen=True)
class ForeignPolicy:
    """An AuthorizationPolicy the beacon did not make, and what it does to the model's apps.

    Attributes:
        name: its name.
        action: ALLOW, DENY, CUSTOM or AUDIT.
        targets: the apps it applies to.
        level: ``app``, ``unit`` or ``""`` (applies to nothing).
        effect: ``widens``, ``narrows``, ``delegates`` (CUSTOM), ``none`` or ``unreadable``.
        detail: the effect in words.
    """

    name: str
    action: str
    targets: tuple[str, ...]
    level: str
    effect: str
    detail: str


@dataclass(frozen=True)
class AppEnrolment:
    """An app of the model and its place on the mesh.

    Attributes:
        app: its name.
        on_mesh: whether its pods are in the ambient data plane.
        waypoint: how its Service meets the waypoint, in words.
    """

    app: str
    on_mesh: bool
    waypoint: str


@dataclass(frozen=True)
class RefusedRequest:
    """A request the beacon did not apply.

    Attributes:
        app: the app that asked.
        relation_id: its relation.
        reason: why it is refused.
        in_force: what stays in force meanwhile: its last accepted policies, or nothing (its
            app is then open to anyone), in words.
    """

    app: str
    relation_id: int
    reason: str
    in_force: str = ""


@dataclass(frozen=True)
class AccessMap:
    """Who may reach whom in the model, and why.

    Attributes:
        model: the model's name.
        grants: every access granted by an ALLOW policy.
        refused: the requests the beacon refused.
        pending: accepted requests whose policy is not in the cluster (yet), in words.
        apps: the apps and their enrolment.
        foreign: the policies the beacon did not make.
        waypoint: the waypoint's name and readiness, in words.
    """

    model: str
    grants: tuple[Grant, ...]
    refused: tuple[RefusedRequest, ...]
    pending: tuple[str, ...]
    apps: tuple[AppEnrolment, ...]
    foreign: tuple[ForeignPolicy, ...]
    waypoint: str


@dataclass(frozen=True)
class Attachment:
    """Which policies apply to which apps, worked out once per model.

    Attributes:
        targets: for each policy (by position in ``model.policies``), its apps and level.
        waypoint: for each app, the policies the waypoint applies to its Service's traffic.
        ztunnel: for each app, the policies ztunnel applies in front of its pods.
    """

    targets: tuple[tuple[tuple[Workload, ...], str], ...]
    waypoint: Mapping[str, tuple[AuthzPolicy, ...]]
    ztunnel: Mapping[str, tuple[AuthzPolicy, ...]]

    @classmethod
    def of(cls, model: Model) -> Attachment:
        """Work it out: one pass over the policies, each against the apps."""
        owners = {service: w for w in model.workloads for service in w.services()}
        behind_waypoint = [
            w
            for w in model.workloads
            if w.service and bound_waypoint(model, w.service_labels) == (model.namespace,
                                                                          model.waypoint)
        ]  # fmt: skip
        targets: list[tuple[tuple[Workload, ...], str]] = []
        waypoint: dict[str, list[AuthzPolicy]] = {w.name: [] for w in model.workloads}
        ztunnel: dict[str, list[AuthzPolicy]] = {w.name: [] for w in model.workloads}
        for policy in model.policies:
            apps: dict[str, Workload] = {}
            if policy.namespace != model.namespace:
                pass
            elif policy.target_refs:
                for ref in policy.target_refs:
                    owner = owners.get(ref.name)
                    if owner is not None and attaches(ref, model, ref.name):
                        apps[owner.name] = owner
                    elif ref.kind == "Gateway" and attaches(ref, model, ""):
                        apps.update((w.name, w) for w in behind_waypoint)
            else:
                apps = {w.name: w for w in model.workloads if selects(policy, w.pod_labels)}
            level = ("app" if policy.target_refs else "unit") if apps else ""
            targets.append((tuple(apps.values()), level))
            for name in apps:
                (waypoint if policy.target_refs else ztunnel)[name].append(policy)
        return cls(
            tuple(targets),
            {name: tuple(found) for name, found in waypoint.items()},
            {name: tuple(found) for name, found in ztunnel.items()},
        )


def _sources(rule: Rule, model: Model) -> list[tuple[str, str, tuple[str, ...]]]:
    """Who a rule lets in: ``(source, source model, exclusions)`` for each alternative."""
    if not rule.sources:
        return [(ANYONE, "", ())]
    result: list[tuple[str, str, tuple[str, ...]]] = []
    for source in rule.sources:
        excluded = _source_exclusions(source)
        named = False
        for value in source.principals:
            named = True
            parts = split_principal(value)
            if parts is not None and "*" not in value:
                result.append((parts[1], parts[0], excluded))
            else:
                result.append((f"principal {value}", "", excluded))
        for value in source.namespaces:
            named = True
            result.append((f"any app in model {value}", "", excluded))
        for value in source.service_accounts:
            named = True
            namespace, _, account = value.rpartition("/")
            result.append((account, namespace or model.namespace, excluded))
        if source.unmodelled:
            named = True
            result.append((f"callers by {', '.join(source.unmodelled)}", "", excluded))
        if not named:
            result.append((ANYONE, "", excluded))
    return result


def _source_exclusions(source: Source) -> tuple[str, ...]:
    pairs = (
        ("principals", source.not_principals),
        ("models", source.not_namespaces),
        ("service accounts", source.not_service_accounts),
    )
    return tuple(f"not {what} {', '.join(values)}" for what, values in pairs if values)


def _operation_exclusions(operation: Operation) -> tuple[str, ...]:
    pairs = (
        ("ports", operation.not_ports),
        ("methods", operation.not_methods),
        ("paths", operation.not_paths),
        ("hosts", operation.not_hosts),
    )
    return tuple(f"not {what} {', '.join(values)}" for what, values in pairs if values)


def _caveats(
    model: Model, attached: Attachment, policy: AuthzPolicy, rule: Rule, target: Workload
) -> list[str]:
    caveats: list[str] = []
    caveats.extend(policy.not_enforced)
    if not on_mesh(model, target):
        caveats.append(f"not enforced: {target.name} is not on the mesh (anyone may reach it)")
        return caveats
    if policy.target_refs and not uses_beacon_waypoint(model, target):
        reason = (
            f"the waypoint {model.waypoint} is not ready"
            if bound_waypoint(model, target.service_labels)
            else f"the Service of {target.name} uses no waypoint"
        )
        caveats.append(f"not enforced: {reason}")
    if not policy.target_refs and http_parts(rule):
        caveats.append(
            f"allows nothing: ztunnel cannot check {', '.join(http_parts(rule))}, so istiod "
            "drops the rule"
        )
    if rule.conditions:
        caveats.append(f"only when {', '.join(c.key for c in rule.conditions)} match")
    applying = (attached.waypoint if policy.target_refs else attached.ztunnel)[target.name]
    for other in applying:
        if other.action == "DENY":
            caveats.append(f"narrowed by DENY policy {other.name}")
        elif other.action == "CUSTOM" and policy.target_refs:
            caveats.append(f"an external authorizer also decides (CUSTOM policy {other.name})")
    return caveats


def grants_of(model: Model, index: int, attached: Attachment | None = None) -> list[Grant]:
    """Every access the ALLOW policy ``model.policies[index]`` grants.

    One grant per target, rule, source and operation.
    """
    policy = model.policies[index]
    if policy.action != "ALLOW" or policy.problem:
        return []
    attached = attached or Attachment.of(model)
    targets, level = attached.targets[index]
    provenance = policy.provenance
    grants: list[Grant] = []
    for target in targets:
        for rule in policy.rules:
            operations = rule.operations or (Operation(),)
            caveats = tuple(_caveats(model, attached, policy, rule, target))
            for source, source_model, excluded in _sources(rule, model):
                for operation in operations:
                    grants.append(
                        Grant(
                            source=source,
                            source_model=source_model,
                            target=target.name,
                            level=level,
                            ports=operation.ports,
                            methods=operation.methods if level == "app" else (),
                            paths=operation.paths if level == "app" else (),
                            hosts=operation.hosts if level == "app" else (),
                            excluded=excluded + _operation_exclusions(operation),
                            policy=policy.name,
                            foreign=policy.foreign,
                            requested_by=provenance.requested_by if provenance else None,
                            relation_id=provenance.relation_id if provenance else None,
                            endpoint=provenance.endpoint if provenance else None,
                            waypoint_access=bool(provenance and provenance.waypoint_access),
                            caveats=caveats,
                        )
                    )
    return grants


def _foreign(model: Model, attached: Attachment, index: int) -> ForeignPolicy:
    policy = model.policies[index]
    if policy.problem:
        return ForeignPolicy(
            policy.name, policy.action, (), "", "unreadable", f"cannot be read: {policy.problem}"
        )
    targets, level = attached.targets[index]
    names = tuple(t.name for t in targets)
    where = "through the waypoint" if level == "app" else "at the pods"
    if not targets:
        effect, detail = "none", "applies to no app of this model"
    elif policy.action == "ALLOW":
        effect = "widens"
        detail = f"grants access {where}"
        if level == "unit" and not any(
            p.owned and p.action == "ALLOW"
            for t in targets
            for p in attached.ztunnel[t.name]
            if p is not policy
        ):
            detail += "; and the pods now refuse whatever no ALLOW policy allows"
    elif policy.action == "DENY":
        effect, detail = "narrows", f"denies matching requests {where}"
    elif policy.action == "CUSTOM":
        if level == "unit":
            effect, detail = "none", "CUSTOM at the pods: ztunnel ignores it"
        else:
            effect, detail = "delegates", "an external authorizer decides: the beacon cannot tell"
    else:
        effect, detail = "none", "AUDIT only logs"
    return ForeignPolicy(policy.name, policy.action, names, level, effect, detail)


def _enrolment(model: Model, workload: Workload) -> AppEnrolment:
    if not on_mesh(model, workload):
        return AppEnrolment(workload.name, False, "off the mesh: nothing enforced")
    if workload.service is None:
        return AppEnrolment(workload.name, True, "no Service")
    bound = bound_waypoint(model, workload.service_labels)
    if bound is None:
        text = "Service not bound to a waypoint"
    elif bound != (model.namespace, model.waypoint):
        text = f"Service bound to waypoint {bound[0]}/{bound[1]} (not this beacon's)"
    elif model.waypoint_ready:
        text = "Service bound to the waypoint"
    else:
        text = "Service bound to the waypoint, which is not ready"
    return AppEnrolment(workload.name, True, text)


def build_access_map(model: Model, app: str | None = None) -> AccessMap:
    """Who may reach whom; with ``app``, only what involves that app."""
    attached = Attachment.of(model)
    indices = range(len(model.policies))
    grants = [g for i in indices for g in grants_of(model, i, attached)]
    foreign = [_foreign(model, attached, i) for i in indices if model.policies[i].foreign]
    owned = {p.name for p in model.policies if p.owned}
    missing = [r for r in model.requested if r.policy_name not in owned]
    # A refused request replaces nothing: what was applied for its relation stays (reconciler).
    held: Counter[int] = Counter()
    for policy in model.policies:
        provenance = policy.provenance if policy.owned else None
        if provenance is not None and provenance.relation_id is not None:
            held[provenance.relation_id] += 0 if provenance.waypoint_access else 1
    refused = [
        RefusedRequest(r.app, r.relation_id, r.reason, holding_note(r.app, r.relation_id, held))
        for r in model.refused
    ]
    holding = {r.relation_id for r in model.refused if held[r.relation_id]}
    missing = [r for r in missing if r.relation_id not in holding]
    apps = [_enrolment(model, w) for w in model.workloads]
    if app is not None:
        grants = [g for g in grants if app in (g.source, g.target)]
        foreign = [f for f in foreign if app in f.targets]
        refused = [r for r in refused if r.app == app]
        missing = [r for r in missing if app in (r.app, r.source_app)]
        apps = [a for a in apps if a.app == app]
    pending = [
        f"{r.policy_name} (asked for by {r.app} over relation {r.relation_id}) is not in the "
        "cluster"
        for r in missing
    ]
    waypoint = f"{model.waypoint} ({'ready' if model.waypoint_ready else 'not ready'})"
    return AccessMap(
        model.namespace,
        tuple(grants),
        tuple(refused),
        tuple(pending),
        tuple(apps),
        tuple(foreign),
        waypoint,
    )


@dataclass(frozen=True)
class Explanation:
    """The answer to "may this source reach this target there", with the chain behind it.

    Attributes:
        source: the source as given (``app`` or ``app/model``).
        request: the question put to the engine.
        verdict: the engine's answer.
        notes: what the answer assumes about the source.
    """

    source: str
    request: Request
    verdict: Verdict
    notes: tuple[str, ...]

    @property
    def decision(self) -> Decision:
        """The decision."""
        return self.verdict.decision


def explain(
    model: Model,
    source: str,
    target: str,
    port: int,
    *,
    method: str | None = None,
    path: str | None = None,
    host: str | None = None,
    level: Level = Level.app,
) -> Explanation:
    """Decide whether ``source`` (``app`` or ``app/model``) may reach ``target`` on ``port``.

    A source in this model that is not on the mesh calls without an identity; a source in
    another model is assumed to be on the mesh.
    """
    app, _, source_model = source.partition("/")
    source_model = source_model or model.namespace
    notes: list[str] = []
    source_principal: str | None = principal(source_model, app)
    if source_model == model.namespace:
        workload = model.workload(app)
        if workload is None:
            notes.append(f"the model has no app {app}: assuming a caller with its identity")
        elif not on_mesh(model, workload):
            notes.append(f"{app} is not on the mesh: its traffic carries no mesh identity")
            source_principal = None
    else:
        notes.append(f"{app} is in model {source_model}: assuming it is on the mesh there")
    request = Request(source_principal, target, port, method, path, host, level)
    return Explanation(source, request, decide(model, request), tuple(notes))
