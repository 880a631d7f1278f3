"""What a charm declares, and the validation of the data models."""

from __future__ import annotations

import json
from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    CMRData,
    Endpoint,
    MeshDataError,
    MeshPolicy,
    MeshType,
    Method,
    Policy,
    PolicyTargetType,
    ServiceMeshProviderAppData,
    UnitPolicy,
    UnitPolicyError,
)


def test_endpoint_accepts_methods_as_members_or_names():
    endpoint = Endpoint(hosts=["a.example"], ports=[80, 443], methods=["GET", Method.post])
    assert endpoint.methods == [Method.get, Method.post]
    assert endpoint.to_dict() == {
        "hosts": ["a.example"],
        "ports": [80, 443],
        "methods": ["GET", "POST"],
        "paths": None,
    }
    assert endpoint.restricts_beyond_ports


def test_endpoint_with_only_ports_restricts_nothing_beyond_ports():
    assert not Endpoint(ports=[80]).restricts_beyond_ports
    assert not Endpoint(ports=[80], hosts=[], methods=[], paths=[]).restricts_beyond_ports


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"ports": [0]}, r"Endpoint.ports\[0\]: expected a port number 1-65535, got int 0"),
        ({"ports": [65536]}, r"Endpoint.ports\[0\]"),
        ({"ports": [True]}, r"Endpoint.ports\[0\].*bool"),
        ({"ports": ["80"]}, r"Endpoint.ports\[0\].*str \"80\""),
        ({"ports": 80}, r"Endpoint.ports: expected a list of port numbers, got int 80"),
        ({"methods": ["FETCH"]}, r"Endpoint.methods\[0\]: expected one of CONNECT .* TRACE"),
        ({"methods": "GET"}, r"Endpoint.methods: expected a list of HTTP methods"),
        ({"paths": [""]}, r"Endpoint.paths\[0\]: expected a non-empty string"),
        ({"hosts": "a.example"}, r"Endpoint.hosts: expected a list of strings"),
    ],
)
def test_endpoint_rejects_invalid_fields(kwargs: dict[str, Any], message: str):
    with pytest.raises(MeshDataError, match=message):
        Endpoint(**kwargs)


def test_app_policy_defaults():
    policy = AppPolicy(relation="rela")
    assert (policy.relation, policy.endpoints, policy.service) == ("rela", [], None)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"relation": ""}, "AppPolicy.relation: expected a relation name"),
        ({"relation": "rela", "endpoints": [{"ports": [80]}]}, r"AppPolicy.endpoints\[0\]"),
        ({"relation": "rela", "service": ""}, "AppPolicy.service"),
    ],
)
def test_app_policy_rejects_invalid_fields(kwargs: dict[str, Any], message: str):
    with pytest.raises(MeshDataError, match=message):
        AppPolicy(**kwargs)


def test_policy_is_a_deprecated_app_policy():
    with pytest.warns(DeprecationWarning, match="use AppPolicy"):
        policy = Policy(relation="rela", endpoints=[Endpoint(ports=[80])], service="svc")
    assert isinstance(policy, AppPolicy)
    assert (policy.relation, policy.endpoints, policy.service) == (
        "rela",
        [Endpoint(ports=[80])],
        "svc",
    )


@pytest.mark.parametrize("unsupported", ["methods", "paths", "hosts"])
def test_unit_policy_refuses_l7_restrictions_and_names_the_fix(unsupported: str):
    with pytest.raises(UnitPolicyError) as info:
        UnitPolicy(relation="rela", ports=[80], **{unsupported: ["x"]})
    message = str(info.value)
    assert unsupported in message
    assert "use AppPolicy" in message
    assert isinstance(info.value, ValueError)


def test_unit_policy_fields():
    assert UnitPolicy(relation="rela").ports is None
    assert UnitPolicy(relation="rela", ports=(8080, 8081)).ports == [8080, 8081]
    with pytest.raises(MeshDataError, match=r"UnitPolicy.ports\[0\]"):
        UnitPolicy(relation="rela", ports=[-1])
    with pytest.raises(MeshDataError, match=r"UnitPolicy\.relation"):
        UnitPolicy(relation=None)  # type: ignore[arg-type]


def _policy(**kwargs: Any) -> MeshPolicy:
    base: dict[str, Any] = {
        "source_namespace": "src-ns",
        "source_app_name": "src",
        "target_namespace": "dst-ns",
    }
    return MeshPolicy(**{**base, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "an app policy needs target_app_name or target_service"),
        (
            {"target_app_name": "dst", "target_selector_labels": {"a": "b"}},
            "cannot have target_selector_labels",
        ),
        (
            {"target_type": PolicyTargetType.unit, "target_service": "svc"},
            "a unit policy targets pods and cannot have target_service",
        ),
        (
            {
                "target_type": PolicyTargetType.unit,
                "target_app_name": "dst",
                "target_selector_labels": {"a": "b"},
            },
            "target_app_name or target_selector_labels, not both",
        ),
        ({"target_app_name": "dst", "target_type": "pod"}, "MeshPolicy.target_type"),
        ({"target_app_name": "dst", "source_app_name": ""}, "MeshPolicy.source_app_name"),
        (
            {"target_app_name": "dst", "endpoints": [{"ports": [80]}]},
            r"MeshPolicy.endpoints\[0\]: expected an Endpoint",
        ),
        (
            {"target_type": "unit", "target_selector_labels": {"a": 1}},
            "labels must map strings to strings",
        ),
    ],
)
def test_mesh_policy_validation(kwargs: dict[str, Any], message: str):
    with pytest.raises(MeshDataError, match=message):
        _policy(**kwargs)


@pytest.mark.parametrize(
    "endpoint",
    [Endpoint(methods=[Method.get]), Endpoint(paths=["/a"]), Endpoint(hosts=["h"], ports=[1])],
)
def test_unit_mesh_policy_with_l7_restrictions_is_a_unit_policy_error(endpoint: Endpoint):
    with pytest.raises(UnitPolicyError, match=r"endpoints\[0\]: a unit policy .* only restrict"):
        _policy(target_type="unit", target_app_name="dst", endpoints=[endpoint])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_app_name": "dst"},
        {"target_service": "svc"},
        {"target_type": "unit", "target_app_name": "dst"},
        {"target_type": "unit", "target_selector_labels": {"app": "dst"}},
        {"target_type": "unit", "target_app_name": "dst", "endpoints": [Endpoint(ports=[80])]},
    ],
)
def test_valid_mesh_policies_round_trip(kwargs: dict[str, Any]):
    policy = _policy(**kwargs)
    assert MeshPolicy.from_dict(policy.to_dict()) == policy
    assert MeshPolicy.model_validate(policy.model_dump()) == policy
    assert isinstance(policy.target_type, PolicyTargetType)


def test_mesh_policy_principal():
    assert _policy(target_app_name="dst").source_principal == "cluster.local/ns/src-ns/sa/src"


def test_cmr_data_round_trip_and_validation():
    data = CMRData(app_name="sender", juju_model_name="model-a")
    assert data.model_dump() == {"app_name": "sender", "juju_model_name": "model-a"}
    assert CMRData.from_dict(data.to_dict()) == data
    with pytest.raises(MeshDataError, match=r"cmr_data.juju_model_name"):
        CMRData.from_dict({"app_name": "sender"})
    with pytest.raises(MeshDataError, match=r"cmr_data: expected an object, got list"):
        CMRData.from_dict([])


def test_provider_app_data_validation():
    data = ServiceMeshProviderAppData(labels={"a": "b"}, mesh_type="istio")  # type: ignore[arg-type]
    assert data.mesh_type is MeshType.istio
    with pytest.raises(MeshDataError, match="mesh_type: expected one of istio, got 'linkerd'"):
        ServiceMeshProviderAppData(labels={}, mesh_type="linkerd")  # type: ignore[arg-type]
    with pytest.raises(MeshDataError, match="labels: expected an object of string labels"):
        ServiceMeshProviderAppData(labels=["a"], mesh_type=MeshType.istio)  # type: ignore[arg-type]
    # null is not "no labels" (which puts the whole model on the mesh): refused, on every path.
    with pytest.raises(
        MeshDataError, match="labels: expected an object of string labels, got null"
    ):
        ServiceMeshProviderAppData.load({"labels": "null", "mesh_type": '"istio"'})
    with pytest.raises(MeshDataError, match="got null"):
        ServiceMeshProviderAppData.from_model_dict({"labels": None, "mesh_type": "istio"})
    assert ServiceMeshProviderAppData.load({"labels": "{}", "mesh_type": '"istio"'}).labels == {}


def test_mesh_policy_wire_form_details():
    wire = _policy(target_app_name="dst").to_dict()
    assert MeshPolicy.from_dict({**wire, "endpoints": None}).endpoints == []
    assert _policy(target_app_name="dst").model_dump_json() == json.dumps(
        wire, separators=(",", ":")
    )
