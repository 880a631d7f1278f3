"""The fake Kubernetes API behaves like the real one, as seen through lightkube."""

from collections.abc import Iterator

import pytest
from fake_kube import AUTHORIZATION_POLICY_CRD, GATEWAY_CRD, FakeKubeServer
from lightkube import ApiError, Client, operators
from lightkube.core.client import LabelSelector as Selector
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from lightkube.models.apps_v1 import DeploymentSpec
from lightkube.models.core_v1 import PodTemplateSpec
from lightkube.models.meta_v1 import LabelSelector, ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import ConfigMap, Namespace, Service
from lightkube.types import PatchType

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


def test_missing_crd_answers_404_like_the_real_server():
    with FakeKubeServer(crds={GATEWAY_CRD}) as kube:
        client = kube.client(field_manager="tester")
        for call in (
            lambda: client.get(AuthorizationPolicy, "p"),
            lambda: list(client.list(AuthorizationPolicy, namespace="*")),
            lambda: client.apply(policy("p")),
        ):
            with pytest.raises(ApiError) as raised:
                call()
            assert raised.value.status.code == 404
            assert raised.value.status.message == (
                "the server could not find the requested resource"
            )
        kube.install_crd(AUTHORIZATION_POLICY_CRD)
        assert list(client.list(AuthorizationPolicy)) == []


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
