"""ServiceMeshProvider in a throwaway charm: what it publishes and how it reads requests."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    MeshPolicy,
    RelationRequest,
    ServiceMeshProvider,
)
from mesh_charms import MESH_LABELS, provider_context, provider_databag, state
from ops import testing


def consumer_relation(app: str, policies: object = None, **kwargs: Any) -> testing.Relation:
    """The provider's side of a relation to ``app``; ``policies`` as JSON, or raw text."""
    data = {}
    if policies is not None:
        data["policies"] = policies if isinstance(policies, str) else json.dumps(policies)
    return testing.Relation(
        "service-mesh", "service_mesh", remote_app_name=app, remote_app_data=data, **kwargs
    )


def policy_dict(source: str, target: str, **kwargs: Any) -> dict[str, Any]:
    """A valid MeshPolicy in wire form, with overrides."""
    return {
        "source_namespace": "model",
        "source_app_name": source,
        "target_namespace": "model",
        "target_app_name": target,
        "target_selector_labels": None,
        "target_service": None,
        "target_type": "app",
        "endpoints": [{"hosts": None, "ports": [80], "methods": ["GET"], "paths": None}],
        **kwargs,
    }


def requests_of(*relations: testing.Relation) -> tuple[list[RelationRequest], list[MeshPolicy]]:
    ctx = provider_context()
    with ctx(ctx.on.update_status(), state(*relations)) as manager:
        provider: ServiceMeshProvider = manager.charm.mesh  # type: ignore[attr-defined]
        requests, policies = provider.relation_requests(), provider.mesh_info()
        assert provider.rejected_relations() == [r for r in requests if r.error]
        manager.run()
    # Relations come in no particular order in ops.testing: sort by app, then by target.
    requests.sort(key=lambda request: request.app_name or "")
    policies.sort(key=lambda policy: (policy.target_app_name or "", policy.source_app_name))
    return requests, policies


def test_publishes_to_every_relation_when_elected_leader():
    ctx = provider_context()
    relations = [consumer_relation("a"), consumer_relation("b")]
    out = ctx.run(ctx.on.leader_elected(), state(*relations))
    for relation in relations:
        assert out.get_relation(relation.id).local_app_data == provider_databag()


def test_publishes_to_a_new_relation():
    ctx = provider_context()
    relation = consumer_relation("a")
    out = ctx.run(ctx.on.relation_created(relation), state(relation))
    assert out.get_relation(relation.id).local_app_data == provider_databag()


def test_non_leader_publishes_nothing():
    ctx = provider_context()
    relation = consumer_relation("a")
    out = ctx.run(ctx.on.relation_created(relation), state(relation, leader=False))
    assert out.get_relation(relation.id).local_app_data == {}


def test_leader_again_republishes_what_another_leader_overwrote():
    ctx = provider_context()
    relation = consumer_relation("a")
    out = ctx.run(ctx.on.relation_created(relation), state(relation))

    # Another unit leads for a while and publishes other labels (e.g. another config).
    theirs = provider_databag({"istio.io/dataplane-mode": "ambient"})
    overwritten = dataclasses.replace(out.get_relation(relation.id), local_app_data=theirs)
    out = ctx.run(
        ctx.on.update_status(),
        dataclasses.replace(out, leader=False, relations=[overwritten]),
    )
    assert out.get_relation(relation.id).local_app_data == theirs

    # Leading again, this unit must not trust its memory of what it published.
    out = ctx.run(ctx.on.leader_elected(), dataclasses.replace(out, leader=True))
    assert out.get_relation(relation.id).local_app_data == provider_databag(MESH_LABELS)


def test_keeps_other_keys_of_its_databag():
    ctx = provider_context()
    relation = consumer_relation("a", local_app_data={"other": '"kept"'})
    out = ctx.run(ctx.on.relation_created(relation), state(relation))
    assert out.get_relation(relation.id).local_app_data == {
        **provider_databag(),
        "other": '"kept"',
    }


def test_requests_of_several_relations():
    requests, policies = requests_of(
        consumer_relation("a", [policy_dict("x", "a"), policy_dict("y", "a")]),
        consumer_relation("b", [policy_dict("x", "b", target_type="unit", endpoints=[])]),
        consumer_relation("c", []),
        consumer_relation("d"),  # has not written anything yet
    )
    assert [(r.app_name, len(r.policies), r.error) for r in requests] == [
        ("a", 2, None),
        ("b", 1, None),
        ("c", 0, None),
        ("d", 0, None),
    ]
    assert [(p.source_app_name, p.target_app_name) for p in policies] == [
        ("x", "a"),
        ("y", "a"),
        ("x", "b"),
    ]


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        ("[{not json", "policies: not valid JSON"),
        ({"a": 1}, "policies: expected a list of policies, got dict"),
        (['"a"'], r"policies\[0\]: expected an object, got str"),
        ([policy_dict("x", "bad", target_type="pod")], r"policies\[0\].target_type"),
        ([policy_dict("x", "bad", source_app_name=None)], r"policies\[0\].source_app_name"),
        (
            [policy_dict("x", "bad", endpoints=[{"ports": ["80"]}])],
            r"policies\[0\].endpoints\[0\].ports\[0\]: expected a port number",
        ),
        (
            [policy_dict("x", "bad", endpoints=[{"methods": ["FETCH"]}])],
            r"policies\[0\].endpoints\[0\].methods\[0\]",
        ),
        ([policy_dict("x", "bad", endpoints={"ports": [80]})], r"policies\[0\].endpoints: "),
        (
            [policy_dict("x", "bad", target_selector_labels={"app": "bad"})],
            r"policies\[0\]: .*cannot have target_selector_labels",
        ),
        (
            # A unit policy with methods: what Istio would turn into "deny everything".
            [policy_dict("x", "bad", target_type="unit")],
            r"policies\[0\]: .*can only restrict ports",
        ),
        (
            [policy_dict("x", "bad"), policy_dict("y", "bad", target_app_name=7)],
            r"policies\[1\].target_app_name: expected a non-empty string, got int 7",
        ),
    ],
)
def test_malformed_requests_are_rejected_and_the_others_still_served(raw: object, error: str):
    requests, policies = requests_of(
        consumer_relation("good", [policy_dict("x", "good")]),
        consumer_relation("bad", raw),
        consumer_relation("also-good", [policy_dict("y", "also-good")]),
    )
    also_good, bad, good = requests
    assert (good.error, also_good.error) == (None, None)
    assert (bad.app_name, bad.policies) == ("bad", [])
    assert bad.error is not None
    assert re.search(error, bad.error), bad.error
    assert [p.target_app_name for p in policies] == ["also-good", "good"]


def test_relation_request_fields():
    (request,), _ = requests_of(consumer_relation("a", [policy_dict("x", "a")], id=42))
    assert request == RelationRequest(
        relation_id=42, app_name="a", policies=[MeshPolicy.from_dict(policy_dict("x", "a"))]
    )


def _requested_targets(ctx: testing.Context[Any], event: Any, state_in: testing.State) -> Any:
    """Run ``event`` and return (target apps requested, output state)."""
    with ctx(event, state_in) as manager:
        provider: ServiceMeshProvider = manager.charm.mesh
        state_out = manager.run()
        targets = sorted(p.target_app_name or "" for p in provider.mesh_info())
    return targets, state_out


def test_a_changed_request_is_read_again_and_a_broken_relation_is_forgotten():
    ctx = provider_context()
    before = consumer_relation("a", [policy_dict("x", "a")])
    targets, state_out = _requested_targets(ctx, ctx.on.relation_changed(before), state(before))
    assert targets == ["a"]

    # Juju runs relation-changed after the remote app rewrote its databag: the new request counts.
    after = dataclasses.replace(
        state_out.get_relation(before.id),
        remote_app_data={"policies": json.dumps([policy_dict("y", "a"), policy_dict("z", "a")])},
    )
    changed = dataclasses.replace(state_out, relations={after})
    targets, state_out = _requested_targets(ctx, ctx.on.relation_changed(after), changed)
    assert targets == ["a", "a"]

    targets, state_out = _requested_targets(ctx, ctx.on.relation_broken(after), state_out)
    assert targets == []
    other = consumer_relation("b", [policy_dict("x", "b")])
    targets, _ = _requested_targets(
        ctx, ctx.on.update_status(), dataclasses.replace(state_out, relations={other})
    )
    assert targets == ["b"]


def _fingerprints(
    state_in: testing.State, relation: testing.Relation | None = None
) -> tuple[str | None, str | None, testing.State]:
    """The fingerprint before and after reading the requests in one hook, and the state after.

    The hook is update-status, or relation-changed of ``relation``.
    """
    ctx = provider_context()
    event = ctx.on.update_status() if relation is None else ctx.on.relation_changed(relation)
    with ctx(event, state_in) as manager:
        provider: ServiceMeshProvider = manager.charm.mesh  # type: ignore[attr-defined]
        before = provider.requests_fingerprint()
        provider.relation_requests()
        after = provider.requests_fingerprint()
        out = manager.run()
    return before, after, out


def test_the_requests_fingerprint_changes_with_the_requests_only():
    first = consumer_relation("app1", [policy_dict("client", "app1")])
    second = consumer_relation("app2", [policy_dict("client", "app2")])

    # Not read yet: unknown. Read (and remembered): known, and the same on the next hook.
    unknown, known, out = _fingerprints(state(first, second))
    assert unknown is None
    assert known is not None
    assert _fingerprints(out)[:2] == (known, known)

    # Another request text, or one relation fewer: another fingerprint.
    relation = out.get_relation(first.id)
    assert isinstance(relation, testing.Relation)
    changed = dataclasses.replace(
        relation,
        remote_app_data={
            "policies": json.dumps([policy_dict("client", "app1", target_service="x")])
        },
    )
    other = dataclasses.replace(out, relations=[changed, out.get_relation(second.id)])
    # In the relation-changed hook, the provider reads the changed text (after this check).
    assert _fingerprints(other, changed)[0] == known
    ctx = provider_context()
    after_change = _fingerprints(ctx.run(ctx.on.relation_changed(changed), other))[0]
    fewer = _fingerprints(dataclasses.replace(out, relations=[out.get_relation(first.id)]))[0]
    assert len({known, after_change, fewer} - {None}) == 3
