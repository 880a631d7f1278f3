"""Relation data written to hurt the beacon: no failed hook, no wider access, no lost revocation.

Each test names the class of failure of issue 12 it proves (see docs/contributing/security.md).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import (
    MAX_POLICIES_PER_RELATION,
    MeshPolicy,
    authorization_policy_name,
)
from conftest import (
    MESH_LABELS,
    MODEL,
    NAMESPACE_OWNER,
    REQUESTED_BY,
    beacon_state,
    mesh_relation,
    policies_in,
    requested_by,
    seed_service,
    seed_waypoint_deployment,
    wire_policy,
)
from ops import testing
from policies import MAX_STATUS_LENGTH
from support.fake_kube import FakeKubeServer

HONEST = "honest"
LIAR = "liar"
MAX_STATUS = MAX_STATUS_LENGTH


def _wire(**fields: Any) -> dict[str, Any]:
    return wire_policy("sender", LIAR, **fields)


def _honest() -> testing.Relation:
    return mesh_relation(HONEST, [wire_policy("sender", HONEST)])


def _principals(kube: FakeKubeServer) -> set[str]:
    """The sources of the policies requested by related apps (not the beacon's own)."""
    return {
        principal
        for policy in policies_in(kube).values()
        if REQUESTED_BY in (policy["metadata"].get("labels") or {})
        for rule in policy["spec"].get("rules", [])
        for source in rule.get("from", [])
        for principal in source["source"].get("principals", [])
    }


def _assert_safe_status(message: str) -> None:
    assert len(message) <= MAX_STATUS, len(message)
    assert message.isprintable(), repr(message)
    message.encode("utf-8")


def _assert_safe_logs(ctx: testing.Context[IstioBeaconCharm]) -> None:
    for line in ctx.juju_log:
        assert len(line.message) < 2000, line.message[:200]
        assert line.message.isprintable(), repr(line.message[:200])
        line.message.encode("utf-8")


NESTED = "[" * 100_000 + "]" * 100_000
DEEP_IN_UNKNOWN_KEY = json.dumps([{**wire_policy("sender", LIAR), "x": "PLACEHOLDER"}]).replace(
    '"PLACEHOLDER"', "[" * 5000 + "]" * 5000
)
DIGITS = json.dumps([wire_policy("sender", LIAR)]).replace("8080", "9" * 5000)

HOSTILE: list[tuple[str, str]] = [
    ("nested", NESTED),
    ("deep-unknown-key", DEEP_IN_UNKNOWN_KEY),
    ("digits", DIGITS),
    # An unterminated string of escaped quotes, nearly at the size limit (a scan that read it
    # again from each quote took about an hour).
    ("unterminated", '"' + '\\"' * 500_000),
    ("surrogate-path", json.dumps([_wire(endpoints=[{"paths": ["/\ud800"]}])])),
    ("surrogate-source", json.dumps([wire_policy("\ud800", LIAR)])),
    ("surrogate-refused", json.dumps([wire_policy("sender", "\udc00victim")])),
    ("megabyte-refused", json.dumps([wire_policy("sender", "v" * 1_000_000)])),
    ("kilobyte-refused", json.dumps([wire_policy("sender", "v" * 1000 + "\n\x1b[31m")])),
    ("escapes-refused", json.dumps([wire_policy("sender", "victim\n\x1b[2J\x1b[31mOK")])),
    ("wildcard-source", json.dumps([wire_policy("*", LIAR)])),
    ("too-many", json.dumps([wire_policy("sender", LIAR)] * (MAX_POLICIES_PER_RELATION + 1))),
]


@pytest.mark.parametrize("raw", [case[1] for case in HOSTILE], ids=[case[0] for case in HOSTILE])
def test_hostile_data_is_that_relations_refusal_and_the_others_are_served(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, raw: str
):
    """Classes 1, 3, 4, 5, 8: the hook succeeds, the honest app is served, the liar is refused."""
    honest = _honest()
    liar = mesh_relation(LIAR, raw)

    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[honest, liar]))

    assert set(requested_by(kube)) == {HONEST}
    assert _principals(kube) == {f"cluster.local/ns/{MODEL}/sa/sender"}
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith(f"refused a request from {LIAR}: ")
    _assert_safe_status(out.unit_status.message)
    _assert_safe_logs(ctx)


def test_revocation_happens_while_another_relation_is_hostile(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """Class 2: removing a relation removes its policies even beside data that broke parsing."""
    honest = _honest()
    leaver = mesh_relation("leaver", [wire_policy("sender", "leaver")])
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[honest, leaver]))
    assert set(requested_by(kube)) == {HONEST, "leaver"}

    liar = mesh_relation(LIAR, NESTED)
    state = dataclasses.replace(out, relations=[honest, liar])
    ctx.run(ctx.on.update_status(), state)

    assert set(requested_by(kube)) == {HONEST}


def test_an_object_kubernetes_rejects_is_a_refusal_and_stops_nothing(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """Class 2: an apply refused by admission neither stops other applies nor deletions."""
    honest = _honest()
    leaver = mesh_relation("leaver", [wire_policy("sender", "leaver")])
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[honest, leaver]))

    rejected = wire_policy("sender", "aaa-first")
    name = authorization_policy_name(MeshPolicy.from_dict(rejected))
    kube.reject(422, "admission webhook denied it", None, "authorizationpolicies", name)
    first = mesh_relation("aaa-first", [rejected])
    late = mesh_relation("zzz-late", [wire_policy("sender", "zzz-late")])
    out = ctx.run(
        ctx.on.update_status(), dataclasses.replace(out, relations=[first, honest, late])
    )

    assert set(requested_by(kube)) == {HONEST, "zzz-late"}
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "aaa-first" in out.unit_status.message
    assert "422" in out.unit_status.message


@pytest.mark.parametrize(
    ("code", "answer"),
    [
        (422, "admission webhook denied it"),
        (
            403,
            "exceeded quota: mesh-policies, requested: count/authorizationpolicies.security."
            "istio.io=1, used: count/authorizationpolicies.security.istio.io=2, limited: "
            "count/authorizationpolicies.security.istio.io=2",
        ),
    ],
    ids=["admission", "resource-quota"],
)
def test_a_changed_request_kubernetes_rejects_keeps_the_policy_it_replaces(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, code: int, answer: str
):
    """Class 2: a replacement Kubernetes refuses leaves the app its last accepted policy.

    A ResourceQuota's 403 is that request's refusal, not a lack of trust (RBAC's 403).
    """
    before = wire_policy("sender", LIAR)
    out = ctx.run(
        ctx.on.update_status(),
        beacon_state(relations=[_honest(), mesh_relation(LIAR, [before])]),
    )
    old_name = authorization_policy_name(MeshPolicy.from_dict(before))
    assert requested_by(kube)[LIAR] == {old_name}

    after = _wire(endpoints=[{"hosts": [], "ports": [9090], "methods": ["GET"], "paths": []}])
    new_name = authorization_policy_name(MeshPolicy.from_dict(after))
    kube.reject(code, answer, None, "authorizationpolicies", new_name)
    liar = dataclasses.replace(
        out.get_relation(_relation_id(out, LIAR)),
        remote_app_data={"policies": json.dumps([after])},
    )
    out = ctx.run(
        ctx.on.relation_changed(liar),
        dataclasses.replace(out, relations=[*(r for r in out.relations if r.id != liar.id), liar]),
    )

    # Deleted, the old policy would have left the app with no ALLOW policy: open to everyone.
    assert requested_by(kube)[LIAR] == {old_name}
    assert HONEST in requested_by(kube)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert f"refused a request from {LIAR}: Kubernetes refused it: {code} " in (
        out.unit_status.message
    )
    assert "its last accepted policies (1) stay in force" in out.unit_status.message
    assert "juju trust" not in out.unit_status.message

    kube.allow_all()
    ctx.run(ctx.on.update_status(), out)
    assert requested_by(kube)[LIAR] == {new_name}


def _relation_id(state: testing.State, app: str) -> int:
    return next(r.id for r in state.relations if getattr(r, "remote_app_name", None) == app)


def test_a_crash_without_http_status_fails_no_hook(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer, monkeypatch: pytest.MonkeyPatch
):
    """Class 1: an unreachable API server is a status that says so, not a failed hook."""
    monkeypatch.setenv("KUBECONFIG", "/nonexistent/kubeconfig")
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[_honest()]))
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "cannot reach Kubernetes" in out.unit_status.message
    del kube


def test_a_namespace_conflict_keeps_the_consumers_labels(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """Class 7: "no labels needed" is published only when the namespace carries the labels."""
    seed_waypoint_deployment(kube, replicas=1, ready=1)
    kube.put(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": MODEL, "labels": {NAMESPACE_OWNER: "elsewhere.other-beacon"}},
        }
    )
    honest = _honest()

    out = ctx.run(
        ctx.on.config_changed(),
        beacon_state(relations=[honest], config={"model-on-mesh": True}),
    )

    published = out.get_relation(honest.id).local_app_data
    assert json.loads(published["labels"]) == MESH_LABELS
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "elsewhere.other-beacon" in out.unit_status.message
    assert "keep their own mesh labels" in out.unit_status.message


def test_refusals_are_logged_once_per_change(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """Class 8: many refused policies log one line per relation, and only when it changes."""
    liar = mesh_relation(LIAR, [wire_policy("sender", "victim")] * 500)
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[_honest(), liar]))
    warnings = [line for line in ctx.juju_log if line.level == "WARNING"]
    assert 1 <= len(warnings) <= 2, len(warnings)

    ctx.juju_log.clear()
    out = ctx.run(ctx.on.update_status(), out)
    assert [line for line in ctx.juju_log if line.level == "WARNING"] == []
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "499 more" in out.unit_status.message
    del kube


def test_a_huge_request_creates_no_objects(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """Class 8: 10,000 self-targeted policies are one refusal, not 10,000 objects."""
    flood = [wire_policy(f"s{i}", LIAR) for i in range(10_000)]
    out = ctx.run(
        ctx.on.update_status(), beacon_state(relations=[_honest(), mesh_relation(LIAR, flood)])
    )
    assert set(requested_by(kube)) == {HONEST}
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "more than the limit of" in out.unit_status.message


def test_services_that_cannot_be_listed_change_nothing(
    ctx: testing.Context[IstioBeaconCharm], kube: FakeKubeServer
):
    """Requests naming a Service cannot be checked: their policies are neither lost nor widened."""
    for app in ("named", "other"):
        seed_service(kube, app)
    named = mesh_relation("named", [wire_policy("sender", "named", target_service="named")])
    other = mesh_relation("other", [wire_policy("sender", "other")])
    out = ctx.run(ctx.on.update_status(), beacon_state(relations=[named, other]))
    before = policies_in(kube)

    kube.reject(500, "etcd is unhappy", "list", "services")
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, relations=[named]))

    assert set(policies_in(kube)) == set(before)
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("cannot list the Services: 500")

    kube.allow_all()
    ctx.run(ctx.on.update_status(), dataclasses.replace(out, relations=[named]))
    assert set(requested_by(kube)) == {"named"}
