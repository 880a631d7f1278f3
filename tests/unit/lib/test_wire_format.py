"""Byte-level compatibility with the deployed ``service_mesh`` and ``cross_model_mesh`` peers.

The expected strings are the bytes the deployed charms exchange, written out by hand; do not
regenerate them from the library.
"""

from __future__ import annotations

import json

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    Endpoint,
    MeshPolicy,
    MeshType,
    Method,
    PolicyTargetType,
    ServiceMeshProvider,
    UnitPolicy,
)
from mesh_charms import (
    MESH_LABELS,
    MODEL,
    consumer_context,
    mesh_relation,
    provider_context,
    state,
)
from ops import testing
from support.fake_kube import FakeKubeServer

# Consumers look for labels they may have put earlier: give them a (fake) cluster to ask.
pytestmark = pytest.mark.usefixtures("kube")

APP_POLICY_EXAMPLE = (
    '[{"source_namespace":"my-model","source_app_name":"remote_a","target_namespace":"my-model",'
    '"target_app_name":"consumer-charm","target_selector_labels":null,"target_service":null,'
    '"target_type":"app","endpoints":[{"hosts":[],"ports":[80],"methods":[],"paths":[]}]}]'
)
UNIT_POLICY_EXAMPLE = (
    '[{"source_namespace":"my-model","source_app_name":"remote_a","target_namespace":"my-model",'
    '"target_app_name":"consumer-charm","target_selector_labels":null,"target_service":null,'
    '"target_type":"unit","endpoints":[{"hosts":null,"ports":[8080],"methods":null,"paths":null}]}]'
)
UNIT_POLICY_NO_PORTS = (
    '[{"source_namespace":"my-model","source_app_name":"remote_a","target_namespace":"my-model",'
    '"target_app_name":"consumer-charm","target_selector_labels":null,"target_service":null,'
    '"target_type":"unit","endpoints":[]}]'
)

# What the deployed, pydantic-based library writes: json.dumps of model_dump(), so with spaces
# after separators, and possibly keys this version does not know.
DEPLOYED_CONSUMER_POLICIES = (
    '[{"source_namespace": "other", "source_app_name": "sender", "target_namespace": "other", '
    '"target_app_name": "receiver", "target_selector_labels": null, "target_service": null, '
    '"target_type": "app", "endpoints": [{"hosts": null, "ports": [8080, 8081], '
    '"methods": ["GET", "POST"], "paths": ["/foo", "/bar/"]}], "future_key": 1}, '
    '{"source_namespace": "other", "source_app_name": "sender2", "target_namespace": "other", '
    '"target_app_name": "receiver", "target_selector_labels": null, "target_service": null, '
    '"target_type": "unit", "endpoints": [{"hosts": null, "ports": [8080], "methods": null, '
    '"paths": null}]}]'
)
DEPLOYED_PROVIDER_DATABAG = {
    "labels": '{"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": '
    '"mymodel-beacon-waypoint", "istio.io/use-waypoint-namespace": "mymodel"}',
    "mesh_type": '"istio"',
}


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (
            AppPolicy(
                relation="rela", endpoints=[Endpoint(hosts=[], ports=[80], methods=[], paths=[])]
            ),
            APP_POLICY_EXAMPLE,
        ),
        (UnitPolicy(relation="rela", ports=[8080]), UNIT_POLICY_EXAMPLE),
        (UnitPolicy(relation="rela"), UNIT_POLICY_NO_PORTS),
        (UnitPolicy(relation="rela", ports=[]), UNIT_POLICY_NO_PORTS),
    ],
)
def test_consumer_policies_value_is_byte_identical(policy: AppPolicy | UnitPolicy, expected: str):
    ctx = consumer_context([policy])
    mesh = mesh_relation()
    rela = testing.Relation("rela", remote_app_name="remote_a")
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh, rela))
    assert out.get_relation(mesh.id).local_app_data == {"policies": expected}


def test_consumer_without_policies_publishes_an_empty_list():
    ctx = consumer_context()
    mesh = mesh_relation()
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh))
    assert out.get_relation(mesh.id).local_app_data == {"policies": "[]"}


def test_cmr_data_written_when_require_cmr_mesh_is_created():
    ctx = consumer_context()
    cmr = testing.Relation("require-cmr-mesh", "cross_model_mesh", remote_app_name="receiver")
    out = ctx.run(ctx.on.relation_created(cmr), state(cmr))
    assert out.get_relation(cmr.id).local_app_data == {
        "cmr_data": '{"app_name": "consumer-charm", "juju_model_name": "my-model"}'
    }


def test_provider_databag_is_byte_identical():
    ctx = provider_context({"istio.io/dataplane-mode": "ambient"})
    mesh = testing.Relation("service-mesh", "service_mesh", remote_app_name="consumer-charm")
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh))
    databag = out.get_relation(mesh.id).local_app_data
    assert databag == {"labels": '{"istio.io/dataplane-mode": "ambient"}', "mesh_type": '"istio"'}
    assert len(databag["mesh_type"]) == 7


def test_provider_publishes_empty_labels_when_the_whole_model_is_on_the_mesh():
    ctx = provider_context({})
    mesh = testing.Relation("service-mesh", "service_mesh", remote_app_name="consumer-charm")
    out = ctx.run(ctx.on.relation_created(mesh), state(mesh))
    assert out.get_relation(mesh.id).local_app_data == {"labels": "{}", "mesh_type": '"istio"'}


def test_consumer_reads_a_deployed_provider_databag():
    ctx = consumer_context()
    mesh = mesh_relation(remote_app_data=DEPLOYED_PROVIDER_DATABAG)
    with ctx(ctx.on.relation_changed(mesh), state(mesh)) as manager:
        consumer = manager.charm.mesh  # type: ignore[attr-defined]
        assert consumer.enabled
        assert consumer.mesh_type() is MeshType.istio
        assert consumer.labels() == {
            "istio.io/dataplane-mode": "ambient",
            "istio.io/use-waypoint": "mymodel-beacon-waypoint",
            "istio.io/use-waypoint-namespace": "mymodel",
        }
        manager.run()


def test_consumer_labels_are_every_label_the_provider_published():
    """labels() is for charms that put them themselves: a sidecar mesh's label too (the seed's)."""
    published = {**MESH_LABELS, "istio-injection": "enabled"}
    ctx = consumer_context()
    mesh = mesh_relation(remote_app_data={"labels": json.dumps(published), "mesh_type": '"istio"'})
    with ctx(ctx.on.relation_changed(mesh), state(mesh)) as manager:
        consumer = manager.charm.mesh  # type: ignore[attr-defined]
        assert consumer.labels() == published
        manager.run()


@pytest.mark.parametrize(
    "databag",
    [
        {},
        {"labels": "{not json"},  # a broken provider is reported as no mesh, not as a crash
        {"labels": json.dumps(MESH_LABELS)},  # mesh_type is required
        {"labels": json.dumps(MESH_LABELS), "mesh_type": '"linkerd"'},
    ],
)
def test_consumer_facing_no_usable_provider_data_has_no_mesh(
    databag: dict[str, str], kube: FakeKubeServer
):
    ctx = consumer_context()
    mesh = mesh_relation(remote_app_data=databag)
    with ctx(ctx.on.relation_changed(mesh), state(mesh)) as manager:
        consumer = manager.charm.mesh  # type: ignore[attr-defined]
        assert consumer.labels() == {}
        assert consumer.mesh_type() is None
        assert consumer.enabled  # the relation exists: what the deployed releases mean by it
        assert not consumer.mesh_ready
        out = manager.run()
    assert out.app_status == testing.UnknownStatus()
    assert kube.write_count() == 0


def test_provider_reads_policies_written_by_the_deployed_library():
    ctx = provider_context()
    mesh = testing.Relation(
        "service-mesh",
        "service_mesh",
        remote_app_name="receiver",
        remote_app_data={"policies": DEPLOYED_CONSUMER_POLICIES},
    )
    with ctx(ctx.on.relation_changed(mesh), state(mesh)) as manager:
        provider: ServiceMeshProvider = manager.charm.mesh  # type: ignore[attr-defined]
        requests = provider.relation_requests()
        manager.run()
    assert [(r.app_name, r.error) for r in requests] == [("receiver", None)]
    app_policy, unit_policy = requests[0].policies
    assert app_policy == MeshPolicy(
        source_namespace="other",
        source_app_name="sender",
        target_namespace="other",
        target_app_name="receiver",
        endpoints=[
            Endpoint(
                ports=[8080, 8081], methods=[Method.get, Method.post], paths=["/foo", "/bar/"]
            )
        ],
    )
    assert unit_policy.target_type is PolicyTargetType.unit
    assert unit_policy.endpoints == [Endpoint(ports=[8080])]


def test_consumer_round_trip_through_the_provider():
    """What our consumer writes is what our provider reads."""
    consumer = consumer_context(
        [
            AppPolicy(relation="rela", endpoints=[Endpoint(ports=[80], methods=[Method.get])]),
            UnitPolicy(relation="relb", ports=[9090]),
        ]
    )
    mesh = mesh_relation()
    rela = testing.Relation("rela", remote_app_name="a")
    relb = testing.Relation("relb", remote_app_name="b")
    out = consumer.run(consumer.on.relation_created(mesh), state(mesh, rela, relb))
    written = out.get_relation(mesh.id).local_app_data["policies"]

    provider = provider_context()
    seen = testing.Relation(
        "service-mesh", remote_app_name="consumer-charm", remote_app_data={"policies": written}
    )
    with provider(provider.on.update_status(), state(seen)) as manager:
        policies = manager.charm.mesh.mesh_info()  # type: ignore[attr-defined]
        manager.run()
    assert [(p.source_app_name, p.target_type.value, p.target_namespace) for p in policies] == [
        ("a", "app", MODEL),
        ("b", "unit", MODEL),
    ]
