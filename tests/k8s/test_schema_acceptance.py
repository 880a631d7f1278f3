"""Every manifest our builders produce is accepted by the real CRD schema, with strict validation.

``fieldValidation=Strict`` turns an unknown or duplicated field into an error instead of a silent
drop, so a 201 here proves the object is stored exactly as built. The requests are server-side dry
runs: they go through decoding, defaulting, schema and CEL validation and admission, and store
nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    Method,
    PolicyTargetType,
    build_authorization_policies,
    build_authorization_policy,
    get_default_labels,
)
from support.kube_server import KubeServer, ensure_namespace

NS = "model-a"
OTHER_NS = "model-b"


def _policy(**values: Any) -> MeshPolicy:
    base: dict[str, Any] = {
        "source_namespace": OTHER_NS,
        "source_app_name": "sender1",
        "target_namespace": NS,
    }
    return MeshPolicy(**{**base, **values})


POLICIES = {
    "app-full-endpoint": _policy(
        target_app_name="receiver1",
        endpoints=[
            Endpoint(
                hosts=["receiver1.example.com"],
                ports=[8080, 8081],
                methods=[Method.get, Method.post],
                paths=["/foo", "/bar/*"],
            )
        ],
    ),
    "app-every-method": _policy(
        target_app_name="receiver1", endpoints=[Endpoint(methods=list(Method))]
    ),
    "app-target-service": _policy(
        target_service="receiver1-custom", endpoints=[Endpoint(ports=[80])]
    ),
    "app-several-endpoints": _policy(
        target_app_name="receiver1",
        endpoints=[Endpoint(ports=[8080], paths=["/a"]), Endpoint(ports=[9090], methods=["PUT"])],
    ),
    "app-no-endpoints": _policy(target_app_name="receiver1"),
    "app-unrestricted-endpoint": _policy(target_app_name="receiver1", endpoints=[Endpoint()]),
    "unit-by-app": _policy(
        target_app_name="receiver1",
        target_type=PolicyTargetType.unit,
        endpoints=[Endpoint(ports=[8080, 8081])],
    ),
    "unit-by-selector": _policy(
        target_selector_labels={"app.kubernetes.io/name": "receiver1", "tier": "x"},
        target_type=PolicyTargetType.unit,
        endpoints=[Endpoint(ports=[8080])],
    ),
    "unit-no-endpoints": _policy(target_app_name="receiver1", target_type=PolicyTargetType.unit),
    "long-names": _policy(
        source_app_name="s" * 60,
        source_namespace="n" * 60,
        target_app_name="t" * 60,
        endpoints=[Endpoint(ports=[1])],
    ),
}


@pytest.fixture(scope="module")
def model_namespace(kube: KubeServer) -> str:
    with kube.admin_client() as client:
        ensure_namespace(client, NS)
    return NS


def assert_accepted(kube: KubeServer, manifest: dict[str, Any]) -> None:
    status, body = kube.strict_create(manifest)
    assert status == 201, f"{manifest['kind']} refused ({status}): {body}"
    assert body["spec"] == manifest["spec"], "the API changed the spec it was given"
    for key in ("labels", "annotations"):
        wanted = manifest["metadata"].get(key) or {}
        assert (body["metadata"].get(key) or {}) == wanted


@pytest.mark.usefixtures("model_namespace")
@pytest.mark.parametrize("name", list(POLICIES))
def test_authorization_policy_accepted(kube: KubeServer, name: str):
    manifest = build_authorization_policy(
        POLICIES[name],
        labels=get_default_labels("beacon", NS),
        annotations={"charms.canonical.com/requested-by": "sender1"},
    )
    assert_accepted(kube, manifest)


@pytest.mark.usefixtures("model_namespace")
def test_all_policies_at_once_accepted(kube: KubeServer):
    for manifest in build_authorization_policies(POLICIES.values()):
        assert_accepted(kube, manifest)


@pytest.mark.usefixtures("model_namespace")
def test_strictness_is_real(kube: KubeServer):
    """A control: the same check refuses a field the schema does not know."""
    manifest = build_authorization_policy(POLICIES["app-full-endpoint"])
    manifest["spec"]["rules"][0]["to"][0]["operation"]["verbs"] = ["GET"]
    status, body = kube.strict_create(manifest)
    assert status in (400, 422), body
    assert "unknown field" in body["message"]
