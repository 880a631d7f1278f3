"""The fake Kubernetes API behaves like the real one, as seen through lightkube."""

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import _http_status_code
from lightkube import ApiError, Client, operators
from lightkube.core.client import LabelSelector as Selector
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.core_v1 import ConfigMap, Namespace, Service
from lightkube.types import PatchType
from support.fake_kube import AUTHORIZATION_POLICY_CRD, GATEWAY_CRD, FakeKubeServer

AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer() as server:
        yield server


@pytest.fixture
def client(kube: FakeKubeServer) -> Client:
    return kube.client(field_manager="tester")


def config_map(name: str, labels: dict[str, str] | None = None, **data: str) -> ConfigMap:
    return ConfigMap(metadata=ObjectMeta(name=name, labels=labels), data=data or None)


def policy(name: str, namespace: str = "default") -> GenericNamespacedResource:
    return AuthorizationPolicy(
        metadata=ObjectMeta(name=name, namespace=namespace, labels={"owner": "x"}),
        spec={"action": "ALLOW", "rules": [{"to": [{"operation": {"ports": ["80"]}}]}]},
    )


def test_kubeconfig_from_the_environment_reaches_the_fake(
    kube: FakeKubeServer, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
    client = Client(field_manager="charm")  # never closed, as in a charm: must not warn

    client.create(config_map("from-env", k="v"))

    assert client.namespace == "default"
    assert kube.url.startswith("http://127.0.0.1:")
    assert {ns.metadata.name for ns in client.list(Namespace) if ns.metadata} >= {"default"}
    stored = kube.get("configmaps", "default", "from-env")
    assert stored is not None
    assert stored["data"] == {"k": "v"}
    assert stored["metadata"]["uid"]
    assert stored["metadata"]["creationTimestamp"]


def test_apply_that_changes_nothing_keeps_the_resource_version(
    kube: FakeKubeServer, client: Client
):
    first = client.apply(config_map("cm", {"a": "1"}, k="v"))
    again = client.apply(config_map("cm", {"a": "1"}, k="v"))
    changed = client.apply(config_map("cm", {"a": "2"}, k="v"))

    assert first.metadata
    assert again.metadata
    assert changed.metadata
    assert again.metadata.resourceVersion == first.metadata.resourceVersion
    assert int(changed.metadata.resourceVersion or 0) > int(first.metadata.resourceVersion or 0)
    assert kube.write_count() == 3
    assert [r.verb for r in kube.requests] == ["apply", "apply", "apply"]
    kube.reset_requests()
    assert kube.write_count() == 0


def test_apply_removes_what_the_manager_stopped_sending_but_not_others_fields(
    kube: FakeKubeServer, client: Client
):
    client.apply(config_map("cm", {"a": "1", "b": "1"}))
    client.apply(config_map("cm", {"c": "1"}), field_manager="other")

    client.apply(config_map("cm", {"a": "1"}))

    stored = kube.get("configmaps", "default", "cm")
    assert stored is not None
    assert stored["metadata"]["labels"] == {"a": "1", "c": "1"}


def test_apply_conflict_needs_force(kube: FakeKubeServer, client: Client):
    client.apply(config_map("cm", {"a": "1"}))

    with pytest.raises(ApiError) as raised:
        client.apply(config_map("cm", {"a": "2"}), field_manager="other")
    client.apply(config_map("cm", {"a": "2"}), field_manager="other", force=True)

    assert raised.value.status.code == 409
    assert raised.value.status.reason == "Conflict"
    stored = kube.get("configmaps", "default", "cm")
    assert stored is not None
    assert stored["metadata"]["labels"] == {"a": "2"}


def test_merge_patch_null_removes_a_label(kube: FakeKubeServer, client: Client):
    client.create(config_map("cm", {"a": "1", "b": "2"}))

    patched = client.patch(
        ConfigMap, "cm", {"metadata": {"labels": {"a": None}}}, patch_type=PatchType.MERGE
    )
    before = patched.metadata.resourceVersion if patched.metadata else None
    noop = client.patch(
        ConfigMap, "cm", {"metadata": {"labels": {"a": None}}}, patch_type=PatchType.MERGE
    )

    assert patched.metadata
    assert patched.metadata.labels == {"b": "2"}
    assert noop.metadata
    assert noop.metadata.resourceVersion == before


def raw_get(kube: FakeKubeServer, path: str) -> tuple[int, str | None, Any]:
    """GET ``path`` without lightkube: ``(status, Content-Type, body)``, a JSON body decoded."""
    status, content_type, body = kube.raw_response("GET", path)
    return status, content_type, json.loads(body) if content_type == JSON else body


PAGE_NOT_FOUND = (404, "text/plain; charset=utf-8", "404 page not found\n")
JSON = "application/json"
JSON_NOT_FOUND = (
    404,
    JSON,
    {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound",
        "details": {},
        "code": 404,
    },
)


def test_missing_crd_answers_a_plain_text_404_like_the_real_server():
    # What tests/k8s saw kube-apiserver v1.37 answer: not a JSON Status, so not an ApiError.
    with FakeKubeServer(crds={GATEWAY_CRD}) as kube:
        client = kube.client(field_manager="tester")
        calls: list[Callable[[], object]] = [
            lambda: client.get(AuthorizationPolicy, "p"),
            lambda: list(client.list(AuthorizationPolicy, namespace="*")),
            lambda: list(client.list(AuthorizationPolicy, namespace="default")),
            lambda: client.apply(policy("p")),
            lambda: client.delete(AuthorizationPolicy, "p"),
        ]
        for call in calls:
            with pytest.raises(Exception) as raised:  # noqa: PT011 (the HTTP library's error)
                call()
            assert not isinstance(raised.value, ApiError)
            assert _http_status_code(raised.value) == 404
        for path in (
            "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies",
            "/apis/security.istio.io/v1/authorizationpolicies",
            "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies/p",
        ):
            assert raw_get(kube, path) == PAGE_NOT_FOUND, path
        kube.install_crd(AUTHORIZATION_POLICY_CRD)
        assert list(client.list(AuthorizationPolicy)) == []


@pytest.mark.parametrize(
    ("path", "answer"),
    [
        # A group that only CRDs add, though one of its CRDs is installed.
        ("/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes", PAGE_NOT_FOUND),
        ("/apis/gateway.networking.k8s.io/v9/namespaces/default/gateways", PAGE_NOT_FOUND),
        ("/apis/example.com/v1/widgets", PAGE_NOT_FOUND),
        ("/nothing/here", PAGE_NOT_FOUND),
        # Built-in groups answer with a JSON Status.
        ("/api/v1/namespaces/default/widgets", JSON_NOT_FOUND),
        ("/apis/apps/v1/widgets", JSON_NOT_FOUND),
        (
            "/apis/apps/v9/namespaces/default/statefulsets",
            JSON_NOT_FOUND,
        ),
    ],
)
def test_paths_nothing_serves_answer_like_the_real_server(
    kube: FakeKubeServer, path: str, answer: tuple[int, str, Any]
):
    assert raw_get(kube, path) == answer


def test_a_missing_object_is_a_json_404_naming_it(kube: FakeKubeServer, client: Client):
    with pytest.raises(ApiError) as raised:
        client.get(AuthorizationPolicy, "p")
    assert raised.value.status.code == 404
    assert raised.value.status.details is not None
    assert raised.value.status.details.name == "p"


def test_custom_resources_round_trip_and_refuse_strategic_merge(
    kube: FakeKubeServer, client: Client
):
    client.apply(policy("p1"))
    client.apply(policy("p2", namespace="kube-system"))

    listed = list(client.list(AuthorizationPolicy, namespace="*", labels={"owner": "x"}))
    with pytest.raises(ApiError) as raised:
        client.patch(AuthorizationPolicy, "p1", {"spec": {"action": "DENY"}})
    client.delete(AuthorizationPolicy, "p1")

    assert [(p.metadata.namespace, p.metadata.name) for p in listed if p.metadata] == [
        ("default", "p1"),
        ("kube-system", "p2"),
    ]
    assert listed[0]["spec"]["rules"][0]["to"][0]["operation"]["ports"] == ["80"]
    assert raised.value.status.code == 415
    assert [p["metadata"]["name"] for p in kube.list("authorizationpolicies")] == ["p2"]


def test_forbidding_only_cluster_wide_requests(kube: FakeKubeServer, client: Client):
    kube.forbid(verb="list", resource="configmaps", cluster_wide_only=True)
    client.create(config_map("cm"))

    in_namespace = [cm.metadata.name for cm in client.list(ConfigMap) if cm.metadata]
    with pytest.raises(ApiError) as raised:
        list(client.list(ConfigMap, namespace="*"))

    assert in_namespace == ["cm"]
    assert raised.value.status.code == 403
    assert raised.value.status.message is not None
    assert raised.value.status.message.endswith("at the cluster scope")
    with pytest.raises(ValueError, match="cannot name a namespace"):
        kube.forbid(namespace="default", cluster_wide_only=True)


def test_forbidden_comes_before_not_served(kube: FakeKubeServer, client: Client):
    kube.uninstall_crd(AUTHORIZATION_POLICY_CRD)
    kube.forbid(resource="authorizationpolicies")
    with pytest.raises(ApiError) as raised:
        list(client.list(AuthorizationPolicy))
    assert raised.value.status.code == 403


def test_forbidden_requests_get_403_until_allowed(kube: FakeKubeServer, client: Client):
    kube.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "app"}})
    kube.forbid(verb="patch", resource="services")

    with pytest.raises(ApiError) as raised:
        client.patch(
            Service, "app", {"metadata": {"labels": {"a": "1"}}}, patch_type=PatchType.MERGE
        )
    readable = client.get(Service, "app")
    kube.allow_all()
    allowed = client.patch(
        Service, "app", {"metadata": {"labels": {"a": "1"}}}, patch_type=PatchType.MERGE
    )

    assert raised.value.status.code == 403
    assert raised.value.status.reason == "Forbidden"
    assert readable.metadata
    assert readable.metadata.labels is None
    assert allowed.metadata
    assert allowed.metadata.labels == {"a": "1"}


def test_label_selectors(client: Client):
    client.create(config_map("a", {"app": "a", "tier": "web"}))
    client.create(config_map("b", {"app": "b", "tier": "web"}))
    client.create(config_map("c", {"tier": "db"}))

    def names(labels: Selector) -> list[str]:
        return [
            cm.metadata.name or "" for cm in client.list(ConfigMap, labels=labels) if cm.metadata
        ]

    assert names({"app": "a"}) == ["a"]
    assert names({"app": None}) == ["a", "b"]
    assert names({"app": operators.not_equal("a")}) == ["b", "c"]
    assert names({"app": operators.not_exists()}) == ["c"]
    assert names({"app": ("a", "b"), "tier": "web"}) == ["a", "b"]
    assert names({"tier": operators.not_in(["web"])}) == ["c"]


def test_create_delete_and_precondition_errors(client: Client):
    client.create(config_map("cm"))
    stale = client.get(ConfigMap, "cm")
    client.apply(config_map("cm", k="v"))

    errors: list[tuple[int | None, str | None]] = []
    for call in (
        lambda: client.create(config_map("cm")),
        lambda: client.replace(stale),
        lambda: client.create(config_map("cm", {"bad": "-x-"})),
        lambda: client.create(config_map("cm"), namespace="nowhere"),
        lambda: client.delete(ConfigMap, "missing"),
    ):
        with pytest.raises(ApiError) as raised:
            call()
        errors.append((raised.value.status.code, raised.value.status.reason))

    assert errors == [
        (409, "AlreadyExists"),
        (409, "Conflict"),
        (422, "Invalid"),
        (404, "NotFound"),
        (404, "NotFound"),
    ]


def test_status_is_seeded_not_written_and_generation_follows_spec(
    kube: FakeKubeServer, client: Client
):
    kube.put(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "gw", "namespace": "default"},
            "spec": {"replicas": 1},
            "status": {"readyReplicas": 1},
        },
        field_manager="controller",
    )
    deployment = Deployment(
        metadata=ObjectMeta(name="gw", labels={"a": "1"}),
        spec=DeploymentSpec(replicas=2, selector=LabelSelector(), template=PodTemplateSpec()),
    )

    client.apply(deployment, force=True)
    applied = client.get(Deployment, "gw")

    assert applied.status
    assert applied.status.readyReplicas == 1
    assert applied.spec
    assert applied.spec.replicas == 2
    assert applied.metadata
    assert applied.metadata.generation == 2


def test_merge_patch_of_a_pod_template_keeps_server_metadata_and_bumps_generation(
    kube: FakeKubeServer, client: Client
):
    def statefulset(replicas: int) -> dict[str, Any]:
        labels = {"app.kubernetes.io/name": "app"}
        return {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "app", "namespace": "default"},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "serviceName": "app-endpoints",
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [{"name": "charm", "image": "charm"}]},
                },
            },
        }

    seeded = kube.put(statefulset(1))

    client.patch(
        StatefulSet,
        "app",
        {"spec": {"template": {"metadata": {"labels": {"mesh": "on"}}}}},
        patch_type=PatchType.MERGE,
    )
    patched = client.get(StatefulSet, "app")
    replaced = kube.put(statefulset(2))  # raised KeyError 'uid' when the patch lost it

    assert patched.metadata is not None
    assert patched.metadata.uid == seeded["metadata"]["uid"]
    assert patched.metadata.creationTimestamp is not None
    assert patched.metadata.generation == 2
    assert patched.spec is not None
    assert patched.spec.template.metadata is not None
    assert patched.spec.template.metadata.labels == {
        "app.kubernetes.io/name": "app",
        "mesh": "on",
    }
    assert replaced["metadata"]["uid"] == seeded["metadata"]["uid"]
    assert replaced["metadata"]["creationTimestamp"] == seeded["metadata"]["creationTimestamp"]
