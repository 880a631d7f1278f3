"""The last accepted request holds: data that cannot be used never widens access.

In Istio's model an ALLOW policy restricts its workload: deleting a relation's policies because
its new data is refused would let anyone reach the app. These tests drive the charm through
ops.testing against the fake API server (the k8s tier runs the same steps against the real one,
tests/k8s/test_last_accepted.py).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import MAX_POLICIES_BYTES
from conftest import (
    APP,
    MODEL,
    beacon_state,
    istio_runs_waypoint,
    mesh_relation,
    request_policies,
    wire_policy,
)
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType
from ops import testing
from support import juju_seed
from support.fake_kube import FakeKubeServer

AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)

RECEIVER = "receiver"
VALID = [wire_policy("sender", RECEIVER)]
REPLACEMENT = [wire_policy("other-sender", RECEIVER)]

#: Data the beacon cannot use, each for another reason: unreadable, a refused shape, a limit.
INVALID: dict[str, str] = {
    "garbage": "[" * 1000 + "]" * 1000,
    "schema": json.dumps([{**wire_policy("sender", RECEIVER), "target_type": "pod"}]),
    "size": json.dumps([wire_policy("sender", RECEIVER, endpoints=[])] * 10)
    + " " * MAX_POLICIES_BYTES,
    "targets-another-app": json.dumps([wire_policy("sender", "victim")]),
}


def _with_data(state: testing.State, relation: testing.Relation, raw: str) -> testing.State:
    changed = dataclasses.replace(relation, remote_app_data={"policies": raw})
    others = [r for r in state.relations if r.id != relation.id]
    return dataclasses.replace(state, relations=[*others, changed])


def _change(
    ctx: testing.Context[IstioBeaconCharm],
    state: testing.State,
    relation: testing.Relation,
    raw: str,
) -> testing.State:
    """Run relation-changed after the app wrote ``raw`` as its ``policies``."""
    state = _with_data(state, relation, raw)
    return ctx.run(ctx.on.relation_changed(state.get_relation(relation.id)), state)


def _objects(kube: FakeKubeServer) -> dict[str, dict[str, Any]]:
    """The receiver's request policies: name to spec."""
    return {name: policy["spec"] for name, policy in request_policies(kube).items()}


def _applied(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
) -> tuple[testing.State, testing.Relation, dict[str, Any]]:
    istio_runs_waypoint(kube)
    relation = mesh_relation(RECEIVER, VALID)
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[relation]))
    before = _objects(kube)
    assert len(before) == 1
    applied = out.get_relation(relation.id)
    assert isinstance(applied, testing.Relation)
    return out, applied, before


@pytest.mark.parametrize("raw", list(INVALID.values()), ids=list(INVALID))
def test_invalid_data_keeps_the_last_accepted_policies_until_valid_data_replaces_them(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, raw: str
):
    out, relation, before = _applied(ctx, kube)

    out = _change(ctx, out, relation, raw)

    assert _objects(kube) == before
    assert isinstance(out.unit_status, testing.BlockedStatus)
    message = out.unit_status.message
    assert message.startswith(f"refused a request from {RECEIVER}: ")
    assert "its last accepted policies (1) stay in force" in message
    warnings = [line.message for line in ctx.juju_log if line.level == "WARNING"]
    assert any(
        RECEIVER in line and "its last accepted policies (1) stay in force" in line
        for line in warnings
    ), warnings

    out = _change(ctx, out, relation, json.dumps(REPLACEMENT))

    after = _objects(kube)
    assert len(after) == 1
    assert set(after) != set(before)
    [spec] = after.values()
    assert spec["rules"][0]["from"][0]["source"]["principals"] == [
        f"cluster.local/ns/{MODEL}/sa/other-sender"
    ]
    assert out.unit_status == testing.ActiveStatus()


def test_relation_broken_while_invalid_removes_them(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out, relation, _ = _applied(ctx, kube)
    out = _change(ctx, out, relation, INVALID["garbage"])
    assert len(_objects(kube)) == 1

    out = ctx.run(ctx.on.relation_broken(out.get_relation(relation.id)), out)

    assert _objects(kube) == {}
    assert out.unit_status == testing.ActiveStatus()


def test_the_app_leaving_while_invalid_removes_them(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """After relation-broken the relation is gone from the model: nothing keeps its policies."""
    out, relation, _ = _applied(ctx, kube)
    out = _change(ctx, out, relation, INVALID["schema"])
    ctx.run(ctx.on.update_status(), dataclasses.replace(out, relations=[]))
    assert _objects(kube) == {}


@pytest.mark.parametrize("event", ["leader_elected", "upgrade_charm"])
def test_a_new_leader_or_a_refresh_keeps_them(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, event: str
):
    """The record is on the objects: a unit with no stored state at all still keeps them."""
    out, relation, before = _applied(ctx, kube)
    _change(ctx, out, relation, INVALID["garbage"])

    fresh_ctx = testing.Context(IstioBeaconCharm, app_name=APP)
    stale = dataclasses.replace(relation, remote_app_data={"policies": INVALID["garbage"]})
    fresh = beacon_state(relations=[stale])
    out = fresh_ctx.run(getattr(fresh_ctx.on, event)(), fresh)

    assert _objects(kube) == before
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "stay in force" in out.unit_status.message


def test_switching_management_off_removes_them(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out, relation, _ = _applied(ctx, kube)
    out = _change(ctx, out, relation, INVALID["garbage"])
    assert len(_objects(kube)) == 1

    out = ctx.run(
        ctx.on.config_changed(),
        dataclasses.replace(out, config={"manage-authorization-policies": False}),
    )

    assert _objects(kube) == {}


def test_a_first_request_that_is_refused_is_reported_unprotected(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    relation = mesh_relation(RECEIVER, INVALID["garbage"])
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[relation]))

    assert _objects(kube) == {}
    assert isinstance(out.unit_status, testing.BlockedStatus)
    message = out.unit_status.message
    assert message.startswith(f"refused a request from {RECEIVER}: ")
    assert f"{RECEIVER} is not protected until its request is valid" in message
    assert "Istio lets anyone reach it" in message


def test_the_unprotected_relation_is_named_first(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """Among several refusals, the one that leaves an app open is the one the status names."""
    held = mesh_relation("aaa-held", [wire_policy("sender", "aaa-held")])
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[held]))
    out = _change(ctx, out, held, INVALID["garbage"])
    assert "aaa-held" in out.unit_status.message
    fresh = mesh_relation("zzz-open", INVALID["garbage"])
    state = dataclasses.replace(out, relations=[*out.relations, fresh])
    out = ctx.run(ctx.on.relation_changed(fresh), state)
    assert "1 more from aaa-held, zzz-open" in out.unit_status.message
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("refused a request from zzz-open: ")
    assert "zzz-open is not protected" in out.unit_status.message


def test_a_tampered_action_is_reverted_by_the_next_hook(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out, _, before = _applied(ctx, kube)
    [(name, spec)] = before.items()
    assert spec["action"] == "ALLOW"
    kube.client(field_manager="intruder").patch(
        AuthorizationPolicy,
        name,
        {"spec": {"action": "DENY"}},
        namespace=MODEL,
        patch_type=PatchType.MERGE,
    )
    assert _objects(kube)[name]["action"] == "DENY"

    ctx.run(ctx.on.update_status(), out)

    assert _objects(kube)[name]["action"] == "ALLOW"


def _access_map(ctx: testing.Context[IstioBeaconCharm], state: testing.State) -> dict[str, Any]:
    ctx.run(ctx.on.action("access-map", params={"format": "json"}), state)
    assert ctx.action_results is not None
    return json.loads(ctx.action_results["map"])


def test_access_map_lists_a_first_refused_request_as_open_with_the_reason(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    relation = mesh_relation(RECEIVER, INVALID["garbage"])
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[relation]))

    [refused] = _access_map(ctx, out)["refused"]

    assert refused["app"] == RECEIVER
    assert refused["reason"].startswith("invalid data: ")
    assert refused["in_force"].startswith(
        f"{RECEIVER} is not protected until its request is valid"
    )
    ctx.run(ctx.on.action("access-map"), out)
    assert ctx.action_results is not None
    assert f"{RECEIVER}: {RECEIVER} is not protected" in ctx.action_results["map"]


def test_access_map_says_the_last_accepted_policies_hold(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    for app in (RECEIVER, "sender"):
        juju_seed.seed_app(kube.client(), app, MODEL)
    out, relation, _ = _applied(ctx, kube)
    out = _change(ctx, out, relation, INVALID["targets-another-app"])

    access = _access_map(ctx, out)

    [refused] = access["refused"]
    assert refused["in_force"] == (
        "its last accepted policies (1) stay in force until its data is valid"
    )
    assert access["pending"] == []
    granted = access["grants"]
    assert [
        g["source"] for g in granted if g["requested_by"] == RECEIVER and not g["waypoint_access"]
    ] == ["sender"]
