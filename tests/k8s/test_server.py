"""The tier itself: the server answers, RBAC restricts like Juju, strict validation, accounting."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from lightkube import ApiError, Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import ConfigMap, Namespace
from support.kube_server import KubeServer, KubeServerError, count_requests, count_writes


def test_crds_are_served(admin: Client):
    names = {crd.metadata.name for crd in admin.list(CustomResourceDefinition) if crd.metadata}
    assert "authorizationpolicies.security.istio.io" in names
    assert "gateways.gateway.networking.k8s.io" in names


def test_untrusted_app_manages_its_own_namespace(
    namespace: str, namespace_admin: Callable[[str, str], Client]
):
    app = namespace_admin(namespace, "receiver")
    app.apply(ConfigMap(metadata=ObjectMeta(name="mine"), data={"a": "b"}))
    assert app.get(ConfigMap, "mine").data == {"a": "b"}


@pytest.mark.parametrize(
    "action",
    [
        pytest.param(lambda c, other: c.get(Namespace, other), id="get-namespace"),
        pytest.param(lambda c, other: list(c.list(CustomResourceDefinition)), id="list-crds"),
        pytest.param(lambda c, other: list(c.list(ConfigMap, namespace=other)), id="other-ns"),
        pytest.param(
            lambda c, other: c.patch(Namespace, other, {"metadata": {"labels": {"x": "y"}}}),
            id="label-namespace",
        ),
    ],
)
def test_untrusted_app_is_refused_outside_its_namespace(
    admin: Client, namespace: str, namespace_admin: Callable[[str, str], Client], action
):
    other = f"{namespace}-other"
    admin.create(Namespace(metadata=ObjectMeta(name=other)))
    app = namespace_admin(namespace, "receiver")
    with pytest.raises(ApiError) as raised:
        action(app, other)
    assert raised.value.status.code == 403


def test_strict_validation_rejects_unknown_fields(kube: KubeServer, namespace: str):
    policy = {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": namespace},
        "spec": {"rules": [{"to": [{"operation": {"ports": ["8080"]}}]}]},
    }
    status, body = kube.strict_create(policy)
    assert status == 201, body
    policy["spec"]["rules"][0]["to"][0]["operation"]["port"] = "8080"  # typo: "port"
    status, body = kube.strict_create(policy)
    assert status in (400, 422), body
    assert "unknown field" in body["message"], body


def test_request_counts_see_writes_and_reads(kube: KubeServer, admin: Client, namespace: str):
    before = kube.request_counts()
    admin.create(ConfigMap(metadata=ObjectMeta(name="counted", namespace=namespace)))
    admin.get(ConfigMap, "counted", namespace=namespace)
    after = kube.request_counts()
    assert count_writes(before, after, resource="configmaps") == 1
    assert count_requests(before, after, verbs=["GET"], resource="configmaps") == 1


def test_accounting_leaves_out_the_servers_own_lease_renewals(kube: KubeServer):
    # The apiserver renews its identity Lease every 10 s on its own: a window that long must still
    # count no write, or every "writes nothing" assertion fails on a slow machine.
    before, mark = kube.request_counts(), kube.audit_mark()
    time.sleep(11)
    assert count_writes(before, kube.request_counts()) == 0
    renewals = kube.writes_since(mark, include_server=True)
    assert any("/leases/apiserver-" in write.uri for write in renewals), renewals
    assert kube.writes_since(mark, settle=0) == []


def test_audit_names_each_write_with_its_body(kube: KubeServer, admin: Client, namespace: str):
    mark = kube.audit_mark()
    admin.create(ConfigMap(metadata=ObjectMeta(name="told", namespace=namespace), data={"a": "b"}))
    (write,) = kube.writes_since(mark)
    assert (write.verb, write.code) == ("create", 201)
    assert write.uri.startswith(f"/api/v1/namespaces/{namespace}/configmaps")
    assert write.body["data"] == {"a": "b"}


def test_cpu_seconds_count_the_servers_work(kube: KubeServer, admin: Client, namespace: str):
    before = kube.cpu_seconds()
    assert set(before) == {"etcd", "kube-apiserver"}, before
    for index in range(100):
        admin.create(ConfigMap(metadata=ObjectMeta(name=f"busy{index}", namespace=namespace)))
    after = kube.cpu_seconds()
    # A hundred creates cost the apiserver well over a clock tick (10 ms) of CPU.
    assert after["kube-apiserver"] - before["kube-apiserver"] > 0.01, (before, after)
    assert after["etcd"] >= before["etcd"], (before, after)


def test_a_server_without_audit_says_so_when_asked_for_its_writes(kube: KubeServer):
    quiet = KubeServer.start(kube.cache_dir, audit=False)
    try:
        client = quiet.admin_client()
        client.create(ConfigMap(metadata=ObjectMeta(name="unaudited", namespace="default")))
        with pytest.raises(KubeServerError, match="audit=True"):
            quiet.writes_since(0, settle=0)
        assert not quiet.audit_log.exists()
    finally:
        quiet.stop()
