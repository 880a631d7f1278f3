"""A reconcile in which nothing changed skips the policy work, and only then.

The previous reconcile vouches that every policy was as wanted and remembers a digest of the
inputs and each policy's ``resourceVersion`` (``Findings.steady``). Whatever changes, in the
relation data, the config, the code or the cluster (drift, Istio's status), the full reconcile
runs: these tests change each and check the outcome, and count the parses to see which path ran.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pytest
import reconciler
import steady_skip
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0 import service_mesh
from conftest import (
    MODEL,
    beacon_state,
    istio_runs_waypoint,
    mesh_relation,
    policies_in,
    request_policies,
    wire_policy,
)
from ops import testing
from support.fake_kube import FakeKubeServer

DRY_RUN = "istio.io/dry-run"
APP = "receiver"  # the related app that asks "sender" may reach it


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Each ``policies`` text the library parses, in order."""
    seen: list[str] = []
    parse = service_mesh.parse_policies

    def counting(raw: str) -> list[service_mesh.MeshPolicy]:
        seen.append(raw)
        return parse(raw)

    monkeypatch.setattr(service_mesh, "parse_policies", counting)
    return seen


def _steady(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, parses: list[str]
) -> tuple[testing.State, testing.Relation]:
    """Two hooks: the first writes, the second finds everything as wanted and vouches for it."""
    istio_runs_waypoint(kube)
    relation = mesh_relation(APP, [wire_policy("sender", APP)])
    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation]))
    out = ctx.run(ctx.on.update_status(), out)
    assert out.unit_status == testing.ActiveStatus()
    parses.clear()
    kube.reset_requests()
    return out, relation


def _owned(kube: FakeKubeServer) -> dict[str, tuple[Any, Any, Any]]:
    """What matters of each policy: spec, labels, annotations."""
    return {
        name: (
            policy["spec"],
            policy["metadata"].get("labels"),
            policy["metadata"].get("annotations"),
        )
        for name, policy in policies_in(kube).items()
    }


def test_a_hook_with_nothing_changed_skips_the_policy_work(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, parses: list[str]
):
    out, _ = _steady(ctx, kube, parses)
    before = _owned(kube)

    for event in (ctx.on.update_status(), ctx.on.config_changed()):
        out = ctx.run(event, out)
        assert out.unit_status == testing.ActiveStatus()

    assert parses == []
    assert kube.write_count() == 0
    assert _owned(kube) == before


def _deny(kube: FakeKubeServer, name: str) -> None:
    policy = kube.get("authorizationpolicies", MODEL, name)
    assert policy is not None
    policy["spec"]["action"] = "DENY"
    kube.put(policy, field_manager="intruder")


def _mark_dry_run(kube: FakeKubeServer, name: str) -> None:
    policy = kube.get("authorizationpolicies", MODEL, name)
    assert policy is not None
    policy["metadata"].setdefault("annotations", {})[DRY_RUN] = "true"
    kube.put(policy, field_manager="intruder")


def _delete(kube: FakeKubeServer, name: str) -> None:
    kube.client(field_manager="intruder").delete(
        reconciler.authorization_policy_resource(), name, namespace=MODEL
    )


@pytest.mark.parametrize(
    "tamper",
    [_deny, _mark_dry_run, _delete],
    ids=["patched to DENY", "given a dry-run mark", "deleted"],
)
def test_drift_after_a_steady_hook_is_reverted_by_the_next_hook(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    parses: list[str],
    tamper: Callable[[FakeKubeServer, str], None],
):
    out, _ = _steady(ctx, kube, parses)
    before = _owned(kube)
    (name,) = request_policies(kube)
    tamper(kube, name)
    assert _owned(kube) != before

    out = ctx.run(ctx.on.update_status(), out)

    assert _owned(kube) == before
    assert out.unit_status == testing.ActiveStatus()
    assert parses  # the full reconcile ran


def test_a_foreign_policy_with_the_beacons_labels_is_deleted_after_a_steady_hook(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, parses: list[str]
):
    out, _ = _steady(ctx, kube, parses)
    before = _owned(kube)
    (name,) = request_policies(kube)
    intruder = copy.deepcopy(kube.get("authorizationpolicies", MODEL, name))
    assert intruder is not None
    intruder["metadata"] = {
        "name": "open-everything",
        "namespace": MODEL,
        "labels": intruder["metadata"]["labels"],
    }
    intruder["spec"] = {"rules": [{}]}
    kube.put(intruder, field_manager="intruder")

    ctx.run(ctx.on.update_status(), out)

    assert _owned(kube) == before


def test_istios_status_after_a_steady_hook_is_reported(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, parses: list[str]
):
    out, _ = _steady(ctx, kube, parses)
    (name,) = request_policies(kube)
    policy = kube.get("authorizationpolicies", MODEL, name)
    assert policy is not None
    policy["status"] = {
        "conditions": [
            {
                "type": "WaypointAccepted",
                "status": "False",
                "reason": "AncestorNotBound",
                "message": "not bound",
                "observedGeneration": policy["metadata"].get("generation", 1),
            }
        ]
    }
    kube.put(policy, field_manager="pilot-discovery")

    for _ in range(2):  # the full reconcile, then the skip: both report it
        out = ctx.run(ctx.on.update_status(), out)
        assert out.unit_status == testing.BlockedStatus(
            f"Istio does not enforce policy {name} ({APP}): AncestorNotBound: not bound"
        )
    assert kube.write_count() == 0


def test_changed_relation_data_is_applied_after_a_steady_hook(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, parses: list[str]
):
    out, relation = _steady(ctx, kube, parses)
    changed = wire_policy("sender", APP)
    changed["endpoints"][0]["paths"] = ["/bar"]
    updated = dataclasses.replace(
        out.get_relation(relation.id), remote_app_data={"policies": json.dumps([changed])}
    )

    ctx.run(ctx.on.relation_changed(updated), dataclasses.replace(out, relations=[updated]))

    (policy,) = request_policies(kube).values()
    assert policy["spec"]["rules"][0]["to"][0]["operation"]["paths"] == ["/bar"]


def test_a_config_change_runs_the_full_reconcile(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, parses: list[str]
):
    out, _ = _steady(ctx, kube, parses)

    ctx.run(
        ctx.on.config_changed(),
        dataclasses.replace(out, config={"authorization-mode": "dry-run"}),
    )

    (policy,) = request_policies(kube).values()
    assert policy["metadata"]["annotations"][DRY_RUN] == "true"


def test_changed_code_runs_the_full_reconcile(
    ctx: testing.Context[IstioBeaconCharm],
    kube: FakeKubeServer,
    parses: list[str],
    monkeypatch: pytest.MonkeyPatch,
):
    out, _ = _steady(ctx, kube, parses)
    monkeypatch.setattr(steady_skip, "code_digest", lambda: "another revision")

    out = ctx.run(ctx.on.update_status(), out)

    assert parses
    assert out.unit_status == testing.ActiveStatus()
