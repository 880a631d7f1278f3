"""authorization-mode=dry-run: app policies observed by the waypoint, not enforced; in place."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from access.map import DRY_RUN_CAVEAT_WAYPOINT, build_access_map, explain
from access.model import Decision, Level
from access.parsing import AuthzPolicy, parse_policy
from access.report import explanation_results, format_map, format_table
from beacon_config import BeaconConfig
from charm import IstioBeaconCharm
from conftest import (
    MODEL,
    WAYPOINT_ACCESS_FOR,
    beacon_state,
    istio_runs_waypoint,
    mesh_relation,
    policies_in,
    seed_model_operator,
    wire_policy,
)
from kube_names import DRY_RUN_ANNOTATION
from ops import testing
from policies import dry_run_message, is_dry_run
from support.fake_kube import FakeKubeServer
from test_access_decide import NS, app_policy, unit_policy
from test_access_decide import model as engine_model

DRY_RUN = {"authorization-mode": "dry-run"}
ENFORCE = {"authorization-mode": "enforce"}
RECEIVER = "receiver1"


def _relation() -> testing.Relation:
    return mesh_relation(
        RECEIVER,
        [
            wire_policy("sender1", RECEIVER),
            wire_policy("sender2", RECEIVER, target_type="unit"),
        ],
    )


def _kinds(kube: FakeKubeServer) -> dict[str, dict[str, Any]]:
    """The beacon's policies by what they are: app, unit, waypoint access, model operator."""
    found: dict[str, dict[str, Any]] = {}
    for policy in policies_in(kube).values():
        annotations = policy["metadata"].get("annotations") or {}
        spec = policy["spec"]
        if WAYPOINT_ACCESS_FOR in annotations:
            found["waypoint access"] = policy
        elif "targetRefs" in spec:
            found["app"] = policy
        elif policy["metadata"]["name"] == "allow-juju-model-operator":
            found["model operator"] = policy
        else:
            found["unit"] = policy
    return found


def _identity(policy: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """What must stay the same across a switch: the uid and the spec."""
    return policy["metadata"]["uid"], policy["spec"]


def test_the_default_is_enforce_and_a_wrong_value_names_the_option():
    assert BeaconConfig().dry_run is False
    assert BeaconConfig(authorization_mode="dry-run").dry_run is True
    with pytest.raises(ValueError, match="authorization-mode must be enforce or dry-run, not 'x"):
        BeaconConfig(authorization_mode="x" * 100)


def test_an_invalid_mode_blocks_and_names_the_fix(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    out = ctx.run(ctx.on.config_changed(), beacon_state(config={"authorization-mode": "audit"}))

    assert out.unit_status == testing.BlockedStatus(
        "invalid config: authorization-mode must be enforce or dry-run, not 'audit'"
    )
    assert policies_in(kube) == {}


def test_dry_run_annotates_only_the_app_policies_and_says_how_many(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    seed_model_operator(kube)
    istio_runs_waypoint(kube)
    config = {**DRY_RUN, "model-on-mesh": True}

    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[_relation()], config=config))

    kinds = _kinds(kube)
    assert set(kinds) == {"app", "unit", "waypoint access", "model operator"}
    assert kinds["app"]["metadata"]["annotations"][DRY_RUN_ANNOTATION] == "true"
    for kind in ("unit", "waypoint access", "model operator"):
        assert not is_dry_run(kinds[kind]), kind
    assert out.unit_status == testing.ActiveStatus(dry_run_message(1))
    assert out.unit_status.message.startswith("dry-run: 1 policy observed, not enforced")


def test_switching_patches_in_place_and_only_the_annotation_changes(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    istio_runs_waypoint(kube)
    state = beacon_state(relations=[_relation()])
    out = ctx.run(ctx.on.config_changed(), state)
    before = {kind: _identity(policy) for kind, policy in _kinds(kube).items()}
    assert not any(is_dry_run(policy) for policy in policies_in(kube).values())

    for config, dry in ((DRY_RUN, True), (ENFORCE, False), (DRY_RUN, True), ({}, False)):
        out = ctx.run(
            ctx.on.config_changed(), beacon_state(relations=[_relation()], config=config)
        )
        kinds = _kinds(kube)
        assert {kind: _identity(policy) for kind, policy in kinds.items()} == before
        assert is_dry_run(kinds["app"]) is dry
        assert DRY_RUN_ANNOTATION in kinds["app"]["metadata"]["annotations"] or not dry
        assert not is_dry_run(kinds["unit"])
        expected = testing.ActiveStatus(dry_run_message(1)) if dry else testing.ActiveStatus()
        assert out.unit_status == expected


def test_a_steady_dry_run_writes_nothing(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    istio_runs_waypoint(kube)
    state = beacon_state(relations=[_relation()], config=DRY_RUN)
    ctx.run(ctx.on.config_changed(), state)
    versions = {n: p["metadata"]["resourceVersion"] for n, p in policies_in(kube).items()}

    ctx.run(ctx.on.update_status(), state)

    assert {n: p["metadata"]["resourceVersion"] for n, p in policies_in(kube).items()} == versions


def _condition(kube: FakeKubeServer, name: str, condition: dict[str, Any]) -> None:
    policy = kube.get("authorizationpolicies", MODEL, name)
    assert policy is not None
    generation = policy["metadata"].get("generation", 1)
    policy["status"] = {"conditions": [{"observedGeneration": generation, **condition}]}
    kube.put(policy, field_manager="pilot-discovery")


UNSUPPORTED = {
    "type": "ZtunnelAccepted",
    "status": "False",
    "reason": "UnsupportedValue",
    "message": f'found policy "{MODEL}/x" using dry-run annotation, but support for ambient '
    "dry-run authorizationPolicies isn't enabled",
}


def test_istiods_dry_run_condition_on_an_app_policy_is_not_a_problem(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    istio_runs_waypoint(kube)
    state = beacon_state(relations=[_relation()], config=DRY_RUN)
    out = ctx.run(ctx.on.config_changed(), state)
    _condition(kube, _kinds(kube)["app"]["metadata"]["name"], UNSUPPORTED)

    out = ctx.run(ctx.on.update_status(), out)

    assert out.unit_status == testing.ActiveStatus(dry_run_message(1))


def test_the_same_condition_on_an_enforced_policy_still_blocks(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    istio_runs_waypoint(kube)
    out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[_relation()]))
    name = _kinds(kube)["unit"]["metadata"]["name"]
    _condition(kube, name, UNSUPPORTED)

    out = ctx.run(ctx.on.update_status(), out)

    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(f"Istio does not enforce policy {name}")


@pytest.mark.parametrize(
    ("value", "dry"),
    [("true", True), ("True", True), ("1", True), ("t", True), ("false", False), ("yes", False)],
)
def test_the_annotation_is_read_as_istio_parses_it(value: str, dry: bool):
    assert is_dry_run({"metadata": {"annotations": {DRY_RUN_ANNOTATION: value}}}) is dry


# --- what the access engine says during a dry run ------------------------------------------


def _dry(policy: AuthzPolicy) -> AuthzPolicy:
    return dataclasses.replace(policy, dry_run=True)


def test_the_engine_reads_the_annotation_and_drops_istiods_dry_run_condition():
    manifest = {
        "metadata": {
            "name": "p",
            "namespace": NS,
            "generation": 1,
            "annotations": {DRY_RUN_ANNOTATION: "true"},
        },
        "spec": {"targetRefs": [{"group": "", "kind": "Service", "name": "receiver"}]},
        "status": {"conditions": [{**UNSUPPORTED, "observedGeneration": 1}]},
    }
    policy = parse_policy(manifest, "m.beacon")
    assert policy.dry_run is True
    assert policy.not_enforced == ()
    enforced = parse_policy(
        {**manifest, "metadata": {**manifest["metadata"], "annotations": {}}}, ""
    )
    assert enforced.dry_run is False
    assert len(enforced.not_enforced) == 1


def test_access_map_marks_the_dry_run_grants_and_says_where_they_are_observed():
    m = engine_model(_dry(app_policy(ports=[8080], methods=["GET"])), unit_policy(ports=[9090]))
    access = build_access_map(m)
    by_level = {g.level: g for g in access.grants}
    assert by_level["app"].dry_run is True
    assert by_level["unit"].dry_run is False
    assert by_level["app"].caveats == (DRY_RUN_CAVEAT_WAYPOINT,)
    assert access.dry_run.startswith(
        "dry-run: 1 of 2 grants observed, not enforced (waypoint: yes"
    )
    assert "AMBIENT_ENABLE_DRY_RUN_AUTHORIZATION_POLICY and ztunnel 1.29+" in access.dry_run
    table = format_table(access)
    assert access.dry_run in table
    lines = table.splitlines()
    header = lines.index("Granted access") + 1
    assert lines[header].split()[-1] == "MODE"
    assert [line.split()[-1] for line in lines[header + 1 : header + 3]] == ["dry-run", "enforced"]
    assert json.loads(format_map(access, "json"))["grants"][0]["dry_run"] is True
    assert "(dry-run)" in format_map(access, "mermaid")


def test_without_dry_run_the_map_has_no_mode_column():
    table = format_table(build_access_map(engine_model(app_policy(ports=[8080]))))
    lines = table.splitlines()
    assert lines[lines.index("Granted access") + 1].split()[-2:] == ["GRANTED", "BY"]
    assert "dry-run" not in table


@pytest.mark.parametrize(
    ("request_", "verdict"),
    [
        ({"port": 8080, "method": "GET", "path": "/x"}, "allow"),
        ({"port": 8080, "method": "POST", "path": "/x"}, "would deny (dry-run: allowed now)"),
        ({"port": 9000, "method": "GET", "path": "/x"}, "would deny (dry-run: allowed now)"),
        ({"port": 9090, "level": Level.unit}, "allow"),  # the unit policy is enforced
        ({"port": 9000, "level": Level.unit}, "deny"),  # so is the pods' restriction
    ],
)
def test_explain_says_would_deny_and_what_happens_now(request_: dict[str, Any], verdict: str):
    m = engine_model(_dry(app_policy(ports=[8080], methods=["GET"])), unit_policy(ports=[9090]))
    params = dict(request_)
    explanation = explain(m, "sender", "receiver", params.pop("port"), **params)
    results = explanation_results(explanation)
    assert results["verdict"] == verdict
    if verdict.startswith("would"):
        assert explanation.decision is Decision.deny
        assert results["explanation"].splitlines()[0].endswith("WOULD DENY (DRY-RUN: ALLOWED NOW)")
        assert (
            "is allowed now; the chain above is what enforcement will do"
            in (results["explanation"])
        )


def test_in_enforce_mode_explain_is_unchanged():
    m = engine_model(app_policy(ports=[8080], methods=["GET"]))
    explanation = explain(m, "sender", "receiver", 8080, method="POST", path="/x")
    assert explanation.now is None
    assert explanation_results(explanation)["verdict"] == "deny"


def test_a_refused_relation_keeps_its_policies_in_the_current_mode(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    istio_runs_waypoint(kube)
    relation = _relation()
    ctx.run(ctx.on.config_changed(), beacon_state(relations=[relation], config=DRY_RUN))
    app = _kinds(kube)["app"]
    # The same relation, whose request is refused from now on.
    broken = dataclasses.replace(relation, remote_app_data={"policies": "not json"})

    for config, dry in ((DRY_RUN, True), (ENFORCE, False), (DRY_RUN, True)):
        out = ctx.run(ctx.on.config_changed(), beacon_state(relations=[broken], config=config))
        kept = _kinds(kube)["app"]
        assert _identity(kept) == _identity(app)  # held as it was: same object, same spec
        assert is_dry_run(kept) is dry
        assert isinstance(out.unit_status, testing.BlockedStatus)
