"""The last accepted request holds, action ALLOW is owned, a rollback is clean (real API server).

The beacon runs through ops.testing against the real kube-apiserver of this tier; the record
of what was last accepted is on the objects, so every step here can be a fresh charm (a new
leader, a refresh) and still keep them. docs/beacon.md says what each step means.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any

import pytest
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import (
    MAX_POLICIES_BYTES,
    Endpoint,
    MeshPolicy,
    Method,
)
from kube_names import MANAGED_BY
from lightkube import Client
from lightkube.resources.autoscaling_v2 import HorizontalPodAutoscaler
from lightkube.types import PatchType
from ops import testing
from support import juju_seed
from support.deployed_beacon import AuthorizationPolicy, Gateway, charm_label, roll_back
from support.kube_server import KubeServer, ensure_namespace
from waypoint import waypoint_name

APP = "istio-beacon-k8s"
RECEIVER = "receiver"


def _policy(model: str, source: str) -> str:
    policy = MeshPolicy(
        source_namespace=model,
        source_app_name=source,
        target_namespace=model,
        target_app_name=RECEIVER,
        endpoints=[Endpoint(ports=[8080], methods=[Method.get])],
    )
    return f"[{policy.model_dump_json()}]"


def _invalid(model: str, kind: str) -> str:
    """Data the beacon cannot use: unreadable, a refused shape, over the size limit."""
    if kind == "garbage":
        return "[" * 1000 + "]" * 1000
    if kind == "schema":
        return json.dumps([{**json.loads(_policy(model, "sender"))[0], "target_type": "pod"}])
    return _policy(model, "sender") + " " * MAX_POLICIES_BYTES


@pytest.fixture
def model(kube: KubeServer, admin: Client, namespace: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A model with the beacon's and the receiver's StatefulSet and Service (trusted: admin)."""
    juju_seed.seed_app(admin, APP, namespace)
    juju_seed.seed_app(admin, RECEIVER, namespace)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    return namespace


def _state(model: str, raw: str, relation_id: int = 7, **config: Any) -> testing.State:
    relation = testing.Relation(
        "service-mesh", id=relation_id, remote_app_name=RECEIVER, remote_app_data={"policies": raw}
    )
    return testing.State(
        leader=True,
        model=testing.Model(name=model),
        relations=[relation],
        config=config,
        planned_units=1,
        containers=[testing.Container("metrics-proxy", can_connect=False)],
    )


def _run(state: testing.State, event: str = "relation_changed") -> testing.State:
    """One hook, by a fresh charm (no memory of earlier hooks: a new leader would be so)."""
    ctx = testing.Context(IstioBeaconCharm, app_name=APP)
    if event == "relation_changed":
        [relation] = state.relations
        return ctx.run(ctx.on.relation_changed(relation), state)
    if event == "relation_broken":
        [relation] = state.relations
        return ctx.run(ctx.on.relation_broken(relation), state)
    return ctx.run(getattr(ctx.on, event)(), state)


def _requested(admin: Client, model: str) -> dict[str, tuple[str, dict[str, Any]]]:
    """The receiver's request policies: name to (resourceVersion, spec)."""
    api: Any = admin
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for item in api.list(AuthorizationPolicy, namespace=model):
        if (item.metadata.annotations or {}).get(
            "charms.canonical.com/service-mesh.requested-by"
        ) == RECEIVER:
            found[item.metadata.name] = (item.metadata.resourceVersion, dict(item["spec"]))
    return found


@pytest.mark.parametrize("kind", ["garbage", "schema", "size"])
def test_invalid_data_keeps_the_objects_then_valid_data_replaces_them(
    admin: Client, model: str, kind: str
):
    _run(_state(model, _policy(model, "sender")))
    before = _requested(admin, model)
    assert len(before) == 1

    out = _run(_state(model, _invalid(model, kind)))

    # Not even rewritten: the same objects, at the same resourceVersion.
    assert _requested(admin, model) == before
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert "its last accepted policies (1) stay in force" in out.unit_status.message

    # A new leader and a refresh (fresh charms, nothing remembered) keep them as well.
    for event in ("leader_elected", "upgrade_charm"):
        _run(_state(model, _invalid(model, kind)), event)
        assert _requested(admin, model) == before

    _run(_state(model, _policy(model, "other-sender")))

    after = _requested(admin, model)
    assert len(after) == 1
    assert set(after) != set(before)
    [(_, spec)] = after.values()
    assert spec["rules"][0]["from"][0]["source"]["principals"] == [
        f"cluster.local/ns/{model}/sa/other-sender"
    ]


def test_relation_broken_while_invalid_removes_them(admin: Client, model: str):
    _run(_state(model, _policy(model, "sender")))
    _run(_state(model, _invalid(model, "garbage")))
    assert len(_requested(admin, model)) == 1

    _run(_state(model, _invalid(model, "garbage")), "relation_broken")

    assert _requested(admin, model) == {}


def test_switching_management_off_removes_them(admin: Client, model: str):
    _run(_state(model, _policy(model, "sender")))
    _run(_state(model, _invalid(model, "garbage")))

    _run(
        _state(model, _invalid(model, "garbage"), **{"manage-authorization-policies": False}),
        "config_changed",
    )

    assert _requested(admin, model) == {}


def test_a_first_refused_request_is_reported_unprotected(admin: Client, model: str):
    out = _run(_state(model, _invalid(model, "schema")))

    assert _requested(admin, model) == {}
    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert f"{RECEIVER} is not protected until its request is valid" in out.unit_status.message


def test_a_merge_patched_deny_is_allow_again_after_the_next_hook(admin: Client, model: str):
    state = _state(model, _policy(model, "sender"))
    _run(state)
    api: Any = admin
    policies = list(api.list(AuthorizationPolicy, namespace=model, labels={MANAGED_BY: None}))
    assert len(policies) >= 2  # the receiver's request and the waypoint's access to it
    for item in policies:
        assert item["spec"]["action"] == "ALLOW"
        api.patch(
            AuthorizationPolicy,
            item.metadata.name,
            {"spec": {"action": "DENY"}},
            namespace=model,
            patch_type=PatchType.MERGE,
            field_manager="intruder",
        )
        assert (
            api.get(AuthorizationPolicy, item.metadata.name, namespace=model)["spec"]["action"]
            == "DENY"
        )

    _run(state, "update_status")

    for item in policies:
        assert (
            api.get(AuthorizationPolicy, item.metadata.name, namespace=model)["spec"]["action"]
            == "ALLOW"
        )


def test_drift_after_a_hook_that_found_everything_as_wanted_is_reverted(admin: Client, model: str):
    # A hook that writes nothing vouches for the policies (their resourceVersion), so that the
    # next one may skip the policy work; a write by anyone changes a resourceVersion.
    out = _run(_state(model, _policy(model, "sender")))
    out = _run(out, "update_status")
    before = _requested(admin, model)
    out = _run(out, "update_status")
    assert _requested(admin, model) == before  # nothing written: the same resourceVersions
    [charm_state] = [s for s in out.stored_states if s.owner_path == "IstioBeaconCharm"]
    assert charm_state.content["steady"]  # vouched for: the skip is armed
    api: Any = admin
    (name,) = before
    api.patch(
        AuthorizationPolicy,
        name,
        {
            "metadata": {"annotations": {"istio.io/dry-run": "true"}},
            "spec": {"action": "DENY"},
        },
        namespace=model,
        patch_type=PatchType.MERGE,
        field_manager="intruder",
    )

    _run(out, "update_status")

    repaired = api.get(AuthorizationPolicy, name, namespace=model)
    assert repaired["spec"] == before[name][1]
    assert "istio.io/dry-run" not in (repaired.metadata.annotations or {})


@pytest.mark.parametrize("names", ["short", "long"])
def test_a_rollback_to_the_deployed_charm_removes_every_policy_of_ours(
    kube: KubeServer, admin: Client, namespace: str, monkeypatch: pytest.MonkeyPatch, names: str
):
    """Its reconcile, modelled from its source, finds ours by its labels and removes them.

    ``short``: the waypoint has the same name in both charms. ``long`` (a model name long enough
    that each charm shortens the waypoint's name with its own hash): it deletes our waypoint too.
    """
    model = f"rollback-{uuid.uuid4().hex[:8]}" if names == "short" else namespace
    ensure_namespace(admin, model)
    juju_seed.seed_app(admin, APP, model)
    juju_seed.seed_app(admin, RECEIVER, model)
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    juju_seed.seed_model_operator(admin, model)
    _run(_state(model, _policy(model, "sender"), **{"model-on-mesh": True}), "config_changed")
    api: Any = admin
    ours = {
        f"AuthorizationPolicy {model}/{item.metadata.name}"
        for item in api.list(AuthorizationPolicy, namespace=model, labels={MANAGED_BY: None})
    }
    assert len(ours) == 3  # the receiver's request, the waypoint's access, the model operator

    with kube.admin_client(field_manager=APP) as deployed:
        deleted = roll_back(deployed, APP, model, consumers=[("sender", RECEIVER)])

    waypoint = waypoint_name(model, APP)
    theirs = charm_label(model, APP, suffix="-waypoint", sep="-")
    assert (waypoint == theirs) is (names == "short")
    if names == "short":
        assert set(deleted) == ours
    else:
        assert set(deleted) == {
            *ours,
            f"Gateway {model}/{waypoint}",
            f"HorizontalPodAutoscaler {model}/{waypoint}",
        }
    left = list(api.list(AuthorizationPolicy, namespace=model, labels={MANAGED_BY: None}))
    assert [item.metadata.name for item in left] == []
    # Its own waypoint is in place, under its name (ours, when the names match, taken over).
    assert admin.get(Gateway, theirs, namespace=model) is not None
    assert admin.get(HorizontalPodAutoscaler, theirs, namespace=model) is not None


def test_the_state_is_not_needed_between_hooks(admin: Client, model: str):
    """dataclasses.replace of the output state, as a single unit would run: same result."""
    out = _run(_state(model, _policy(model, "sender")))
    before = _requested(admin, model)
    [relation] = out.relations
    changed = dataclasses.replace(relation, remote_app_data={"policies": "{"})
    _run(dataclasses.replace(out, relations=[changed]))
    assert _requested(admin, model) == before


QUOTA = "mesh-policies"
COUNTED = "count/authorizationpolicies.security.istio.io"


def _set_quota(kube: KubeServer, model: str, hard: int, used: int) -> None:
    """A ResourceQuota on AuthorizationPolicies, with the status its controller would give it.

    No kube-controller-manager runs in this tier, so the quota's status (which the admission
    plugin reads, and raises ``used`` in on each create) is written here.
    """
    path = f"/api/v1/namespaces/{model}/resourcequotas"
    body = {"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": QUOTA}}
    body["spec"] = {"hard": {COUNTED: str(hard)}}
    status, answer = kube.raw_request("POST", path, body)
    if status == 409:
        status, answer = kube.raw_request(
            "PATCH", f"{path}/{QUOTA}", body, content_type="application/merge-patch+json"
        )
    assert status in (200, 201), answer
    patch = {"status": {"hard": {COUNTED: str(hard)}, "used": {COUNTED: str(used)}}}
    status, answer = kube.raw_request(
        "PATCH", f"{path}/{QUOTA}/status", patch, content_type="application/merge-patch+json"
    )
    assert status == 200, answer


def _wait_for_quota(kube: KubeServer, model: str, *, full: bool) -> None:
    """Wait until the admission plugin sees the quota (it reads quotas from a cache)."""
    probe = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": f"probe-{uuid.uuid4().hex[:6]}", "namespace": model},
        "spec": {"selector": {"matchLabels": {"app.kubernetes.io/name": "nobody"}}},
    }
    deadline = time.monotonic() + 60
    while True:
        status, answer = kube.strict_create(probe)  # a dry run: nothing is stored or counted
        if (status == 403 and "exceeded quota" in str(answer)) == full:
            return
        assert time.monotonic() < deadline, f"the quota never took effect: {status} {answer}"
        time.sleep(0.2)


def test_a_replacement_over_the_resource_quota_keeps_the_last_accepted_policy(
    kube: KubeServer, admin: Client, model: str
):
    out = _run(_state(model, _policy(model, "sender")))
    before = _requested(admin, model)
    assert len(before) == 1
    count = len(list(admin.list(AuthorizationPolicy, namespace=model)))
    _set_quota(kube, model, hard=count, used=count)
    _wait_for_quota(kube, model, full=True)

    # The request changes: its new policy does not fit in the quota.
    out = _run(
        dataclasses.replace(
            _state(model, _policy(model, "other-sender")), stored_states=out.stored_states
        )
    )

    # Deleting the old one would leave the receiver with no ALLOW policy: open to everyone.
    assert _requested(admin, model) == before
    assert isinstance(out.unit_status, testing.BlockedStatus)
    message = out.unit_status.message
    assert f"refused a request from {RECEIVER}: Kubernetes refused it: 403 " in message
    assert "its last accepted policies (1) stay in force" in message
    assert "juju trust" not in message

    # Room for one more: the next hook writes the new policy, then deletes the old one.
    _set_quota(kube, model, hard=count + 1, used=count)
    _wait_for_quota(kube, model, full=False)
    out = _run(
        dataclasses.replace(
            _state(model, _policy(model, "other-sender")), stored_states=out.stored_states
        ),
        "update_status",
    )

    after = _requested(admin, model)
    assert len(after) == 1
    assert set(after) != set(before)
    assert isinstance(out.unit_status, testing.ActiveStatus | testing.WaitingStatus), (
        out.unit_status
    )
