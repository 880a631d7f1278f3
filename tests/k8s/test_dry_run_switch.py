"""Switching authorization-mode on a real API server: in place, and no access changes in between.

The beacon reconciles a model (a receiver with an app policy and a unit policy from two senders),
then ``authorization-mode`` goes to ``dry-run`` and back. The server's audit log shows every write
the switch made: each is a server-side apply of an existing policy (no create, no delete), the
uid and spec stay, only ``istio.io/dry-run`` comes and goes. The access engine's verdicts on a grid
of requests are computed on the policies before, after each single write of the switch, and
after: what the policies decide never changes (no request gains or loses access), only whether
the waypoint enforces it.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest
from access.cluster import read_model
from access.map import explain
from access.model import Decision, Level, Model
from access.parsing import parse_policy
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    Method,
    PolicyTargetType,
)
from kube_names import DRY_RUN_ANNOTATION
from lightkube import Client, codecs
from namespace_labels import owner_value
from ops import testing
from policies import is_dry_run
from support import juju_seed
from support.kube_server import AuditedWrite, KubeServer
from test_beacon_charm import APP, owned
from test_beacon_charm import AuthorizationPolicy as Policy
from waypoint import waypoint_name

SENDERS = ("sender1", "sender2", "sender3")
RECEIVER = "receiver"


@pytest.fixture
def ctx() -> testing.Context[IstioBeaconCharm]:
    return testing.Context(IstioBeaconCharm, app_name=APP)


@pytest.fixture
def model(kube: KubeServer, admin: Client, namespace: str, monkeypatch: pytest.MonkeyPatch) -> str:
    juju_seed.seed_app(admin, APP, namespace)
    labels = {
        "istio.io/dataplane-mode": "ambient",
        "istio.io/use-waypoint": waypoint_name(namespace, APP),
        "istio.io/use-waypoint-namespace": namespace,
    }
    for app in (*SENDERS, RECEIVER):
        admin.create(
            codecs.from_dict(juju_seed.statefulset_manifest(app, namespace, **labels)),
            field_manager=juju_seed.JUJU_FIELD_MANAGER,
        )
        juju_seed.seed_service(admin, app, namespace, {**juju_seed.app_labels(app), **labels})
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    return namespace


def _relation(model: str) -> testing.Relation:
    app = MeshPolicy(
        source_namespace=model,
        source_app_name="sender1",
        target_namespace=model,
        target_app_name=RECEIVER,
        endpoints=[Endpoint(ports=[8080], methods=[Method.get], paths=["/data/*"])],
    )
    unit = MeshPolicy(
        source_namespace=model,
        source_app_name="sender2",
        target_namespace=model,
        target_app_name=RECEIVER,
        target_type=PolicyTargetType.unit,
        endpoints=[Endpoint(ports=[9090])],
    )
    return testing.Relation(
        "service-mesh",
        remote_app_name=RECEIVER,
        remote_app_data={"policies": json.dumps([app.to_dict(), unit.to_dict()])},
    )


def _state(model: str, relation: testing.Relation, mode: str) -> testing.State:
    return testing.State(
        leader=True,
        model=testing.Model(name=model),
        relations=[relation],
        config={"authorization-mode": mode},
        planned_units=1,
        containers=[testing.Container("metrics-proxy", can_connect=False)],
    )


REQUESTS = [
    (source, port, method, level)
    for source, port, method, level in itertools.product(
        SENDERS, (8080, 9090), ("GET", "POST"), (Level.app, Level.unit)
    )
    if level is Level.app or method == "GET"
]


def _verdicts(model: Model, policies: list[dict[str, Any]]) -> dict[tuple[Any, ...], Decision]:
    """What the policies decide for each request of the grid (dry-run ones as if enforced)."""
    owner = owner_value(model.namespace, APP)
    parsed = tuple(sorted((parse_policy(p, owner) for p in policies), key=lambda p: p.name))
    # As once Istio runs the waypoint (nothing runs Istio here): app policies are enforced there.
    at = dataclasses.replace(model, policies=parsed, waypoint_ready=True)
    return {
        (source, port, method, level): explain(
            at, source, RECEIVER, port, method=method, path="/data/1", level=level
        ).verdict.decision
        for source, port, method, level in REQUESTS
    }


def _replay(
    before: dict[str, dict[str, Any]], writes: list[AuditedWrite]
) -> list[dict[str, dict[str, Any]]]:
    """The policies after each write of the switch, from the bodies the server audited."""
    states: list[dict[str, dict[str, Any]]] = []
    current = {name: dict(policy) for name, policy in before.items()}
    for write in writes:
        if "/authorizationpolicies" not in write.uri:
            continue
        assert write.verb == "patch", f"{write.verb} {write.uri}: the switch only patches"
        assert write.code == 200, write
        body = write.body or {}
        parts = write.uri.split("?", 1)[0].split("/")
        name = f"{parts[parts.index('namespaces') + 1]}/{parts[-1]}"
        assert name in current, f"{name}: a policy that did not exist before"
        if "spec" in body:  # a server-side apply: the whole object as the beacon wants it
            state = body
        else:  # a merge patch that takes the dry-run mark off
            old = current[name]
            annotations = dict(old["metadata"].get("annotations") or {})
            for key, value in body["metadata"]["annotations"].items():
                if value is None:
                    annotations.pop(key, None)
                else:
                    annotations[key] = value
            state = {**old, "metadata": {**old["metadata"], "annotations": annotations}}
        current = {**current, name: state}
        states.append(current)
    return states


def test_switching_patches_in_place_and_access_never_changes_in_between(
    ctx: testing.Context[IstioBeaconCharm], kube: KubeServer, admin: Client, model: str
):
    relation = _relation(model)
    ctx.run(ctx.on.config_changed(), _state(model, relation, "enforce"))
    engine = read_model(admin, model, APP, waypoint_name(model, APP), [])
    before = owned(admin, Policy, model)
    assert not any(is_dry_run(policy) for policy in before.values())
    reference = _verdicts(engine, list(before.values()))
    # The grid is not trivial: the app policy and the unit policy each allow something.
    assert reference[("sender1", 8080, "GET", Level.app)] is Decision.allow
    assert reference[("sender2", 9090, "GET", Level.unit)] is Decision.allow
    assert reference[("sender3", 8080, "GET", Level.app)] is Decision.deny

    current = before
    for mode, dry in (("dry-run", True), ("enforce", False)):
        mark = kube.audit_mark()
        ctx.run(ctx.on.config_changed(), _state(model, relation, mode))
        writes = kube.writes_since(mark)
        after = owned(admin, Policy, model)

        states = _replay(current, writes)
        # Only the one app policy is written (an apply; back to enforce, also a merge patch that
        # takes the mark off); the unit and waypoint ones stay as they are.
        touched = {w.uri.split("?", 1)[0] for w in writes if "/authorizationpolicies" in w.uri}
        assert len(touched) == 1
        assert 1 <= len(states) <= 2
        for state in states:
            assert _verdicts(engine, list(state.values())) == reference
        assert _verdicts(engine, list(after.values())) == reference
        assert set(after) == set(before)
        for name, policy in after.items():
            old = before[name]
            assert policy["metadata"]["uid"] == old["metadata"]["uid"], name
            assert policy["spec"] == old["spec"], name
            annotations = dict(policy["metadata"].get("annotations") or {})
            is_app = "targetRefs" in policy["spec"]
            assert is_dry_run(policy) is (dry and is_app), name
            annotations.pop(DRY_RUN_ANNOTATION, None)
            assert annotations == (old["metadata"].get("annotations") or {}), name
        current = after


def test_a_policy_created_in_dry_run_is_enforced_after_the_switch(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str
):
    # Created (not applied) in dry-run: its annotation is not an applied field that a later
    # server-side apply would drop; the switch must still take it off.
    relation = _relation(model)
    ctx.run(ctx.on.config_changed(), _state(model, relation, "dry-run"))
    before = owned(admin, Policy, model)
    assert sum(is_dry_run(policy) for policy in before.values()) == 1

    ctx.run(ctx.on.config_changed(), _state(model, relation, "enforce"))

    after = owned(admin, Policy, model)
    assert not any(is_dry_run(policy) for policy in after.values())
    assert {n: p["metadata"]["uid"] for n, p in after.items()} == {
        n: p["metadata"]["uid"] for n, p in before.items()
    }
