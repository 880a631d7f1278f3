"""What the beacon publishes to consumers, and what its non-leader units do."""

from __future__ import annotations

import dataclasses
import json

import pytest
from beacon_config import BeaconConfig
from charm import IstioBeaconCharm
from conftest import MESH_LABELS, beacon_state, istio_runs_waypoint, mesh_relation
from ops import testing
from support.fake_kube import FakeKubeServer


@pytest.mark.parametrize(
    ("config", "labels"),
    [({}, MESH_LABELS), ({"model-on-mesh": True}, {})],
    ids=["per-app labels", "model on mesh"],
)
def test_publishes_labels_and_mesh_type_to_every_consumer(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    config: dict[str, bool],
    labels: dict[str, str],
):
    one, two = mesh_relation("receiver1", []), mesh_relation("receiver2", None)

    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[one, two], config=config))

    for relation in (one, two):
        databag = out.get_relation(relation.id).local_app_data
        assert json.loads(databag["labels"]) == labels
        assert databag["mesh_type"] == '"istio"'


def test_switching_model_on_mesh_republishes(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    relation = mesh_relation("receiver1", [])
    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation]))

    out = ctx.run(
        ctx.on.config_changed(),
        dataclasses.replace(out, config={"model-on-mesh": True}),
    )

    assert json.loads(out.get_relation(relation.id).local_app_data["labels"]) == {}


def test_non_leader_stands_by_and_touches_nothing(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    relation = mesh_relation("receiver1", [])
    kube.reset_requests()

    out = ctx.run(ctx.on.update_status(), beacon_state(leader=False, relations=[relation]))

    assert out.unit_status == testing.ActiveStatus("standby")
    assert out.get_relation(relation.id).local_app_data == {}
    assert kube.requests == []


def test_leader_is_active_when_all_is_well(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    istio_runs_waypoint(kube)

    out = ctx.run(ctx.on.update_status(), beacon_state())

    assert out.unit_status == testing.ActiveStatus()


def test_config_is_typed_and_validated_once():
    assert BeaconConfig() == BeaconConfig(model_on_mesh=False, manage_authorization_policies=True)
    with pytest.raises(ValueError, match="model-on-mesh must be true or false"):
        BeaconConfig(model_on_mesh="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="manage-authorization-policies"):
        BeaconConfig(manage_authorization_policies=1)  # type: ignore[arg-type]
