"""From a charm's declarations to the AuthorizationPolicies the beacon applies, the production way.

Consumer side: the library's ``build_mesh_policies`` over the charm's relations, then the wire
form. Provider side: ``parse_policies`` of that JSON, the beacon's own checks
(``policies.check_requests`` with the waypoint binding), its manifests (``build_policy_manifests``,
the waypoint-access policy of each related app, the model-operator policy) and its ownership
labels, merged the way ``PolicyResourceManager`` merges them (as ``reconciler`` does).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    CMRData,
    MeshPolicy,
    RelationRequest,
    UnitPolicy,
    build_mesh_policies,
    parse_policies,
)
from kube_names import APP_NAME_LABEL
from model_operator import model_operator_policy
from ownership import ownership_labels
from policies import (
    Refusal,
    WaypointBinding,
    build_policy_manifests,
    check_requests,
    waypoint_allow_policy,
)
from waypoint import waypoint_name, waypoint_principal

BEACON = "istio-beacon-k8s"
#: The labels of Juju's model operator pods (Juju 3.6), which its Service selects.
MODEL_OPERATOR_SELECTOR = {
    "operator.juju.is/name": "modeloperator",
    "operator.juju.is/target": "model",
}


@dataclass
class Consumer:
    """A consumer charm: its declarations and who is related to each of its relations.

    Attributes:
        app: the app name.
        declarations: its AppPolicy/UnitPolicy declarations.
        related: relation name to the remote apps (their name in this model).
        cmr: remote app alias to what it announced over ``cross_model_mesh``.
        raw_wire: databag text to publish instead of the library's (hostile or foreign data).
    """

    app: str
    declarations: Sequence[AppPolicy | UnitPolicy]
    related: Mapping[str, Sequence[str]]
    cmr: Mapping[str, CMRData] = field(default_factory=dict[str, CMRData])
    raw_wire: str | None = None

    def mesh_policies(self, model: str) -> list[MeshPolicy]:
        """What the library publishes for this consumer in ``model``."""
        relations = {
            name: [SimpleNamespace(app=SimpleNamespace(name=remote)) for remote in remotes]
            for name, remotes in self.related.items()
        }
        for declaration in self.declarations:
            relations.setdefault(declaration.relation, [])
        return build_mesh_policies(
            cast("Any", relations), self.app, model, self.declarations, dict(self.cmr)
        )

    def wire(self, model: str) -> str:
        """The ``policies`` value of its databag."""
        if self.raw_wire is not None:
            return self.raw_wire
        return json.dumps([policy.to_dict() for policy in self.mesh_policies(model)])


def beacon_manifests(
    model: str,
    consumers: Sequence[Consumer],
    services: Mapping[str, Mapping[str, str]] | None = None,
    model_on_mesh: bool = True,
) -> tuple[list[dict[str, Any]], list[Refusal]]:
    """The AuthorizationPolicies the beacon in ``model`` applies for ``consumers``, and refusals.

    Args:
        model: the model (namespace).
        consumers: the related consumer charms.
        services: the namespace's Services, name to labels (default: one per consumer, as Juju
            creates them).
        model_on_mesh: whether the beacon labels the namespace (every Service bound to the
            waypoint) and adds the model-operator policy.
    """
    if services is None:
        services = {c.app: {APP_NAME_LABEL: c.app} for c in consumers}
    requests: list[RelationRequest] = []
    for relation_id, consumer in enumerate(consumers, start=1):
        try:
            parsed = parse_policies(consumer.wire(model))
            requests.append(RelationRequest(relation_id, consumer.app, parsed))
        except ValueError as error:
            requests.append(RelationRequest(relation_id, consumer.app, [], str(error)))
    waypoint = waypoint_name(model, BEACON)
    binding = WaypointBinding(waypoint, namespace_bound=model_on_mesh)
    accepted, refusals = check_requests(requests, model, services, binding)
    manifests, unbuildable = build_policy_manifests(accepted)
    principal = waypoint_principal(model, waypoint)
    related = sorted({request.app_name for request in requests if request.app_name})
    manifests.extend(waypoint_allow_policy(app, model, principal) for app in related)
    if model_on_mesh:
        manifests.append(model_operator_policy(model, MODEL_OPERATOR_SELECTOR))
    owner = ownership_labels(model, BEACON)
    for manifest in manifests:
        metadata = manifest["metadata"]
        metadata["labels"] = {**(metadata.get("labels") or {}), **owner}
    return manifests, refusals + unbuildable
