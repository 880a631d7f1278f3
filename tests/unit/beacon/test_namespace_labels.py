"""Putting the whole model on the mesh: the namespace labels, and never someone else's."""

from __future__ import annotations

import pytest
from charm import IstioBeaconCharm
from conftest import MODEL, NAMESPACE_OWNER, OWNER, WAYPOINT, beacon_state, namespace_labels
from namespace_labels import owner_value, plan_namespace_labels
from ops import testing
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
