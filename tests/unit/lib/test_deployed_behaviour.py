"""What the deployed (pydantic-based) releases of the library do, pinned one behaviour at a time.

Each expected value below is what those releases return for the same call; charms written
against them keep working. Where this library adds a better behaviour it has a new name
(``mesh_ready``), and the old name keeps the old meaning.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Iterator
from typing import Any

import ops
import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    CMRData,
    Endpoint,
    MeshDataError,
    MeshPolicy,
    MeshType,
    Method,
    PolicyResourceManager,
    PolicyTargetType,
    ServiceMeshProviderAppData,
    UnitPolicy,
    get_data_from_cmr_relation,
    get_default_labels,
    label_configmap_name_template,
)
from charms.istio_beacon_k8s.v0.service_mesh import Policy as DeprecatedPolicy
from juju_objects import KUBE_MODEL
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ConfigMap
from mesh_charms import (
    CONSUMER_META,
    consumer_context,
    mesh_relation,
    provider_context,
    provider_databag,
    state,
)
from ops import testing
from support.fake_kube import FakeKubeServer

# -- ServiceMeshConsumer.enabled -------------------------------------------------------------


def _enabled_during(event_name: str, relation: testing.Relation | None) -> bool:
    ctx = consumer_context()
    relations = [relation] if relation is not None else []
    if event_name == "update_status":
        event = ctx.on.update_status()
    elif event_name == "relation_created":
        assert relation is not None
        event = ctx.on.relation_created(relation)
    else:
        assert relation is not None
        event = ctx.on.relation_broken(relation)
    with ctx(event, state(*relations)) as manager:
        result = manager.charm.mesh.enabled  # type: ignore[attr-defined]
        manager.run()
    return bool(result)


def test_enabled_is_false_without_the_mesh_relation():
    assert _enabled_during("update_status", None) is False


def test_enabled_is_true_as_soon_as_the_relation_exists_before_the_provider_writes():
    assert _enabled_during("relation_created", mesh_relation()) is True
    assert _enabled_during("update_status", mesh_relation()) is True


def test_enabled_is_false_during_relation_broken():
    assert _enabled_during("relation_broken", mesh_relation()) is False


def test_mesh_ready_needs_the_providers_data():
    ctx = consumer_context()
    empty, published = mesh_relation(), mesh_relation(remote_app_data=provider_databag())
    with ctx(ctx.on.update_status(), state(empty)) as manager:
        assert manager.charm.mesh.mesh_ready is False  # type: ignore[attr-defined]
    with ctx(ctx.on.update_status(), state(published)) as manager:
        assert manager.charm.mesh.mesh_ready is True  # type: ignore[attr-defined]


# -- model_dump / model_dump_json / model_validate -------------------------------------------


def _mesh_policy(**kwargs: Any) -> MeshPolicy:
    fields: dict[str, Any] = {
        "source_namespace": "src-model",
        "source_app_name": "sender",
        "target_namespace": "dst-model",
        "target_app_name": "receiver",
        **kwargs,
    }
    return MeshPolicy(**fields)


def test_mesh_policy_model_dump_keeps_enum_members_in_python_mode():
    policy = _mesh_policy(endpoints=[Endpoint(ports=[80], methods=[Method.get])])
    dumped = policy.model_dump()
    assert list(dumped) == [
        "source_namespace",
        "source_app_name",
        "target_namespace",
        "target_app_name",
        "target_selector_labels",
        "target_service",
        "target_type",
        "endpoints",
    ]
    assert dumped["target_type"] is PolicyTargetType.app
    assert dumped["endpoints"] == [
        {"hosts": None, "ports": [80], "methods": [Method.get], "paths": None}
    ]
    assert dumped["endpoints"][0]["methods"][0] is Method.get
    # What the deployed consumer writes to the relation: json.dumps of this dump.
    assert json.loads(json.dumps(dumped))["target_type"] == "app"


def test_mesh_policy_model_dump_json_mode_and_exclusions():
    policy = _mesh_policy(endpoints=[Endpoint(ports=[80])])
    assert policy.model_dump(mode="json")["target_type"] == "app"
    assert policy.model_dump(exclude_none=True) == {
        "source_namespace": "src-model",
        "source_app_name": "sender",
        "target_namespace": "dst-model",
        "target_app_name": "receiver",
        "target_type": PolicyTargetType.app,
        "endpoints": [{"ports": [80]}],
    }
    # Only what was given: target_type and the endpoint's unset fields are left out.
    assert policy.model_dump(exclude_unset=True) == {
        "source_namespace": "src-model",
        "source_app_name": "sender",
        "target_namespace": "dst-model",
        "target_app_name": "receiver",
        "endpoints": [{"ports": [80]}],
    }
    assert _mesh_policy().model_dump(exclude_defaults=True) == {
        "source_namespace": "src-model",
        "source_app_name": "sender",
        "target_namespace": "dst-model",
        "target_app_name": "receiver",
    }
    assert policy.model_dump(include={"source_app_name", "target_type"}) == {
        "source_app_name": "sender",
        "target_type": PolicyTargetType.app,
    }
    assert "endpoints" not in policy.model_dump(exclude={"endpoints"})
    with pytest.raises(ValueError, match="mode"):
        policy.model_dump(mode="yaml")


def test_model_dump_json_is_compact():
    # (Non-ASCII text cannot reach these models any more: every field refuses it on construction.)
    policy = _mesh_policy(endpoints=[Endpoint(paths=["/cafe"])])
    text = policy.model_dump_json()
    assert text == (
        '{"source_namespace":"src-model","source_app_name":"sender","target_namespace":'
        '"dst-model","target_app_name":"receiver","target_selector_labels":null,'
        '"target_service":null,"target_type":"app","endpoints":[{"hosts":null,"ports":null,'
        '"methods":null,"paths":["/cafe"]}]}'
    )
    assert policy.model_dump_json(indent=2).startswith('{\n  "source_namespace": "src-model",')
    assert json.loads(policy.model_dump_json(exclude_none=True))["endpoints"] == [
        {"paths": ["/cafe"]}
    ]


def test_model_validate_takes_defaults_ignores_unknown_keys_and_returns_instances_as_is():
    policy = MeshPolicy.model_validate(
        {
            "source_namespace": "src-model",
            "source_app_name": "sender",
            "target_namespace": "dst-model",
            "target_app_name": "receiver",
            "endpoints": [{"ports": [80]}],
            "from_a_newer_release": True,
        }
    )
    assert policy.target_type is PolicyTargetType.app
    assert policy.endpoints == [Endpoint(ports=[80])]
    assert policy.model_fields_set == {
        "source_namespace",
        "source_app_name",
        "target_namespace",
        "target_app_name",
        "endpoints",
    }
    assert policy.model_dump(exclude_unset=True)["endpoints"] == [{"ports": [80]}]
    assert MeshPolicy.model_validate(policy) is policy
    assert MeshPolicy.model_validate(policy.model_dump()) == policy
    assert MeshPolicy.model_validate_json(policy.model_dump_json()) == policy


def test_model_validate_errors_are_value_errors_as_pydantics_are():
    with pytest.raises(ValueError, match="source_app_name"):
        MeshPolicy.model_validate({"source_namespace": "a", "target_namespace": "a"})
    with pytest.raises(ValueError, match="target_selector_labels"):
        MeshPolicy.model_validate(
            {
                "source_namespace": "a",
                "source_app_name": "b",
                "target_namespace": "a",
                "target_app_name": "c",
                "target_selector_labels": {"x": "y"},
            }
        )
    with pytest.raises(MeshDataError):
        CMRData.model_validate(["not", "a", "dict"])


def test_declarations_dump_and_validate():
    endpoint = Endpoint(ports=[8080], methods=[Method.get], paths=["/data"])
    app = AppPolicy(relation="data", endpoints=[endpoint])
    assert app.model_dump() == {
        "relation": "data",
        "endpoints": [
            {"hosts": None, "ports": [8080], "methods": [Method.get], "paths": ["/data"]}
        ],
        "service": None,
    }
    assert AppPolicy.model_validate(app.model_dump(mode="json")) == app
    unit = UnitPolicy(relation="metrics", ports=[9090])
    assert unit.model_dump() == {"relation": "metrics", "ports": [9090]}
    assert unit.model_dump_json() == '{"relation":"metrics","ports":[9090]}'
    # pydantic ignored keys a model does not have: so does model_validate.
    assert UnitPolicy.model_validate({"relation": "m", "ports": [1], "methods": ["GET"]}) == (
        UnitPolicy(relation="m", ports=[1])
    )
    assert Endpoint.model_validate({"ports": [80]}).model_fields_set == {"ports"}
    assert Endpoint().model_dump() == {
        "hosts": None,
        "ports": None,
        "methods": None,
        "paths": None,
    }


def test_policy_is_deprecated_and_dumps_like_app_policy():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        policy = DeprecatedPolicy(relation="data", endpoints=[Endpoint(ports=[80])])
    assert [warning.category for warning in caught] == [DeprecationWarning]
    assert policy.model_dump() == {
        "relation": "data",
        "endpoints": [{"hosts": None, "ports": [80], "methods": None, "paths": None}],
        "service": None,
    }
    assert policy.model_fields_set == {"relation", "endpoints"}
    # pydantic's model_validate never ran __init__: no warning there.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DeprecatedPolicy.model_validate(policy.model_dump()) == policy


def test_provider_app_data_dump_as_the_deployed_provider_writes_it():
    data = ServiceMeshProviderAppData(
        labels={"istio.io/dataplane-mode": "ambient"}, mesh_type=MeshType.istio
    )
    dumped = data.model_dump(mode="json", by_alias=True, exclude_defaults=True, round_trip=True)
    assert dumped == {"labels": {"istio.io/dataplane-mode": "ambient"}, "mesh_type": "istio"}
    assert {key: json.dumps(value) for key, value in dumped.items()} == provider_databag(
        {"istio.io/dataplane-mode": "ambient"}
    )
    assert data.model_dump()["mesh_type"] is MeshType.istio
    assert ServiceMeshProviderAppData.model_validate(dumped) == data
    with pytest.raises(MeshDataError, match="mesh_type: missing"):
        ServiceMeshProviderAppData.model_validate({"labels": {}})
    with pytest.raises(MeshDataError, match="labels: missing"):
        ServiceMeshProviderAppData.model_validate({"mesh_type": "istio"})


def test_cmr_data_dump_and_validate():
    data = CMRData(app_name="sender", juju_model_name="model-a")
    assert data.model_dump() == {"app_name": "sender", "juju_model_name": "model-a"}
    assert data.model_dump_json() == '{"app_name":"sender","juju_model_name":"model-a"}'
    assert CMRData.model_validate({"app_name": "sender", "juju_model_name": "model-a"}) == data


def test_enum_values_and_defaults():
    assert [method.value for method in Method] == [
        "CONNECT",
        "DELETE",
        "GET",
        "HEAD",
        "OPTIONS",
        "PATCH",
        "POST",
        "PUT",
        "TRACE",
    ]
    assert [member.value for member in MeshType] == ["istio"]
    assert [member.value for member in PolicyTargetType] == ["app", "unit"]
    assert Method.get == "GET"
    assert isinstance(Method.get, str)
    assert Endpoint() == Endpoint(hosts=None, ports=None, methods=None, paths=None)
    assert UnitPolicy(relation="r").ports is None
    assert AppPolicy(relation="r", endpoints=[]).service is None
    assert _mesh_policy().target_type is PolicyTargetType.app
    assert _mesh_policy().endpoints == []
    assert label_configmap_name_template.format(app_name="app") == "juju-service-mesh-app-labels"
    assert issubclass(MeshDataError, ValueError)


def test_get_data_from_cmr_relation():
    remote = testing.Relation(
        "provide-cmr-mesh",
        "cross_model_mesh",
        remote_app_name="alias",
        remote_app_data={"cmr_data": json.dumps({"app_name": "real", "juju_model_name": "m"})},
    )
    silent = testing.Relation("provide-cmr-mesh", "cross_model_mesh", remote_app_name="quiet")
    ctx = consumer_context()
    with ctx(ctx.on.update_status(), state(remote, silent)) as manager:
        relations = manager.charm.model.relations["provide-cmr-mesh"]
        assert get_data_from_cmr_relation(relations) == {
            "alias": CMRData(app_name="real", juju_model_name="m")
        }


# -- PolicyResourceManager.reconcile(raw_policies=...) ----------------------------------------

OWNER = "owner"
AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)


class _OwnerCharm(ops.CharmBase):
    """A charm that manages AuthorizationPolicies itself."""


@pytest.fixture
def manager(kube: FakeKubeServer) -> Iterator[PolicyResourceManager]:
    ctx = testing.Context(_OwnerCharm, meta={"name": OWNER}, app_name=OWNER)
    with ctx(ctx.on.update_status(), testing.State(model=testing.Model(name=KUBE_MODEL))) as mgr:
        yield PolicyResourceManager(mgr.charm, kube.client(field_manager=OWNER))


def test_raw_policies_as_lightkube_resources(manager: PolicyResourceManager, kube: FakeKubeServer):
    raw = AuthorizationPolicy(
        metadata=ObjectMeta(name="allow-prometheus", namespace=KUBE_MODEL),
        spec={
            "selector": {"matchLabels": {"app.kubernetes.io/name": OWNER}},
            "rules": [{"from": [{"source": {"principals": ["cluster.local/ns/cos/sa/prom"]}}]}],
        },
    )
    summary = manager.reconcile([], MeshType.istio, raw_policies=[raw])

    assert summary.created == [f"{KUBE_MODEL}/allow-prometheus"]
    stored = kube.get("authorizationpolicies", KUBE_MODEL, "allow-prometheus")
    assert stored is not None
    assert stored["spec"] == raw.to_dict()["spec"]
    assert get_default_labels(OWNER, KUBE_MODEL).items() <= stored["metadata"]["labels"].items()
    # The same object again writes nothing; leaving it out deletes it.
    assert not manager.reconcile([], MeshType.istio, raw_policies=[raw]).changed
    assert manager.reconcile([], MeshType.istio).deleted == [f"{KUBE_MODEL}/allow-prometheus"]


def test_raw_policies_of_another_kind_are_a_type_error(manager: PolicyResourceManager):
    config_map = ConfigMap(metadata=ObjectMeta(name="x", namespace=KUBE_MODEL))
    with pytest.raises(TypeError, match="ConfigMap"):
        manager.reconcile([], MeshType.istio, raw_policies=[config_map])
    with pytest.raises(TypeError, match="neither a dict nor a lightkube resource"):
        manager.reconcile([], MeshType.istio, raw_policies=[object()])


def test_dataclass_fields_are_the_pydantic_fields():
    names = {
        Endpoint: ["hosts", "ports", "methods", "paths"],
        AppPolicy: ["relation", "endpoints", "service"],
        UnitPolicy: ["relation", "ports"],
        MeshPolicy: list(_mesh_policy().model_dump()),
        CMRData: ["app_name", "juju_model_name"],
        ServiceMeshProviderAppData: ["labels", "mesh_type"],
    }
    for model, fields in names.items():
        assert [item.name for item in dataclasses.fields(model)] == fields


def test_the_provider_republishes_its_labels_on_config_changed():
    # The deployed provider observes config-changed: a provider whose labels come from its config
    # (built anew each hook) has them published without calling update_relations() itself.
    ctx = provider_context({"istio.io/dataplane-mode": "ambient", "from-config": "v2"})
    relation = testing.Relation(
        "service-mesh", remote_app_name="consumer", local_app_data=provider_databag()
    )
    out = ctx.run(ctx.on.config_changed(), testing.State(leader=True, relations=[relation]))
    assert json.loads(out.get_relation(relation.id).local_app_data["labels"]) == {
        "istio.io/dataplane-mode": "ambient",
        "from-config": "v2",
    }


# -- names: refuse what is unsafe, accept what the deployed library accepted -------------------


def _provider_reads(policies: list[dict[str, Any]]) -> tuple[list[MeshPolicy], list[str]]:
    ctx = provider_context()
    relation = testing.Relation(
        "service-mesh",
        remote_app_name="consumer",
        remote_app_data={"policies": json.dumps(policies)},
    )
    with ctx(ctx.on.update_status(), testing.State(leader=True, relations=[relation])) as manager:
        provider = manager.charm.mesh  # type: ignore[attr-defined]
        return provider.mesh_info(), [
            str(request.error) for request in provider.rejected_relations()
        ]


def _wire(source_app: str, source_namespace: str) -> dict[str, Any]:
    return {
        "source_namespace": source_namespace,
        "source_app_name": source_app,
        "target_namespace": "my-model",
        "target_app_name": "consumer",
        "target_selector_labels": None,
        "target_service": None,
        "target_type": "app",
        "endpoints": [{"hosts": None, "ports": [80], "methods": None, "paths": None}],
    }


def test_mesh_info_returns_names_that_are_kubernetes_names_if_not_juju_names():
    """``app1-1``: no Juju application name, yet a service account (the deployed library)."""
    info, refused = _provider_reads([_wire("app1-1", "namespace1-1"), _wire("a.b", "m")])
    assert refused == []
    assert [(p.source_app_name, p.source_namespace) for p in info] == [
        ("app1-1", "namespace1-1"),
        ("a.b", "m"),
    ]
    assert info[0].source_principal == "cluster.local/ns/namespace1-1/sa/app1-1"


@pytest.mark.parametrize(
    ("app", "namespace", "field"),
    [
        ("*", "m", "source_app_name"),
        ("app*", "m", "source_app_name"),
        ("app?", "m", "source_app_name"),
        ("app/other", "m", "source_app_name"),
        ("app\n", "m", "source_app_name"),
        ("app\x1b[31m", "m", "source_app_name"),
        ("App", "m", "source_app_name"),
        ("-app", "m", "source_app_name"),
        ("app-", "m", "source_app_name"),
        ("a" * 254, "m", "source_app_name"),
        ("app", "*", "source_namespace"),
        ("app", "m.x", "source_namespace"),
        ("app", "m-", "source_namespace"),
        ("app", "m" * 64, "source_namespace"),
        ("app", "ns/sa/x", "source_namespace"),
    ],
)
def test_names_that_cannot_be_a_kubernetes_name_are_refused(app: str, namespace: str, field: str):
    info, refused = _provider_reads([_wire(app, namespace)])
    assert info == []
    [reason] = refused
    assert f"policies[0].{field}" in reason


def test_a_consumer_without_the_mesh_relation_declared_gets_a_mesh_data_error():
    meta = {**CONSUMER_META, "requires": {"require-cmr-mesh": {"interface": "cross_model_mesh"}}}
    ctx = consumer_context(meta=meta)
    with pytest.raises(testing.errors.UncaughtCharmError) as raised:
        ctx.run(ctx.on.update_status(), testing.State())
    error = raised.value.__cause__
    assert isinstance(error, MeshDataError)
    assert "'service-mesh'" in str(error)
    assert "does not declare" in str(error)
