"""Putting the whole model on the mesh: the namespace labels, and never someone else's."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from charm import IstioBeaconCharm
from conftest import (
    MODEL,
    NAMESPACE_OWNER,
    OWNER,
    WAYPOINT,
    beacon_state,
    mesh_relation,
    namespace_labels,
    seed_model_operator,
    wire_policy,
)
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import Service
from lightkube.types import PatchType
from namespace_labels import apps_not_on_mesh_alone, owner_value, plan_namespace_labels
from ops import testing
from support import juju_seed
from support.fake_kube import FakeKubeServer

ON_MESH = {
    "istio.io/dataplane-mode": "ambient",
    "istio.io/use-waypoint": WAYPOINT,
    NAMESPACE_OWNER: OWNER,
}


def _label_namespace(kube: FakeKubeServer, labels: dict[str, str]) -> None:
    kube.put(
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MODEL, "labels": labels}}
    )


def test_owner_value_is_a_valid_label_value():
    assert owner_value("prod", "istio-beacon-k8s") == "prod.istio-beacon-k8s"
    long = owner_value("m" * 40, "a" * 40)
    assert len(long) == 63
    assert long != owner_value("m" * 40, "a" * 39 + "b")


def test_plan_leaves_a_namespace_it_does_not_own_alone_when_off():
    plan = plan_namespace_labels(
        MODEL,
        {"istio.io/dataplane-mode": "ambient"},
        on_mesh=False,
        waypoint=WAYPOINT,
        owner=OWNER,
    )
    assert (plan.patch, plan.conflict) == ({}, None)


def test_model_on_mesh_labels_the_namespace(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    _label_namespace(kube, {"team": "blue"})

    ctx.run(ctx.on.config_changed(), beacon_state(config={"model-on-mesh": True}))

    assert namespace_labels(kube) == {"team": "blue", **ON_MESH}


def test_switching_model_on_mesh_off_removes_exactly_its_labels(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    _label_namespace(kube, {"team": "blue"})
    ctx.run(ctx.on.config_changed(), beacon_state(config={"model-on-mesh": True}))

    ctx.run(ctx.on.config_changed(), beacon_state(config={"model-on-mesh": False}))

    assert namespace_labels(kube) == {"team": "blue"}


def _put_own_mesh_labels(kube: FakeKubeServer, app: str) -> None:
    """What a consumer does with the labels the beacon publishes (the library's auto-join)."""
    client = kube.client()
    template = {
        "spec": {"template": {"metadata": {"labels": {"istio.io/dataplane-mode": "ambient"}}}}
    }
    client.patch(StatefulSet, app, template, namespace=MODEL, patch_type=PatchType.MERGE)
    service = {"metadata": {"labels": {"istio.io/use-waypoint": WAYPOINT}}}
    client.patch(Service, app, service, namespace=MODEL, patch_type=PatchType.MERGE)


def test_switching_off_keeps_the_model_on_the_mesh_until_related_apps_are_on_it_alone(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """Taking the namespace off first would take the apps off the mesh: policies unenforced."""
    juju_seed.seed_app(kube.client(), "receiver", MODEL)
    seed_model_operator(kube)
    relation = mesh_relation("receiver", [wire_policy("sender", "receiver")])
    on = beacon_state(relations=[relation], config={"model-on-mesh": True})
    ctx.run(ctx.on.config_changed(), on)
    assert namespace_labels(kube) == ON_MESH

    off = beacon_state(relations=[relation], config={"model-on-mesh": False})
    out = ctx.run(ctx.on.config_changed(), off)
    assert namespace_labels(kube) == ON_MESH
    assert out.unit_status == testing.WaitingStatus(
        "model-on-mesh is off: keeping the model on the mesh until receiver carries its own "
        "mesh labels"
    )
    # The related app is told to put its own labels, and its policies stay as they were.
    published = out.get_relation(relation.id).local_app_data["labels"]
    assert '"istio.io/dataplane-mode": "ambient"' in published
    assert "allow-juju-model-operator" in {
        item["metadata"]["name"] for item in kube.list("authorizationpolicies", MODEL)
    }

    _put_own_mesh_labels(kube, "receiver")
    out = ctx.run(
        ctx.on.update_status(), dataclasses.replace(out, config={"model-on-mesh": False})
    )
    assert namespace_labels(kube) == {}
    assert "model-on-mesh is off" not in out.unit_status.message


def test_which_apps_are_not_on_the_mesh_by_themselves():
    def statefulset(app: str, **labels: str) -> dict[str, Any]:
        return juju_seed.statefulset_manifest(app, MODEL, **labels)

    def pod(app: str, **labels: str) -> dict[str, Any]:
        return {
            "metadata": {"name": f"{app}-0", "labels": {"app.kubernetes.io/name": app, **labels}}
        }

    def service(app: str, **labels: str) -> dict[str, Any]:
        return {"metadata": {"name": app, "labels": labels}}

    ambient = {"istio.io/dataplane-mode": "ambient"}
    bound = {"istio.io/use-waypoint": WAYPOINT}
    statefulsets = [statefulset(a, **ambient) for a in ("done", "old-pod", "no-waypoint")]
    statefulsets.append(statefulset("template"))
    pods = [pod("done", **ambient), pod("old-pod"), pod("no-waypoint", **ambient)]
    services = [service("done", **bound), service("old-pod", **bound), service("no-waypoint")]
    services.append(service("template", **bound))
    apps = ["done", "old-pod", "no-waypoint", "template", "no-statefulset"]
    assert apps_not_on_mesh_alone(apps, statefulsets, pods, services, WAYPOINT) == [
        "old-pod",
        "no-waypoint",
        "template",
    ]


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (
            {"istio.io/dataplane-mode": "ambient"},
            f"namespace {MODEL} already has istio.io/dataplane-mode set by someone else",
        ),
        (
            {**ON_MESH, NAMESPACE_OWNER: "other-model.other-beacon"},
            f"namespace {MODEL} is put on the mesh by other-model.other-beacon",
        ),
    ],
    ids=["unowned mesh labels", "another beacon"],
)
def test_never_takes_over_mesh_labels_of_another_owner(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    labels: dict[str, str],
    reason: str,
):
    _label_namespace(kube, labels)

    out = ctx.run(ctx.on.config_changed(), beacon_state(config={"model-on-mesh": True}))

    assert namespace_labels(kube) == labels
    assert out.unit_status == testing.BlockedStatus(
        f"model-on-mesh: {reason}; leaving its labels alone, so related apps keep their own "
        "mesh labels"
    )

    out = ctx.run(ctx.on.config_changed(), beacon_state(config={"model-on-mesh": False}))

    assert namespace_labels(kube) == labels
    assert not isinstance(out.unit_status, testing.BlockedStatus)
