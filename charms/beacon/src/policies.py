"""From what related apps request to the AuthorizationPolicies the beacon applies.

The safety rule: an app may only open access to itself. Every requested policy is checked against
the relation it arrived on, with pure functions (requests in, accepted policies and refusals out);
a refused request is reported and skipped, and every other request is still applied.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from charms.istio_beacon_k8s.v0.service_mesh import (
    MeshPolicy,
    PolicyTargetType,
    RelationRequest,
    build_authorization_policy,
)
from display import display_text
from kube_names import (
    APP_NAME_LABEL,
    AUTHZ_API_VERSION,
    AUTHZ_KIND,
    DRY_RUN_ANNOTATION,
    RELATION_ID,
    REQUESTED_BY,
    USE_WAYPOINT_LABEL,
    WAYPOINT_ACCESS_FOR,
)

logger = logging.getLogger(__name__)

_MAX_NAME = 253


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
    ``<app>`` or ``<app>-endpoints``. Never, whatever its labels, when it is another Juju app's by
    name: ``<other>`` next to an ``<other>-endpoints``, or ``<other>-endpoints`` next to
    ``<other>``.

    Args:
        app: the app that asks.
        service: the Service its policy names.
        services: the namespace's Services, name to labels.
    """
    shown = display_text(service)
    if service not in services:
        return f"Service {shown} does not exist"
    by_name = _other_apps_by_name(app, service, services)
    if by_name:
        return by_name
    owner = services[service].get(APP_NAME_LABEL)
    if owner is None:
        if service in (app, f"{app}-endpoints"):
            return ""
        return f"Service {shown} is not labelled {APP_NAME_LABEL}={app}"
    if owner != app:
        return f"Service {shown} belongs to {owner}"
    return ""


def claimed_services(deployed: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Service name to the app whose policies in the cluster target it (one app only).

    A Service an accepted request named stays that app's while its policies exist: a label,
    which any app of the model may patch, does not move it to another app. A Service the
    policies of two apps target (written before this rule) is left to the other checks.

    Args:
        deployed: the beacon's AuthorizationPolicies as they are in the cluster.
    """
    claims: dict[str, set[str]] = {}
    for item in deployed:
        asker = requested_by(item)
        spec = cast("Mapping[str, Any]", item.get("spec") or {})
        if asker is None:
            continue
        for ref in cast("list[Mapping[str, Any]]", spec.get("targetRefs") or []):
            if ref.get("kind") == "Service" and not ref.get("group") and ref.get("name"):
                claims.setdefault(str(ref["name"]), set()).add(asker[0])
    return {service: next(iter(apps)) for service, apps in claims.items() if len(apps) == 1}


def proven_owners(
    services: Mapping[str, Mapping[str, str]],
    statefulsets: Iterable[str],
    deployed: Iterable[Mapping[str, Any]],
) -> dict[str, dict[str, str]]:
    """The Services' labels, with ``app.kubernetes.io/name`` set to the owner as proven.

    Any app of the model may relabel a Service (Juju's default Role lets it patch every
    Service), so the label is overridden by what proves more: the names first (Services
    ``<app>`` and ``<app>-endpoints`` are app ``<app>``'s when its StatefulSet exists), then the
    beacon's policies in the cluster (:func:`claimed_services`).

    Args:
        services: the namespace's Services, name to labels.
        statefulsets: the names of its StatefulSets (Juju's apps).
        deployed: the beacon's AuthorizationPolicies as they are in the cluster.
    """
    owners = {name: dict(labels) for name, labels in services.items()}
    by_name: set[str] = set()
    for app in statefulsets:
        for name in (app, f"{app}-endpoints"):
            if name in owners:
                owners[name][APP_NAME_LABEL] = app
                by_name.add(name)
    for name, app in claimed_services(deployed).items():
        if name in owners and name not in by_name:
            owners[name][APP_NAME_LABEL] = app
    return owners


def _other_apps_by_name(app: str, service: str, services: Mapping[str, Mapping[str, str]]) -> str:
    """Why Service ``service`` is another Juju app's by its name alone, or ``""``.

    Juju makes ``<app>`` and ``<app>-endpoints`` for every app, and any app of the model may
    relabel a Service, so a label never makes another app's Service this one's.
    """
    shown = display_text(service)
    if service != app and f"{service}-endpoints" in services:
        return f"Service {shown} is app {shown}'s (Juju made {shown}-endpoints for it)"
    base = service.removesuffix("-endpoints")
    if service not in (f"{app}-endpoints", base) and base in services:
        return f"Service {shown} is app {display_text(base)}'s headless Service"
    return ""


@dataclass(frozen=True)
class WaypointBinding:
    """Which of the namespace's Services Istio sends through the beacon's waypoint.

    Attributes:
        waypoint: the waypoint's name.
        namespace_bound: the beacon labelled the namespace (``model-on-mesh``), so every Service
            without a waypoint label of its own uses the waypoint.
    """

    waypoint: str
    namespace_bound: bool = False


def service_binding_error(
    app: str, service: str, labels: Mapping[str, str], binding: WaypointBinding
) -> str:
    """Why an app policy naming Service ``service`` would not be enforced, or ``""``.

    Istio enforces a policy that targets a Service only at the waypoint the Service is bound to;
    for any other Service it marks the policy not bound and enforces nothing. Service ``<app>``
    is bound by the labels the beacon publishes to ``app`` (or by the namespace labels); any other
    Service is bound only if it carries ``istio.io/use-waypoint: <waypoint>`` itself, or the
    beacon labelled the namespace and the Service does not opt out with a label of its own.
    """
    label = labels.get(USE_WAYPOINT_LABEL)
    if label is not None:
        if label != binding.waypoint:
            return f"Service {service} uses waypoint {label!r}, not {binding.waypoint}"
        return ""
    if service == app or binding.namespace_bound:
        return ""
    return (
        f"Service {service} is not bound to the waypoint, so Istio would not enforce the policy "
        f"(label it {USE_WAYPOINT_LABEL}={binding.waypoint}, or use model-on-mesh)"
    )


def policy_error(
    policy: MeshPolicy,
    app: str,
    namespace: str,
    services: Mapping[str, Mapping[str, str]],
    binding: WaypointBinding | None = None,
) -> str:
    """Why ``app`` may not have ``policy``, or ``""`` when it may.

    Args:
        policy: the requested policy.
        app: the app on the other side of the relation the request arrived on.
        namespace: the beacon's namespace (model name): the only one it manages.
        services: the namespace's Services, name to labels (for policies naming a Service).
        binding: which Services use the waypoint; ``None`` skips that check.
    """
    if policy.target_namespace != namespace:
        return f"targets namespace {display_text(policy.target_namespace)}, not {namespace}"
    if policy.target_app_name is not None and policy.target_app_name != app:
        return f"targets app {display_text(policy.target_app_name)}"
    if policy.target_type is PolicyTargetType.app:
        service = policy.target_service
        if not service:
            return ""
        error = service_owner_error(app, service, services)
        if error or binding is None:
            return error
        return service_binding_error(app, service, services[service], binding)
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
    binding: WaypointBinding | None = None,
) -> tuple[list[AcceptedPolicy], list[Refusal]]:
    """Sort the requested policies into those the beacon applies and those it refuses.

    Args:
        requests: what each relation asked for (relations whose data is malformed included).
        namespace: the beacon's namespace (model name).
        services: the namespace's Services, name to labels; only consulted for policies that
            name a Service (see :func:`needs_services`).
        binding: which Services use the waypoint: an app policy naming a Service that does not
            is refused (Istio would not enforce it); ``None`` skips that check.
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
            error = policy_error(policy, app, namespace, services, binding)
            if error:
                refusals.append(Refusal(app, request.relation_id, error))
            else:
                accepted.append(AcceptedPolicy(policy, app, request.relation_id))
    return _capped(accepted, refusals)


#: The most policies the beacon applies for one app, over all its relations. istiod sends every
#: policy to every ztunnel of the mesh (and each app policy to the waypoint): one app must not
#: be able to flood them. A consumer gets one policy per source app and endpoint set, so this
#: fits an app that hundreds of apps reach (logs, metrics); an operator who wants a tighter
#: bound for the whole namespace sets a ResourceQuota (docs/beacon.md).
MAX_POLICIES_PER_APP = 500


def _capped(
    accepted: list[AcceptedPolicy], refusals: list[Refusal]
) -> tuple[list[AcceptedPolicy], list[Refusal]]:
    """Keep at most :data:`MAX_POLICIES_PER_APP` per app, in the order they were requested."""
    kept: list[AcceptedPolicy] = []
    counts: dict[str, int] = {}
    over: dict[str, tuple[int, int]] = {}
    for item in accepted:
        counts[item.app_name] = counts.get(item.app_name, 0) + 1
        if counts[item.app_name] <= MAX_POLICIES_PER_APP:
            kept.append(item)
        else:
            first, extra = over.get(item.app_name, (item.relation_id, 0))
            over[item.app_name] = (first, extra + 1)
    for app, (relation_id, extra) in over.items():
        refusals.append(
            Refusal(
                app,
                relation_id,
                f"asks for {MAX_POLICIES_PER_APP + extra} policies, more than the "
                f"{MAX_POLICIES_PER_APP} the beacon applies for one app: the last {extra} are "
                "refused",
            )
        )
    return kept, refusals


def build_policy_manifests(
    accepted: Sequence[AcceptedPolicy], *, dry_run: bool = False
) -> tuple[list[dict[str, Any]], list[Refusal]]:
    """The AuthorizationPolicy manifests of the accepted policies, saying who asked for each.

    A policy the library cannot build (a unit policy restricting more than ports) is refused.

    Args:
        accepted: the policies that passed the checks.
        dry_run: annotate the app policies (enforced by the waypoint) ``istio.io/dry-run: "true"``
            (see :func:`dry_runs`); unit policies are never dry-run.
    """
    manifests: list[dict[str, Any]] = []
    refusals: list[Refusal] = []
    for item in accepted:
        annotations = {REQUESTED_BY: item.app_name, RELATION_ID: str(item.relation_id)}
        if dry_run and dry_runs(item.policy):
            annotations[DRY_RUN_ANNOTATION] = "true"
        try:
            manifests.append(
                build_authorization_policy(
                    item.policy, labels={REQUESTED_BY: item.app_name}, annotations=annotations
                )
            )
        except Exception as error:  # MeshDataError, or anything else: that request's refusal
            refusals.append(Refusal(item.app_name, item.relation_id, str(error)))
    return manifests, refusals


def dry_runs(policy: MeshPolicy) -> bool:
    """Whether ``policy`` runs in dry-run when the beacon's ``authorization-mode`` is ``dry-run``.

    Only app policies do: the waypoint turns a dry-run policy into Envoy RBAC shadow rules, which
    pass every request and count what the policy would deny. Unit policies stay enforced, and so
    do the waypoint-access policy and the model operator's, because at L4 a dry run would deny:
    with ``auto-allow-waypoint-policy`` (on in istio-k8s) istiod gives ztunnel an enforced ALLOW
    from the waypoint on every pod behind it, and any enforced ALLOW on a pod refuses every source
    it does not name, so the sources a unit policy admits would be refused while it is dry-run.
    Nor would ztunnel report the would-be denials there: it logs "no allow policies match" only
    for a pod with no enforced ALLOW at all (and receives dry-run policies only when istiod runs
    with ``AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY``; ztunnel before 1.29 enforces them).
    """
    return policy.target_type is PolicyTargetType.app


def is_dry_run(manifest: Mapping[str, Any]) -> bool:
    """Whether an AuthorizationPolicy manifest carries Istio's dry-run annotation set to true.

    Istio reads the value with Go's ``strconv.ParseBool``: ``1``, ``t``, ``T``, ``TRUE``,
    ``true`` and ``True`` are true.
    """
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    return annotations.get(DRY_RUN_ANNOTATION) in ("1", "t", "T", "TRUE", "true", "True")


def with_mode(manifests: Iterable[Mapping[str, Any]], *, dry_run: bool) -> list[dict[str, Any]]:
    """The manifests, each app policy a related app asked for marked dry-run or not.

    Applied to the whole wanted set, including the policies a refused relation keeps from the
    cluster (:func:`last_accepted`), so that the mode holds for every app policy.
    """
    result: list[dict[str, Any]] = []
    for manifest in manifests:
        spec = cast("Mapping[str, Any]", manifest.get("spec") or {})
        if requested_by(manifest) is None or "targetRefs" not in spec:
            result.append(dict(manifest))
            continue
        metadata = dict(cast("Mapping[str, Any]", manifest.get("metadata") or {}))
        annotations = dict(cast("Mapping[str, str]", metadata.get("annotations") or {}))
        annotations.pop(DRY_RUN_ANNOTATION, None)
        if dry_run:
            annotations[DRY_RUN_ANNOTATION] = "true"
        metadata["annotations"] = annotations
        result.append({**manifest, "metadata": metadata})
    return result


def requested_by(manifest: Mapping[str, Any]) -> tuple[str, int] | None:
    """The app and relation id an AuthorizationPolicy manifest was built for, or ``None``."""
    annotations = (manifest.get("metadata") or {}).get("annotations") or {}
    app, relation_id = annotations.get(REQUESTED_BY), annotations.get(RELATION_ID)
    if not isinstance(app, str) or not isinstance(relation_id, str) or not relation_id.isdigit():
        return None
    return app, int(relation_id)


def as_written(manifest: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    """``manifest`` as the beacon writes it: ``action: ALLOW`` set, ``labels`` added.

    Written, the action is owned by the beacon's server-side apply: the next hook reverts a
    tampered one. The labels are those the deployed charm selects on (``adoption``).
    """
    metadata = dict(manifest.get("metadata") or {})
    metadata["labels"] = {**(metadata.get("labels") or {}), **labels}
    spec = dict(manifest.get("spec") or {})
    spec["action"] = "ALLOW"
    return {**manifest, "metadata": metadata, "spec": spec}


def last_accepted(
    deployed: Iterable[Mapping[str, Any]], requests: Iterable[tuple[str, int]]
) -> dict[int, list[dict[str, Any]]]:
    """The policies last applied for each of ``requests``, from the objects in the cluster.

    The record of what was last accepted is on the objects themselves (the app and relation id
    they were made for, see :func:`requested_by`): it survives a new leader and a refresh.

    Args:
        deployed: the beacon's AuthorizationPolicies as they are in the cluster.
        requests: ``(app, relation id)`` of the relations whose request is refused now.

    Returns:
        Per relation id, manifests that re-apply those objects unchanged (``action`` aside):
        only the metadata the beacon writes, and the spec as it is.
    """
    wanted = set(requests)
    kept: dict[int, list[dict[str, Any]]] = {}
    for item in deployed:
        asker = requested_by(item)
        if asker is None or asker not in wanted:
            continue
        metadata = cast("Mapping[str, Any]", item.get("metadata") or {})
        kept.setdefault(asker[1], []).append(
            {
                "apiVersion": item.get("apiVersion", "security.istio.io/v1"),
                "kind": item.get("kind", "AuthorizationPolicy"),
                "metadata": {
                    "name": metadata.get("name"),
                    "namespace": metadata.get("namespace"),
                    "labels": {REQUESTED_BY: asker[0]},
                    "annotations": {REQUESTED_BY: asker[0], RELATION_ID: str(asker[1])},
                },
                "spec": dict(cast("Mapping[str, Any]", item.get("spec") or {})),
            }
        )
    return kept


def kept_by_relation(listed: Iterable[Mapping[str, Any]], kept: Iterable[str]) -> dict[int, int]:
    """Per relation, how many of the ``kept`` objects (``namespace/name``) were made for it.

    The library keeps an object no longer wanted when the objects replacing it could not be
    written (its app would be left with no policy): for the relation whose new objects
    Kubernetes refused, those are its last accepted policies, still in force.

    Args:
        listed: the beacon's policies as the reconcile listed them.
        kept: what the reconcile kept (``ReconcileSummary.kept``).
    """
    wanted = set(kept)
    counts: dict[int, int] = {}
    for manifest in listed:
        metadata = manifest.get("metadata") or {}
        asker = requested_by(manifest)
        if asker is not None and f"{metadata.get('namespace')}/{metadata.get('name')}" in wanted:
            counts[asker[1]] = counts.get(asker[1], 0) + 1
    return counts


def waypoint_policy_name(app: str) -> str:
    """The name of the policy that lets the waypoint reach ``app``'s pods (stable, DNS-1123)."""
    name = f"{app}-from-waypoint"
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[: _MAX_NAME - len(digest) - 1].rstrip('-.')}-{digest}"


def waypoint_allow_policy(app: str, namespace: str, waypoint_principal: str) -> dict[str, Any]:
    """An L4 ALLOW from the waypoint's identity on ``app``'s pods, enforced by ztunnel.

    Traffic through ``app``'s Service reaches its pods from the waypoint. istio-k8s's
    ``auto-allow-waypoint-policy`` makes istiod allow that implicitly; this policy makes the same
    hold when the option is off, so that the app's own unit policies never cut the waypoint off
    and its pods never accept direct traffic that the waypoint's L7 rules would have refused.
    """
    return {
        "apiVersion": AUTHZ_API_VERSION,
        "kind": AUTHZ_KIND,
        "metadata": {
            "name": waypoint_policy_name(app),
            "namespace": namespace,
            "annotations": {WAYPOINT_ACCESS_FOR: app},
        },
        "spec": {
            "selector": {"matchLabels": {APP_NAME_LABEL: app}},
            "rules": [{"from": [{"source": {"principals": [waypoint_principal]}}]}],
        },
    }


#: The longest status message the beacon sets.
MAX_STATUS_LENGTH = 400


def holding_note(app: str, relation_id: int, held: Mapping[int, int]) -> str:
    """What stays in force for a relation whose request is refused, in words.

    Args:
        app: the app that asked.
        relation_id: its relation.
        held: per relation, how many policies last applied for it stay in force; a relation
            absent from it has none (its first request was refused).
    """
    count = held.get(relation_id)
    if count:
        return f"its last accepted policies ({count}) stay in force until its data is valid"
    return (
        f"{app} is not protected until its request is valid: it has no ALLOW policy, so Istio "
        "lets anyone reach it through its Service"
    )


def refusal_message(
    refusals: Sequence[Refusal],
    held: Mapping[int, int] | None = None,
    unprotected: Iterable[int] = (),
) -> str:
    """A status message naming the first refused request and counting the others.

    Bounded (:data:`MAX_STATUS_LENGTH`): the first reason is cut so that the count and what
    stays in force always show. An unprotected relation is named first, being the most urgent.

    Args:
        refusals: the refusals, in relation order.
        held: per relation, how many of its last accepted policies stay in force.
        unprotected: relations left with no policy at all (see :func:`holding_note`).
    """
    open_ids = set(unprotected)
    first = next((r for r in refusals if r.relation_id in open_ids), refusals[0])
    suffix = ""
    if first.relation_id in open_ids or (held and first.relation_id in held):
        suffix = f"; {holding_note(first.app_name, first.relation_id, held or {})}"
    if len(refusals) > 1:
        apps = sorted({refusal.app_name for refusal in refusals})
        named = ", ".join(apps[:3]) + (f" and {len(apps) - 3} other apps" if len(apps) > 3 else "")
        suffix += f" (and {len(refusals) - 1} more from {named}; see juju debug-log)"
    head = f"refused a request from {first.app_name}: "
    room = max(MAX_STATUS_LENGTH - len(head) - len(suffix), 20)
    return head + display_text(first.reason, room, quote=False) + suffix


def dry_run_message(count: int) -> str:
    """The status of a beacon whose ``authorization-mode`` is ``dry-run``."""
    policies = "policy" if count == 1 else "policies"
    return (
        f"dry-run: {count} {policies} observed, not enforced (waypoint; unit policies enforced); "
        "set authorization-mode=enforce when the would-be denials are understood"
    )


def log_refusals(
    refusals: Sequence[Refusal],
    logged: Mapping[str, str],
    held: Mapping[int, int] | None = None,
) -> dict[str, str]:
    """Log the refusals of each relation once per change: one line per relation that changed.

    Each line says what stays in force for that relation (:func:`holding_note`) when ``held``
    is given.

    Args:
        refusals: this reconcile's refusals.
        logged: per relation id, a digest of the refusals logged before.
        held: per relation, how many of its last accepted policies stay in force.

    Returns:
        The digests to remember for the next hook.
    """
    by_relation: dict[int, list[Refusal]] = {}
    for refusal in refusals:
        by_relation.setdefault(refusal.relation_id, []).append(refusal)
    digests: dict[str, str] = {}
    for relation_id, items in sorted(by_relation.items()):
        note = "" if held is None else holding_note(items[0].app_name, relation_id, held)
        text = "\n".join([*(item.reason for item in items), note])
        digest = hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()[:16]
        digests[str(relation_id)] = digest
        if logged.get(str(relation_id)) == digest:
            continue
        more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
        logger.warning(
            "refused %d policies requested by %s (relation %d): %s%s%s",
            len(items),
            items[0].app_name,
            relation_id,
            display_text(items[0].reason, 300, quote=False),
            more,
            f"; {note}" if note else "",
        )
    return digests
