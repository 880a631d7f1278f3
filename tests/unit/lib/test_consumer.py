"""ServiceMeshConsumer in a throwaway charm: what it publishes, for which relations and when."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ops
import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    Endpoint,
    MeshDataError,
    Method,
    Policy,
    ServiceMeshConsumer,
    UnitPolicy,
)
from mesh_charms import (
    CONSUMER,
    CONSUMER_META,
    MODEL,
    consumer_context,
    mesh_relation,
    provider_databag,
    published_policies,
    state,
)
from ops import testing

# Consumers look for labels they may have put earlier: give them a (fake) cluster to ask.
pytestmark = pytest.mark.usefixtures("kube")

HTTP = Endpoint(ports=[8080], methods=[Method.get], paths=["/data"])


def sources(policies: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(source namespace, source app, target type) of each published policy, sorted.

    Relations come in no particular order in ops.testing, so neither do the policies.
    """
    return sorted(
        (p["source_namespace"], p["source_app_name"], p["target_type"]) for p in policies
    )


def test_one_policy_per_declared_policy_and_relation():
    ctx = consumer_context(
        [AppPolicy(relation="rela", endpoints=[HTTP]), UnitPolicy(relation="relb", ports=[9090])]
    )
    mesh = mesh_relation()
    rela_1 = testing.Relation("rela", remote_app_name="a1")
    rela_2 = testing.Relation("rela", remote_app_name="a2")
    relb = testing.Relation("relb", remote_app_name="b")
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh, rela_1, rela_2, relb))

    policies = published_policies(out, mesh)
    assert sources(policies) == [
        (MODEL, "a1", "app"),
        (MODEL, "a2", "app"),
        (MODEL, "b", "unit"),
    ]
    by_source = {p["source_app_name"]: p for p in policies}
    app_policy, unit_policy = by_source["a1"], by_source["b"]
    assert app_policy["target_app_name"] == CONSUMER
    assert app_policy["target_namespace"] == MODEL
    assert app_policy["endpoints"] == [
        {"hosts": None, "ports": [8080], "methods": ["GET"], "paths": ["/data"]}
    ]
    assert unit_policy["endpoints"] == [
        {"hosts": None, "ports": [9090], "methods": None, "paths": None}
    ]


def test_app_and_unit_policies_on_the_same_relation():
    ctx = consumer_context([AppPolicy(relation="rela"), UnitPolicy(relation="rela")])
    mesh = mesh_relation()
    rela = testing.Relation("rela", remote_app_name="a")
    out = ctx.run(ctx.on.relation_created(rela), state(mesh, rela))
    assert sources(published_policies(out, mesh)) == [(MODEL, "a", "app"), (MODEL, "a", "unit")]


def test_app_policy_with_a_custom_service():
    ctx = consumer_context([AppPolicy(relation="rela", service="my-ingress-svc")])
    mesh = mesh_relation()
    rela = testing.Relation("rela", remote_app_name="a")
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh, rela))
    (policy,) = published_policies(out, mesh)
    assert policy["target_service"] == "my-ingress-svc"
    assert policy["target_app_name"] == CONSUMER


def test_peer_relation_allows_the_app_itself():
    ctx = consumer_context([UnitPolicy(relation="peers", ports=[8080])])
    mesh = mesh_relation()
    peers = testing.PeerRelation("peers", peers_data={1: {}})
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh, peers))
    (policy,) = published_policies(out, mesh)
    assert (policy["source_app_name"], policy["target_app_name"]) == (CONSUMER, CONSUMER)
    assert policy["source_namespace"] == MODEL


def test_cross_model_sources_use_the_announced_names():
    ctx = consumer_context([AppPolicy(relation="inbound", endpoints=[HTTP])])
    mesh = mesh_relation()
    # Across models the sender appears under a local alias on both of its relations.
    inbound = testing.Relation("inbound", remote_app_name="remote-sender")
    cmr = testing.Relation(
        "provide-cmr-mesh",
        "cross_model_mesh",
        remote_app_name="remote-sender",
        remote_app_data={"cmr_data": '{"app_name": "sender", "juju_model_name": "model-a"}'},
        remote_model_uuid="0f2c1f3e-6c1a-4e39-8a51-2d5a0c7b9e11",  # Juju: another model
    )
    # A cross-model relation whose sender has not announced itself yet, and one whose
    # announcement is broken: both fall back to the local alias in the local model.
    local = testing.Relation("inbound", remote_app_name="quiet")
    quiet = testing.Relation("provide-cmr-mesh", remote_app_name="quiet")
    broken_inbound = testing.Relation("inbound", remote_app_name="broken")
    broken = testing.Relation(
        "provide-cmr-mesh", remote_app_name="broken", remote_app_data={"cmr_data": '{"app_name"'}
    )
    out = ctx.run(
        ctx.on.relation_changed(cmr),
        state(mesh, inbound, cmr, local, quiet, broken_inbound, broken),
    )
    assert sources(published_policies(out, mesh)) == [
        ("model-a", "sender", "app"),
        (MODEL, "broken", "app"),
        (MODEL, "quiet", "app"),
    ]
    # The receiving side writes nothing on cross_model_mesh.
    assert out.get_relation(cmr.id).local_app_data == {}


def test_policies_follow_relations_being_broken():
    ctx = consumer_context([AppPolicy(relation="rela")])
    mesh = mesh_relation()
    rela_1 = testing.Relation("rela", remote_app_name="a1")
    rela_2 = testing.Relation("rela", remote_app_name="a2")
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh, rela_1, rela_2))
    assert len(published_policies(out, mesh)) == 2

    out = ctx.run(ctx.on.relation_broken(rela_1), out)
    assert sources(published_policies(out, mesh)) == [(MODEL, "a2", "app")]


@pytest.mark.parametrize("event", ["upgrade_charm", "leader_elected"])
def test_policies_rewritten_on_lifecycle_events(event: str):
    ctx = consumer_context([AppPolicy(relation="rela")])
    mesh = mesh_relation(local_app_data={"policies": "[]"})
    rela = testing.Relation("rela", remote_app_name="a")
    out = ctx.run(getattr(ctx.on, event)(), state(mesh, rela))
    assert sources(published_policies(out, mesh)) == [(MODEL, "a", "app")]


def test_non_leader_writes_nothing():
    ctx = consumer_context([AppPolicy(relation="rela")])
    mesh = mesh_relation(remote_app_data=provider_databag())
    cmr = testing.Relation("require-cmr-mesh", remote_app_name="receiver")
    rela = testing.Relation("rela", remote_app_name="a")
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh, cmr, rela, leader=False))
    assert out.get_relation(mesh.id).local_app_data == {}
    assert out.get_relation(cmr.id).local_app_data == {}


def test_no_mesh_relation_publishes_only_cmr_data():
    ctx = consumer_context([AppPolicy(relation="rela")])
    rela = testing.Relation("rela", remote_app_name="a")
    cmr = testing.Relation("require-cmr-mesh", remote_app_name="receiver")
    out = ctx.run(ctx.on.relation_created(rela), state(rela, cmr))
    assert out.get_relation(rela.id).local_app_data == {}
    assert json.loads(out.get_relation(cmr.id).local_app_data["cmr_data"]) == {
        "app_name": CONSUMER,
        "juju_model_name": MODEL,
    }


def test_deprecated_policy_is_published_as_an_app_policy():
    with pytest.warns(DeprecationWarning, match="Policy is deprecated"):
        policy = Policy(relation="rela", endpoints=[HTTP])
    ctx = consumer_context([policy])
    mesh = mesh_relation()
    rela = testing.Relation("rela", remote_app_name="a")
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh, rela))
    (published,) = published_policies(out, mesh)
    assert published["target_type"] == "app"
    assert published["endpoints"][0]["paths"] == ["/data"]


def test_policy_naming_an_undeclared_relation_fails_at_construction():
    ctx = consumer_context([AppPolicy(relation="not-declared")])
    with pytest.raises(testing.errors.UncaughtCharmError) as info:
        ctx.run(ctx.on.install(), state())
    error = info.value.__cause__
    assert isinstance(error, MeshDataError)
    assert "'not-declared'" in str(error)
    assert "declared: inbound, peers" in str(error)


class ReassigningCharm(ops.CharmBase):
    """Changes its policies at runtime, from config, then asks the library to republish."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.mesh = ServiceMeshConsumer(self, policies=[AppPolicy(relation="rela")])
        framework.observe(self.on.config_changed, self._on_config_changed)

    def _on_config_changed(self, _: ops.ConfigChangedEvent) -> None:
        if self.config.get("unit-only"):
            self.mesh.policies = [UnitPolicy(relation="rela", ports=[5000])]
        self.mesh.update_service_mesh()


def test_charm_can_reassign_policies_and_republish():
    ctx = testing.Context(
        ReassigningCharm,
        meta=CONSUMER_META,
        config={"options": {"unit-only": {"type": "boolean", "default": False}}},
        app_name=CONSUMER,
    )
    mesh = mesh_relation()
    rela = testing.Relation("rela", remote_app_name="a")
    out = ctx.run(ctx.on.config_changed(), state(mesh, rela))
    assert sources(published_policies(out, mesh)) == [(MODEL, "a", "app")]

    out = ctx.run(ctx.on.config_changed(), dataclasses.replace(out, config={"unit-only": True}))
    (policy,) = published_policies(out, mesh)
    assert (policy["target_type"], policy["endpoints"][0]["ports"]) == ("unit", [5000])


def test_consumer_without_cross_model_endpoints():
    meta = {
        "name": "minimal",
        "requires": {"service-mesh": {"interface": "service_mesh"}},
        "provides": {"api": {"interface": "http"}},
    }
    ctx = consumer_context([AppPolicy(relation="api")], meta=meta)
    mesh = mesh_relation()
    api = testing.Relation("api", remote_app_name="client")
    out = ctx.run(ctx.on.relation_created(api), state(mesh, api))
    (policy,) = published_policies(out, mesh)
    assert (policy["source_app_name"], policy["target_app_name"]) == ("client", "minimal")
