"""What the integration tests assert about the cluster, as functions of a lightkube client.

Each function reads the cluster once and raises AssertionError, naming what differs, when the
beacon's (or a consumer's) objects are not as expected; the tests retry them with `eventually`.
They take the client and the names as arguments, and never Juju, so that the same assertions also
run, outside a Juju cluster, against the objects the packed charms write on a real API server
(`tests/demo/test_demo.py`): what they expect is then what our own charms really produce.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import lightkube
import mesh_cluster
from lightkube.generic_resource import GenericNamespacedResource


def assert_waypoint_gateway(kube: lightkube.Client, model: str, beacon: str) -> None:
    """The beacon's waypoint Gateway: for Services, owned, `istio-waypoint`, one HBONE listener.

    Routes may attach from the Gateway's own namespace only (`allowedRoutes: Same`): the
    waypoint serves the beacon's model and no other.
    """
    name = mesh_cluster.waypoint_name(model, beacon)
    gateway = mesh_cluster.get_or_none(kube, mesh_cluster.Gateway, name, model)
    assert gateway is not None, f"no Gateway {name} in {model}"
    labels = mesh_cluster.labels_of(gateway)
    assert labels.get("istio.io/waypoint-for") == "service", labels
    assert labels.get(mesh_cluster.MANAGED_BY) == mesh_cluster.owner(model, beacon), labels
    spec = gateway["spec"]
    assert spec["gatewayClassName"] == "istio-waypoint", spec
    listeners = spec["listeners"]
    assert len(listeners) == 1, listeners
    listener = listeners[0]
    assert (listener["name"], listener["port"], listener["protocol"]) == ("mesh", 15008, "HBONE")
    assert listener["allowedRoutes"]["namespaces"]["from"] == "Same", listener


def assert_waypoint_autoscaler(
    kube: lightkube.Client, model: str, beacon: str, replicas: int
) -> None:
    """The beacon's HPA pins the waypoint Deployment at `replicas` (min = max), owned."""
    name = mesh_cluster.waypoint_name(model, beacon)
    hpa = mesh_cluster.hpa_or_none(kube, name, model)
    assert hpa is not None, f"no HorizontalPodAutoscaler {name} in {model}"
    assert hpa.spec is not None
    owner = mesh_cluster.labels_of(hpa).get(mesh_cluster.MANAGED_BY)
    assert owner == mesh_cluster.owner(model, beacon), f"HPA {name} owned by {owner!r}"
    assert (hpa.spec.minReplicas, hpa.spec.maxReplicas) == (replicas, replicas), hpa.spec
    target = hpa.spec.scaleTargetRef
    assert (target.apiVersion, target.kind, target.name) == ("apps/v1", "Deployment", name)


def is_waypoint_hop(policy: GenericNamespacedResource, app: str) -> bool:
    """Whether `policy` is the beacon's own `<app>-from-waypoint` (the waypoint's L4 hop).

    That policy is the beacon's, not a request of `app`: it carries no `requested-by` label but
    the `waypoint-access-for` annotation naming `app`.
    """
    metadata = policy.metadata
    annotations = dict((metadata.annotations if metadata else None) or {})
    return annotations.get(mesh_cluster.WAYPOINT_ACCESS_FOR) == app


def _summaries(policies: Iterable[GenericNamespacedResource]) -> list[str]:
    return [mesh_cluster.policy_summary(policy) for policy in policies]


def assert_waypoint_hop(kube: lightkube.Client, model: str, beacon: str, app: str) -> None:
    """Exactly one policy lets the beacon's waypoint (and nothing else) reach `app`'s pods."""
    waypoint = mesh_cluster.principal(model, mesh_cluster.waypoint_name(model, beacon))
    policies = mesh_cluster.policies_for(kube, model, app)
    hops = [policy for policy in policies if is_waypoint_hop(policy, app)]
    assert len(hops) == 1, f"{len(hops)} waypoint hops for {app}: {_summaries(policies)}"
    [hop] = hops
    assert mesh_cluster.policy_principals(hop) == {waypoint}, mesh_cluster.policy_summary(hop)
    owner = mesh_cluster.labels_of(hop).get(mesh_cluster.MANAGED_BY)
    assert owner == mesh_cluster.owner(model, beacon), mesh_cluster.policy_summary(hop)


def assert_policies_for_target(
    kube: lightkube.Client,
    model: str,
    beacon: str,
    target: str,
    *,
    allowed: Iterable[str],
    refused: Iterable[str] = (),
) -> None:
    """The policies that apply to `target`: the beacon's, each its request or its waypoint hop.

    Every policy selecting `target` carries the beacon's ownership label; each is either one of
    `target`'s requests (`requested-by: <target>`) or the beacon's own waypoint hop for `target`.
    Together they allow every principal in `allowed` and none in `refused`.
    """
    policies = mesh_cluster.policies_for(kube, model, target)
    summary = _summaries(policies)
    assert policies, f"no policy applies to {target} in {model}"
    owner = mesh_cluster.owner(model, beacon)
    for policy in policies:
        labels = mesh_cluster.labels_of(policy)
        assert labels.get(mesh_cluster.MANAGED_BY) == owner, summary
        if not is_waypoint_hop(policy, target):
            assert labels.get(mesh_cluster.REQUESTED_BY) == target, summary
    principals = set().union(*(mesh_cluster.policy_principals(p) for p in policies))
    missing = set(allowed) - principals
    assert not missing, f"{target}: no policy allows {sorted(missing)}: {summary}"
    leaked = set(refused) & principals
    assert not leaked, f"{target}: policies allow {sorted(leaked)}: {summary}"


def assert_no_policies_for(kube: lightkube.Client, model: str, beacon: str, target: str) -> None:
    """No policy applies to `target`, and the beacon owns none in the model."""
    policies = mesh_cluster.policies_for(kube, model, target)
    assert policies == [], f"policies for {target} remain: {_summaries(policies)}"
    owned = mesh_cluster.owned_policies(kube, model, beacon)
    assert owned == [], _summaries(owned)


def assert_namespace_mesh_labels(
    kube: lightkube.Client, model: str, expected: Mapping[str, str]
) -> None:
    """The namespace's mesh labels (ownership label included) are exactly `expected`."""
    labels = mesh_cluster.namespace_labels(kube, model)
    assert mesh_cluster.mesh_labels_of(labels) == dict(expected), f"namespace {model}: {labels}"


def assert_consumer_mesh_labels(
    kube: lightkube.Client, model: str, app: str, published: Mapping[str, str]
) -> None:
    """`app` carries the `published` labels where Istio reads each, and no other mesh label.

    The data-plane mode on its pod template, the waypoint binding on its Service (an empty
    `published`: none of them anywhere).
    """
    template = mesh_cluster.pod_template_labels(kube, app, model)
    service = mesh_cluster.service_labels(kube, app, model)
    on_pods = mesh_cluster.on_pod_template(published)
    assert mesh_cluster.mesh_labels_of(template) == on_pods, f"{app} pod template: {template}"
    on_service = mesh_cluster.on_service(published)
    assert mesh_cluster.mesh_labels_of(service) == on_service, f"{app} Service: {service}"


def assert_model_operator_off_the_waypoint(kube: lightkube.Client, model: str) -> None:
    """With the model on the mesh: the model operator has its allow policy and skips the waypoint.

    The policy selects what Juju's `modeloperator` Service selects, and that Service is labelled
    `istio.io/use-waypoint: none`, so the controller's traffic goes straight to its pod.
    """
    assert mesh_cluster.model_operator_policies(kube, model), "no model-operator allow policy"
    labels = mesh_cluster.service_labels(kube, mesh_cluster.MODEL_OPERATOR_SERVICE, model)
    assert labels.get(mesh_cluster.USE_WAYPOINT) == "none", labels
