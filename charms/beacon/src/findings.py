"""What a reconcile found: the record the beacon's status and log are made from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from policies import Refusal
from policy_status import PolicyCondition

if TYPE_CHECKING:
    from waypoint import WaypointReadiness


@dataclass
class Findings:
    """What a reconcile found wrong; empty lists and ``None`` mean all is well.

    Attributes:
        missing_crds: custom resources that are not installed (Istio is missing).
        forbidden: what Kubernetes refused with 403 (the charm is not trusted).
        api_errors: other failures, with Kubernetes' message.
        namespace_conflict: why the namespace was left alone although wanted on the mesh.
        leaving_mesh: model-on-mesh is off, and the namespace stays on the mesh for these related
            apps until their own labels put them on it.
        refusals: requests that were not applied, with the reason.
        waypoint: the waypoint's readiness, when it could be checked.
        model_operator: why Juju's model operator cannot be kept reachable (model-on-mesh).
        policy_conditions: what Istio reports about each of the beacon's AuthorizationPolicies
            (see :mod:`policy_status`); those with ``enforced`` false are not enforced.
        unreachable: why Kubernetes could not be reached (no answer at all), or ``None``.
        refusals_logged: per relation, a digest of the refusals logged (see
            :func:`policies.log_refusals`), to log each change once.
        dry_run: ``<namespace>/<name>`` of the policies the beacon keeps in dry-run (observed by
            the waypoint, not enforced: ``authorization-mode=dry-run``).
        held: per relation whose request is refused, how many of the policies last applied
            for it stay in force (see ``BeaconReconciler._hold_last_accepted``).
        unprotected: the relations whose request is refused and that have no policy at all:
            their app has no ALLOW policy from the beacon, so Istio lets anyone reach it.
        adoption_note: what taking over the deployed beacon's objects left unchecked or
            untouched (outside this model), for the status of the hook that did it.
        root_namespace: why the beacon does nothing in Istio's root namespace, or ``None``.
        steady: what the next reconcile needs to tell that its policies are as this one left
            them (see ``BeaconReconciler._unchanged``); empty when this one cannot vouch for it.
    """

    missing_crds: list[str] = field(default_factory=list[str])
    forbidden: list[str] = field(default_factory=list[str])
    api_errors: list[str] = field(default_factory=list[str])
    namespace_conflict: str | None = None
    leaving_mesh: list[str] = field(default_factory=list[str])
    refusals: list[Refusal] = field(default_factory=list[Refusal])
    waypoint: WaypointReadiness | None = None
    model_operator: str | None = None
    policy_conditions: list[PolicyCondition] = field(default_factory=list[PolicyCondition])
    unreachable: str | None = None
    refusals_logged: dict[str, str] = field(default_factory=dict[str, str])
    dry_run: list[str] = field(default_factory=list[str])
    held: dict[int, int] = field(default_factory=dict[int, int])
    unprotected: list[int] = field(default_factory=list[int])
    adoption_note: str | None = None
    root_namespace: str | None = None
    steady: str = ""

    @property
    def unenforced(self) -> list[PolicyCondition]:
        """The conditions by which Istio says it does not enforce a policy (as it should)."""
        return [c for c in self.policy_conditions if not c.enforced and not c.expected]
