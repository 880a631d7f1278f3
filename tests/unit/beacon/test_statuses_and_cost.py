"""Statuses for what is wrong (never a stuck hook), removal, and the cost of a reconcile."""

from __future__ import annotations

import dataclasses
import gc
from typing import Any

import pytest
import reconciler
from charm import IstioBeaconCharm
from conftest import (
    APP,
    MESH_LABELS,
    MODEL,
    WAYPOINT,
    KubeFactory,
    beacon_state,
    istio_runs_waypoint,
    mesh_relation,
    namespace_labels,
    policies_in,
    request_policies,
    seed_model_operator,
    seed_service,
    wire_policy,
)
from ops import testing
from support.fake_kube import AUTHORIZATION_POLICY_CRD, GATEWAY_CRD, FakeKubeServer


@pytest.mark.parametrize(
    ("crds", "missing"),
    [
        (set(), f"{GATEWAY_CRD}, {AUTHORIZATION_POLICY_CRD}"),
        ({GATEWAY_CRD}, AUTHORIZATION_POLICY_CRD),
        ({AUTHORIZATION_POLICY_CRD}, GATEWAY_CRD),
    ],
    ids=["no istio", "no AuthorizationPolicy CRD", "no Gateway CRD"],
)
def test_without_istio_it_says_to_deploy_it_and_still_publishes(
    ctx: testing.Context[IstioBeaconCharm], make_kube: KubeFactory, crds: set[str], missing: str
):
    kube = make_kube(crds=crds)
    relation = mesh_relation("receiver1", [wire_policy("sender", "receiver1")])

    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation]))

    assert out.unit_status == testing.BlockedStatus(
        f"deploy istio-k8s: Istio is missing ({missing} not installed)"
    )
    assert out.get_relation(relation.id).local_app_data["labels"]
    service = kube.get("services", MODEL, APP)
    assert service is not None
    waypoint_labels = {key: MESH_LABELS[key] for key in MESH_LABELS if "waypoint" in key}
    assert waypoint_labels.items() <= service["metadata"]["labels"].items()


def test_once_istio_arrives_the_next_event_converges(
    ctx: testing.Context[IstioBeaconCharm], make_kube: KubeFactory
):
    kube = make_kube(crds=set())
    relation = mesh_relation("receiver1", [wire_policy("sender", "receiver1")])
    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation]))
    kube.install_crd(GATEWAY_CRD)
    kube.install_crd(AUTHORIZATION_POLICY_CRD)
    istio_runs_waypoint(kube)

    out = ctx.run(ctx.on.update_status(), out)

    assert out.unit_status == testing.ActiveStatus()
    assert kube.get("gateways", MODEL, WAYPOINT) is not None
    assert len(request_policies(kube)) == 1


@pytest.mark.parametrize(
    ("forbidden", "refused_step"),
    [
        ({}, "label the namespace"),  # the first step: it decides what consumers are told
        ({"resource": "authorizationpolicies"}, "apply the AuthorizationPolicies"),
        ({"resource": "namespaces", "verb": "patch"}, "label the namespace"),
    ],
    ids=["nothing allowed", "no policies", "no namespace patch"],
)
def test_without_trust_it_says_how_to_trust_it(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    forbidden: dict[str, str],
    refused_step: str,
):
    kube.forbid(verb=forbidden.get("verb"), resource=forbidden.get("resource"))
    relation = mesh_relation("receiver1", [wire_policy("sender", "receiver1")])

    out = ctx.run(
        ctx.on.config_changed(),
        beacon_state(relations=[relation], config={"model-on-mesh": True}),
    )

    assert out.unit_status == testing.BlockedStatus(
        f"run `juju trust {APP} --scope=cluster` or bind the Role in charms/beacon/rbac "
        f"(docs/beacon.md): Kubernetes refused to {refused_step}"
    )


def test_another_kubernetes_error_is_reported_not_swallowed(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    kube.delete("statefulsets", MODEL, APP)
    istio_runs_waypoint(kube)

    out = ctx.run(ctx.on.config_changed(), beacon_state())

    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(
        "cannot label the beacon's pods and Service: 404 statefulsets.apps"
    )
    assert kube.get("gateways", MODEL, WAYPOINT) is not None  # the other steps still ran


def _full_setup(kube: FakeKubeServer, consumers: int) -> list[testing.Relation]:
    """Istio running the waypoint, Juju's model operator, and consumers with every kind of policy.

    Each consumer also asks for a policy on a second Service of its own, which it bound to the
    waypoint itself (so that Istio enforces it).
    """
    istio_runs_waypoint(kube, replicas=2)
    seed_model_operator(kube)
    relations: list[testing.Relation] = []
    for i in range(consumers):
        app = f"receiver{i}"
        seed_service(
            kube,
            f"{app}-admin",
            labels={"app.kubernetes.io/name": app, "istio.io/use-waypoint": WAYPOINT},
        )
        relations.append(
            mesh_relation(
                app,
                [
                    wire_policy("sender", app),
                    wire_policy("sender", app, target_service=f"{app}-admin"),
                    wire_policy("sender", app, target_type="unit"),
                ],
            )
        )
    return relations


@pytest.mark.parametrize("model_on_mesh", [False, True], ids=["per-app labels", "model on mesh"])
def test_a_reconcile_with_nothing_to_change_writes_nothing(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, model_on_mesh: bool
):
    relations = _full_setup(kube, consumers=3)
    config = {"model-on-mesh": model_on_mesh}
    state = beacon_state(relations=relations, config=config, planned_units=2)
    out = ctx.run(ctx.on.config_changed(), state)
    assert out.unit_status == testing.ActiveStatus()
    assert kube.write_count() > 0
    kube.reset_requests()

    out = ctx.run(ctx.on.update_status(), out)
    out = ctx.run(ctx.on.relation_changed(out.get_relation(relations[0].id)), out)

    assert kube.write_count() == 0, [r for r in kube.requests if r.verb != "get"]
    assert out.unit_status == testing.ActiveStatus()


def test_api_calls_grow_with_kinds_not_with_policies(
    ctx: testing.Context[IstioBeaconCharm], make_kube: KubeFactory
):
    counts: list[int] = []
    for consumers in (1, 6):
        kube = make_kube()
        relations = _full_setup(kube, consumers)
        state = beacon_state(relations=relations, planned_units=2)
        out = ctx.run(ctx.on.config_changed(), state)
        kube.reset_requests()
        ctx.run(ctx.on.update_status(), out)
        counts.append(len(kube.requests))

    assert counts[0] == counts[1]


def test_removing_the_application_deletes_everything_it_created(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": MODEL, "labels": {"team": "blue"}},
        }
    )
    relations = _full_setup(kube, consumers=2)
    out = ctx.run(
        ctx.on.config_changed(),
        beacon_state(relations=relations, config={"model-on-mesh": True}, planned_units=2),
    )
    # 3 requests each, the waypoint's access to each app, and the model operator's.
    assert len(policies_in(kube)) == 2 * 3 + 2 + 1

    out = ctx.run(ctx.on.remove(), dataclasses.replace(out, planned_units=0))

    assert kube.list("gateways", MODEL) == []
    assert kube.list("horizontalpodautoscalers", MODEL) == []
    assert policies_in(kube) == {}
    assert namespace_labels(kube) == {"team": "blue"}
    assert kube.get("configmaps", MODEL, f"juju-service-mesh-{APP}-labels") is None
    assert out.unit_status == testing.MaintenanceStatus("removed the mesh resources")


def test_removing_one_unit_only_scales_the_waypoint_down(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out = ctx.run(ctx.on.config_changed(), beacon_state(planned_units=3))

    ctx.run(ctx.on.remove(), dataclasses.replace(out, planned_units=2))

    autoscaler = kube.get("horizontalpodautoscalers", MODEL, WAYPOINT)
    assert autoscaler is not None
    assert autoscaler["spec"]["maxReplicas"] == 2
    assert kube.get("gateways", MODEL, WAYPOINT) is not None


def test_removal_without_istio_or_anything_to_delete_is_clean(
    ctx: testing.Context[IstioBeaconCharm], make_kube: KubeFactory
):
    make_kube(crds=set())

    out = ctx.run(ctx.on.remove(), beacon_state(planned_units=0))

    assert out.unit_status == testing.MaintenanceStatus("removed the mesh resources")


def test_the_cyclic_collector_is_paused_for_the_reconcile_only(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, monkeypatch: pytest.MonkeyPatch
):
    seen: list[bool] = []
    reconcile = reconciler.BeaconReconciler.reconcile

    def recording(self: reconciler.BeaconReconciler, *args: Any, **kwargs: Any) -> Any:
        seen.append(gc.isenabled())
        return reconcile(self, *args, **kwargs)

    monkeypatch.setattr(reconciler.BeaconReconciler, "reconcile", recording)
    relations = _full_setup(kube, consumers=2)
    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=relations, planned_units=1))
    assert out.unit_status == testing.ActiveStatus()
    assert seen == [False]
    assert gc.isenabled()

    # A reconcile that fails leaves the collector as it found it too.
    def failing(self: reconciler.BeaconReconciler, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(reconciler.BeaconReconciler, "reconcile", failing)
    with pytest.raises(testing.errors.UncaughtCharmError):
        ctx.run(ctx.on.config_changed(), out)
    assert gc.isenabled()
