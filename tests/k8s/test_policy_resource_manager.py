"""`PolicyResourceManager` against real AuthorizationPolicy objects (Istio's CRD installed)."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import time
from collections.abc import Callable, Iterator
from typing import Any

import ops
import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    MeshType,
    MissingCRDError,
    PolicyResourceManager,
    PolicyTargetType,
    _http_status_code,
    build_authorization_policy,
    get_default_labels,
)
from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType
from ops import testing
from support.kube_server import AuditedWrite, KubeServer, count_writes, ensure_namespace

AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)
APP = "receiver"
GROUP, RESOURCE = "security.istio.io", "authorizationpolicies"


class ThrowawayCharm(ops.CharmBase):
    """Only gives the manager a charm: its app and model names."""


@contextlib.contextmanager
def charm_in(namespace: str, app: str = APP) -> Iterator[ops.CharmBase]:
    """A live charm instance of ``app`` in model ``namespace`` (for the manager's defaults)."""
    ctx = testing.Context(ThrowawayCharm, meta={"name": app})
    state = testing.State(leader=True, model=testing.Model(name=namespace))
    with ctx(ctx.on.update_status(), state) as manager:
        yield manager.charm


def app_policy(namespace: str, source: str = "sender1", **overrides: Any) -> MeshPolicy:
    values: dict[str, Any] = {
        "source_namespace": namespace,
        "source_app_name": source,
        "target_namespace": namespace,
        "target_app_name": APP,
        "endpoints": [Endpoint(ports=[8080, 8081], methods=["GET", "POST"], paths=["/foo"])],
    }
    return MeshPolicy(**{**values, **overrides})


def unit_policy(namespace: str, source: str = "sender2") -> MeshPolicy:
    return MeshPolicy(
        source_namespace=namespace,
        source_app_name=source,
        target_namespace=namespace,
        target_app_name=APP,
        target_type=PolicyTargetType.unit,
        endpoints=[Endpoint(ports=[8080, 8081])],
    )


def deployed(client: Client, namespace: str) -> dict[str, dict[str, Any]]:
    """Every AuthorizationPolicy in the namespace, by name, as stored."""
    return {
        obj.metadata.name: obj.to_dict()  # type: ignore[union-attr]
        for obj in client.list(AuthorizationPolicy, namespace=namespace)
    }


def versions(client: Client, namespace: str) -> dict[str, str]:
    return {
        name: obj["metadata"]["resourceVersion"]
        for name, obj in deployed(client, namespace).items()
    }


@pytest.fixture
def app_client(namespace: str, namespace_admin: Callable[[str, str], Client]) -> Client:
    """The receiver's own client, as an namespace_admin Juju app has it."""
    return namespace_admin(namespace, APP)


def test_create_update_delete_reconcile_to_empty(
    namespace: str, admin: Client, app_client: Client
):
    wanted = [app_policy(namespace), unit_policy(namespace)]
    with charm_in(namespace) as charm:
        manager = PolicyResourceManager(charm, app_client)
        owner = get_default_labels(APP, namespace)
        assert manager.labels == owner

        summary = manager.reconcile(wanted, MeshType.istio)
        assert len(summary.created) == 2
        assert not summary.updated
        assert not summary.deleted
        stored = deployed(admin, namespace)
        expected = {m["metadata"]["name"]: m for m in map(build_authorization_policy, wanted)}
        assert set(stored) == set(expected)
        for name, manifest in expected.items():
            assert stored[name]["spec"] == manifest["spec"]
            assert owner.items() <= stored[name]["metadata"]["labels"].items()
        assert {p["metadata"]["name"] for p in manager.get_deployed_resources()} == set(expected)

        # Someone edits an owned object: the next reconcile puts it back (an update).
        drifted = next(iter(expected))
        admin.patch(
            AuthorizationPolicy,
            drifted,
            {"spec": {"rules": [{}]}},
            namespace=namespace,
            patch_type=PatchType.MERGE,
        )
        summary = manager.reconcile(wanted, MeshType.istio)
        assert summary.updated == [f"{namespace}/{drifted}"]
        assert deployed(admin, namespace)[drifted]["spec"] == expected[drifted]["spec"]

        # A different request replaces the old object (names are per request).
        changed = [app_policy(namespace, endpoints=[Endpoint(ports=[9090])]), wanted[1]]
        summary = manager.reconcile(changed, MeshType.istio)
        assert len(summary.created) == 1
        assert len(summary.deleted) == 1
        assert len(deployed(admin, namespace)) == 2

        summary = manager.reconcile([], MeshType.istio)
        assert len(summary.deleted) == 2
        assert deployed(admin, namespace) == {}


def test_raw_policy_updated_in_place(namespace: str, admin: Client, app_client: Client):
    raw = {
        "metadata": {"name": "modeloperator-allow-all"},
        "spec": {"selector": {"matchLabels": {"juju-modeloperator": "modeloperator"}}},
    }
    with charm_in(namespace) as charm:
        manager = PolicyResourceManager(charm, app_client)
        manager.reconcile([], MeshType.istio, raw_policies=[{**raw, "spec": {**raw["spec"]}}])
        first = deployed(admin, namespace)["modeloperator-allow-all"]
        assert "rules" not in first["spec"]

        with_rules = {**raw, "spec": {**raw["spec"], "rules": [{}]}}
        summary = manager.reconcile([], MeshType.istio, raw_policies=[with_rules])
        assert summary.updated == [f"{namespace}/modeloperator-allow-all"]
        second = deployed(admin, namespace)["modeloperator-allow-all"]
        assert second["spec"]["rules"] == [{}]
        assert second["metadata"]["uid"] == first["metadata"]["uid"]


def test_no_write_when_nothing_changed(
    kube: KubeServer, namespace: str, admin: Client, app_client: Client
):
    wanted = [app_policy(namespace), unit_policy(namespace), app_policy(namespace, "sender3")]
    with charm_in(namespace) as charm:
        manager = PolicyResourceManager(charm, app_client)
        manager.reconcile(wanted, MeshType.istio)
        rv = versions(admin, namespace)

        before = kube.request_counts()
        summary = manager.reconcile(wanted, MeshType.istio)
        after = kube.request_counts()

    assert not summary.changed
    assert summary.unchanged == 3
    assert count_writes(before, after, group=GROUP, resource=RESOURCE) == 0
    assert versions(admin, namespace) == rv


def test_objects_of_another_owner_untouched(
    kube: KubeServer, namespace: str, admin: Client, app_client: Client
):
    theirs = [
        build_authorization_policy(
            app_policy(namespace, "other-sender"), labels=get_default_labels("other", namespace)
        ),
        build_authorization_policy(unit_policy(namespace, "unlabelled")),
    ]
    for manifest in theirs:
        admin.create(AuthorizationPolicy.from_dict(manifest))
    theirs_rv = versions(admin, namespace)

    with charm_in(namespace) as charm:
        manager = PolicyResourceManager(charm, app_client)
        manager.reconcile([app_policy(namespace)], MeshType.istio)
        assert len(deployed(admin, namespace)) == 3
        manager.reconcile([], MeshType.istio)
        before = kube.request_counts()
        manager.delete()
        after = kube.request_counts()

    assert count_writes(before, after, group=GROUP, resource=RESOURCE) == 0
    assert versions(admin, namespace) == theirs_rv


def test_delete_removes_only_owned(namespace: str, admin: Client, app_client: Client):
    with charm_in(namespace) as charm:
        mine = PolicyResourceManager(charm, app_client)
        other = PolicyResourceManager(
            charm, app_client, labels=get_default_labels(APP, namespace, scope="custom")
        )
        mine.reconcile([app_policy(namespace)], MeshType.istio)
        other.reconcile([unit_policy(namespace)], MeshType.istio)
        mine.delete()
        assert [p["metadata"]["name"] for p in other.get_deployed_resources()] == list(
            deployed(admin, namespace)
        )
        other.delete()
    assert deployed(admin, namespace) == {}


def test_untrusted_app_cannot_write_into_another_namespace(
    namespace: str, admin: Client, app_client: Client
):
    elsewhere = f"{namespace}-b"
    admin.create(
        AuthorizationPolicy.from_dict({"metadata": {"name": "x", "namespace": namespace}})
    )
    from support.kube_server import ensure_namespace

    ensure_namespace(admin, elsewhere)
    policy = app_policy(namespace, target_namespace=elsewhere)
    with charm_in(namespace) as charm, pytest.raises(ApiError) as raised:
        PolicyResourceManager(charm, app_client).reconcile([policy], MeshType.istio)
    assert raised.value.status.code == 403
    assert deployed(admin, elsewhere) == {}


def test_trusted_app_lists_cluster_wide(namespace: str, kube: KubeServer, admin: Client):
    client = kube.admin_client(field_manager=APP)
    with charm_in(namespace) as charm:
        manager = PolicyResourceManager(charm, client)
        manager.reconcile([app_policy(namespace)], MeshType.istio)
        assert len(manager.get_deployed_resources()) == 1
        manager.reconcile([], MeshType.istio)
    assert deployed(admin, namespace) == {}


# --- without Istio -------------------------------------------------------------------------------


@pytest.mark.parametrize("trusted", [True, False], ids=["trusted", "untrusted"])
def test_missing_crd_reported_as_such(bare_kube: KubeServer, trusted: bool):
    # A real apiserver answers a request for an unserved resource with a text/plain 404
    # ("404 page not found"), not a JSON Status: lightkube then raises its transport's
    # HTTPStatusError rather than ApiError. Only a real server shows this.
    namespace = "no-istio"
    if trusted:
        client = bare_kube.admin_client(field_manager=APP)
        ensure_namespace(client, namespace)
    else:
        client = bare_kube.namespaced_client(namespace, APP, field_manager=APP)
    with charm_in(namespace) as charm:
        manager = PolicyResourceManager(charm, client)
        with pytest.raises(MissingCRDError) as raised:
            manager.reconcile([app_policy(namespace)], MeshType.istio)
        assert raised.value.resource == "authorizationpolicies.security.istio.io"
        with pytest.raises(MissingCRDError):
            manager.delete()


# --- many objects, written concurrently ------------------------------------------------------


def raw_allow(namespace: str, index: int, port: int) -> dict[str, Any]:
    """A raw policy whose spec changes with ``port`` under the same name: an update in place."""
    return {
        "metadata": {"name": f"raw-{index:02d}", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": f"raw{index:02d}"}},
            "rules": [{"to": [{"operation": {"ports": [str(port)]}}]}],
        },
    }


def test_many_policies_written_concurrently_end_exactly_as_wanted(
    kube: KubeServer, namespace: str, admin: Client, app_client: Client
):
    first = [app_policy(namespace, f"sender{i:02d}") for i in range(60)]
    first_raw = [raw_allow(namespace, i, 8080) for i in range(20)]
    # Then: 30 of those go, 30 stay, 60 are new; 10 raw ones change, 10 stay as they are.
    second = first[30:] + [app_policy(namespace, f"newsender{i:02d}") for i in range(60)]
    second_raw = [raw_allow(namespace, i, 9090 if i < 10 else 8080) for i in range(20)]
    with charm_in(namespace) as charm:
        manager = PolicyResourceManager(charm, app_client)
        summary = manager.reconcile(first, MeshType.istio, raw_policies=first_raw)
        assert len(summary.created) == 80

        mark = kube.audit_mark()
        summary = manager.reconcile(
            second, MeshType.istio, raw_policies=second_raw, take_over=False, max_workers=8
        )
        writes = [w for w in kube.writes_since(mark) if RESOURCE in w.uri.split("?")[0].split("/")]

    # The cluster holds exactly what the second reconcile wanted.
    expected = {
        m["metadata"]["name"]: m for m in [*map(build_authorization_policy, second), *second_raw]
    }
    stored = deployed(admin, namespace)
    assert set(stored) == set(expected)
    owner = get_default_labels(APP, namespace)
    for name, manifest in expected.items():
        assert stored[name]["spec"] == manifest["spec"], name
        assert owner.items() <= stored[name]["metadata"]["labels"].items(), name

    # The summary is in a fixed order: writes in the order given, deletions by name.
    names = [authorization_policy_key(namespace, p) for p in first[:30]]
    assert summary.deleted == sorted(names)
    assert summary.created == [authorization_policy_key(namespace, p) for p in second[30:]]
    assert summary.updated == [f"{namespace}/raw-{i:02d}" for i in range(10)]
    assert summary.unchanged == 40

    # Every create and apply had taken effect before the first deletion reached the server
    # (LIBPATCH 20): a workload whose every policy is replaced is never left with none.
    deletions = [w for w in writes if w.verb == "delete"]
    others = [w for w in writes if w.verb != "delete"]
    assert (len(deletions), len(others)) == (30, 70)
    assert all(w.code < 300 for w in writes)
    assert max(timed(w).completed for w in others) <= min(timed(w).received for w in deletions)
    # And the server really had several of them at once.
    assert most_at_once(others) > 1


def authorization_policy_key(namespace: str, policy: MeshPolicy) -> str:
    return f"{namespace}/{build_authorization_policy(policy)['metadata']['name']}"


@dataclasses.dataclass(frozen=True)
class Span:
    received: datetime.datetime
    completed: datetime.datetime


def timed(write: AuditedWrite) -> Span:
    assert write.received is not None, write
    assert write.completed is not None, write
    return Span(write.received, write.completed)


def most_at_once(writes: list[AuditedWrite]) -> int:
    """The most writes the apiserver was handling at the same instant."""
    events = sorted(
        [(timed(w).received, 1) for w in writes] + [(timed(w).completed, -1) for w in writes]
    )
    current = most = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


# --- a replacement that admission refuses ------------------------------------------------------

ADMISSION = "/apis/admissionregistration.k8s.io/v1"


def raw_policy(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": namespace}, "spec": {"rules": [{}], **spec}}


def service_target(service: str) -> dict[str, Any]:
    return {"targetRefs": [{"group": "", "kind": "Service", "name": service}]}


def pods_of(app: str) -> dict[str, Any]:
    return {"selector": {"matchLabels": {"app.kubernetes.io/name": app}}}


@contextlib.contextmanager
def refusing_names(kube: KubeServer, namespace: str, prefix: str) -> Iterator[None]:
    """An admission policy (CEL) that refuses AuthorizationPolicies named ``prefix...`` there.

    What a cluster's own admission rules (a ValidatingAdmissionPolicy, Kyverno, Gatekeeper) do
    to an object they do not accept.
    """
    name = f"refuse-{namespace}"
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["*"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": [RESOURCE],
                    }
                ]
            },
            "validations": [{"expression": f"!object.metadata.name.startsWith('{prefix}')"}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
            },
        },
    }
    for path, body in (
        (f"{ADMISSION}/validatingadmissionpolicies", policy),
        (f"{ADMISSION}/validatingadmissionpolicybindings", binding),
    ):
        status, answer = kube.raw_request("POST", path, body)
        assert status == 201, answer
    try:
        # The apiserver loads admission policies in the background: wait until it refuses.
        probe = {"apiVersion": f"{GROUP}/v1", "kind": "AuthorizationPolicy"}
        probe |= raw_policy(namespace, f"{prefix}probe")
        deadline = time.monotonic() + 60
        while kube.strict_create(probe)[0] == 201:
            assert time.monotonic() < deadline, "the admission policy never took effect"
            time.sleep(0.2)
        yield
    finally:
        for kind in ("validatingadmissionpolicybindings", "validatingadmissionpolicies"):
            kube.raw_request("DELETE", f"{ADMISSION}/{kind}/{name}")


def test_a_policy_whose_replacement_admission_refuses_stays_until_one_is_written(
    kube: KubeServer, namespace: str, admin: Client, app_client: Client
):
    old = [
        raw_policy(namespace, "old-a", **service_target("a")),
        raw_policy(namespace, "old-b", **pods_of("b")),
        raw_policy(namespace, "x", **pods_of("x")),
    ]
    refused_a = raw_policy(namespace, "refused-a", **service_target("a"))
    new_b = raw_policy(namespace, "new-b", **pods_of("b"))
    errors: list[tuple[str, int]] = []
    with charm_in(namespace) as charm:
        manager = PolicyResourceManager(charm, app_client)
        manager.reconcile([], MeshType.istio, raw_policies=old)
        with refusing_names(kube, namespace, "refused-"):
            summary = manager.reconcile(
                [],
                MeshType.istio,
                raw_policies=[refused_a, new_b],
                on_error=lambda name, error: errors.append((name, _http_status_code(error) or 0)),
            )
            # Service a's only policy would be deleted with nothing in its place (open to
            # everyone through its waypoint): it stays. b's was replaced; x's is not wanted.
            assert [name for name, _ in errors] == [f"{namespace}/refused-a"]
            assert errors[0][1] >= 400
            assert summary.kept == [f"{namespace}/old-a"]
            assert summary.created == [f"{namespace}/new-b"]
            assert summary.deleted == [f"{namespace}/old-b", f"{namespace}/x"]
            assert set(deployed(admin, namespace)) == {"old-a", "new-b"}

            # A replacement that is accepted: only then does the old one go.
            later_a = raw_policy(namespace, "later-a", **service_target("a"))
            summary = manager.reconcile([], MeshType.istio, raw_policies=[later_a, new_b])

    assert (summary.created, summary.deleted, summary.kept) == (
        [f"{namespace}/later-a"],
        [f"{namespace}/old-a"],
        [],
    )
    assert set(deployed(admin, namespace)) == {"later-a", "new-b"}
