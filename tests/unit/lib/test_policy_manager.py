"""PolicyResourceManager against the fake API server: owns by label, writes only differences."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import ops
import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    MeshType,
    Method,
    MissingCRDError,
    PolicyResourceManager,
    PolicyTargetType,
    _http_status_code,
    authorization_policy_name,
    build_authorization_policy,
    get_default_labels,
)
from juju_objects import KUBE_MODEL
from lightkube import ApiError
from ops import testing
from support.fake_kube import FakeKubeServer

PLURAL = "authorizationpolicies"
OWNER = "owner"
OWNED = get_default_labels(OWNER, KUBE_MODEL)
OTHER_NS = "other-model"


class OwnerCharm(ops.CharmBase):
    """A charm that manages AuthorizationPolicies itself."""


@pytest.fixture
def charm() -> Iterator[ops.CharmBase]:
    ctx = testing.Context(OwnerCharm, meta={"name": OWNER}, app_name=OWNER)
    state = testing.State(model=testing.Model(name=KUBE_MODEL))
    with ctx(ctx.on.update_status(), state) as manager:
        yield manager.charm


@pytest.fixture
def manager(kube: FakeKubeServer, charm: ops.CharmBase) -> PolicyResourceManager:
    return PolicyResourceManager(charm, kube.client(field_manager=f"{OWNER}-{KUBE_MODEL}"))


def mesh_policy(source: str, target_namespace: str = KUBE_MODEL, **kwargs: Any) -> MeshPolicy:
    fields: dict[str, Any] = {
        "source_namespace": KUBE_MODEL,
        "source_app_name": source,
        "target_namespace": target_namespace,
        "target_app_name": OWNER,
        "endpoints": [Endpoint(ports=[8080], methods=[Method.get])],
        **kwargs,
    }
    return MeshPolicy(**fields)


def stored(kube: FakeKubeServer) -> dict[tuple[str, str], dict[str, Any]]:
    """Every AuthorizationPolicy in the fake, by (namespace, name)."""
    return {
        (obj["metadata"]["namespace"], obj["metadata"]["name"]): obj for obj in kube.list(PLURAL)
    }


def key(policy: MeshPolicy) -> tuple[str, str]:
    return policy.target_namespace, authorization_policy_name(policy)


def seed_foreign_policy(kube: FakeKubeServer) -> tuple[str, str]:
    """An AuthorizationPolicy that someone else owns, in the manager's namespace."""
    kube.put(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {
                "name": "theirs",
                "namespace": KUBE_MODEL,
                "labels": {**OWNED, "app.kubernetes.io/name": "someone-else"},
            },
            "spec": {"rules": [{}]},
        }
    )
    return KUBE_MODEL, "theirs"


def test_creates_what_is_missing_with_ownership_labels(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    wanted = [mesh_policy("a"), mesh_policy("b", target_namespace=OTHER_NS)]
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NS}})

    summary = manager.reconcile(wanted, MeshType.istio)

    objects = stored(kube)
    assert set(objects) == {key(p) for p in wanted}
    for policy in wanted:
        obj = objects[key(policy)]
        assert obj["metadata"]["labels"] == OWNED
        assert obj["spec"] == build_authorization_policy(policy)["spec"]
    assert sorted(summary.created) == sorted("/".join(key(p)) for p in wanted)
    assert (summary.updated, summary.deleted, summary.unchanged) == ([], [], 0)
    deployed = manager.get_deployed_resources()
    assert {(r["metadata"]["namespace"], r["metadata"]["name"]) for r in deployed} == set(objects)
    assert {r.verb for r in kube.requests if r.verb not in ("get", "list")} == {"apply"}


def test_no_write_at_all_when_nothing_changed(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    wanted = [mesh_policy("a"), mesh_policy("b", target_type=PolicyTargetType.unit, endpoints=[])]
    raw = {"metadata": {"name": "raw-allow"}, "spec": {"rules": [{}]}}
    manager.reconcile(wanted, MeshType.istio, raw_policies=[raw])
    kube.reset_requests()

    summary = manager.reconcile(list(reversed(wanted)), MeshType.istio, raw_policies=[raw])

    assert kube.write_count() == 0
    assert not summary.changed
    assert summary.unchanged == 3


def test_updates_what_differs_and_deletes_what_is_no_longer_wanted(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    keep, drop = mesh_policy("keep"), mesh_policy("drop")
    manager.reconcile([keep, drop], MeshType.istio)
    # Someone edits the object the manager owns: the next reconcile puts it back.
    drifted = copy.deepcopy(stored(kube)[key(keep)])
    drifted["spec"]["rules"] = [{}]
    kube.put(drifted)
    kube.reset_requests()

    summary = manager.reconcile([keep], MeshType.istio)

    objects = stored(kube)
    assert set(objects) == {key(keep)}
    assert objects[key(keep)]["spec"] == build_authorization_policy(keep)["spec"]
    assert summary.updated == ["/".join(key(keep))]
    assert summary.deleted == ["/".join(key(drop))]
    assert summary.created == []
    # Revoke first: the deletion comes before the apply.
    assert [r.verb for r in kube.requests if r.verb not in ("get", "list")] == ["delete", "apply"]


def test_objects_with_other_labels_are_never_touched(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    theirs = seed_foreign_policy(kube)
    manager.reconcile([mesh_policy("a")], MeshType.istio)
    manager.reconcile([], MeshType.istio)
    manager.delete()
    assert set(stored(kube)) == {theirs}


def test_reconcile_to_empty_and_delete_remove_everything_owned(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    manager.reconcile([mesh_policy("a"), mesh_policy("b")], MeshType.istio)
    summary = manager.reconcile([], MeshType.istio)
    assert stored(kube) == {}
    assert len(summary.deleted) == 2

    manager.reconcile([mesh_policy("a")], MeshType.istio)
    manager.delete()
    assert stored(kube) == {}
    kube.reset_requests()
    manager.delete()
    assert kube.write_count() == 0


def test_raw_policies_are_owned_like_the_others(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    built = build_authorization_policy(
        mesh_policy("annotated"), annotations={"requested-by": "tests"}
    )
    by_hand = {
        "metadata": {"name": "model-operator", "labels": {"extra": "kept"}},
        "spec": {"selector": {"matchLabels": {"juju-modeloperator": "modeloperator"}}},
    }
    manager.reconcile([], MeshType.istio, raw_policies=[built, by_hand])

    objects = stored(kube)
    assert objects[key(mesh_policy("annotated"))]["metadata"]["annotations"] == {
        "requested-by": "tests"
    }
    hand = objects[(KUBE_MODEL, "model-operator")]
    assert hand["metadata"]["labels"] == {"extra": "kept", **OWNED}
    assert hand["kind"] == "AuthorizationPolicy"
    assert by_hand["metadata"] == {"name": "model-operator", "labels": {"extra": "kept"}}

    # A changed raw policy is updated in place (same name), the other one left alone.
    changed = copy.deepcopy(by_hand)
    changed["spec"]["rules"] = [{}]
    summary = manager.reconcile([], MeshType.istio, raw_policies=[built, changed])
    assert (summary.updated, summary.unchanged) == ([f"{KUBE_MODEL}/model-operator"], 1)
    assert stored(kube)[(KUBE_MODEL, "model-operator")]["spec"]["rules"] == [{}]


def test_a_raw_policy_of_tuples_and_enums_is_written_as_json_and_then_left_alone(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    # The manager copies each raw policy as JSON would give it back: a tuple is a list, an enum
    # member its value. Compared with what the API returns, the policy is then as wanted.
    raw = {
        "metadata": {"name": "tuples", "labels": {"extra": "kept"}},
        "spec": {"rules": [{"to": [{"operation": {"methods": (Method.get,), "ports": ("80",)}}]}]},
    }
    manager.reconcile([], MeshType.istio, raw_policies=[raw])
    assert stored(kube)[(KUBE_MODEL, "tuples")]["spec"] == {
        "rules": [{"to": [{"operation": {"methods": ["GET"], "ports": ["80"]}}]}]
    }
    kube.reset_requests()
    summary = manager.reconcile([], MeshType.istio, raw_policies=[raw])
    assert (summary.unchanged, kube.write_count()) == (1, 0)
    # The caller's manifest is not changed by the labels the manager adds to its copy.
    assert raw["metadata"] == {"name": "tuples", "labels": {"extra": "kept"}}


def test_a_raw_policy_needs_a_name(manager: PolicyResourceManager):
    with pytest.raises(ValueError, match=r"raw policy without metadata\.name"):
        manager.reconcile([], MeshType.istio, raw_policies=[{"spec": {}}])


def test_custom_ownership_labels(kube: FakeKubeServer, charm: ops.CharmBase):
    labels = {"owned-by": "custom"}
    custom = PolicyResourceManager(charm, kube.client(field_manager="custom"), labels=labels)
    default = PolicyResourceManager(charm, kube.client(field_manager="default"))
    custom.reconcile([mesh_policy("a")], MeshType.istio)
    default.reconcile([mesh_policy("b")], MeshType.istio)

    custom.reconcile([], MeshType.istio)

    assert set(stored(kube)) == {key(mesh_policy("b"))}
    assert custom.labels == labels


@pytest.mark.parametrize(
    "operation",
    [
        lambda manager: manager.reconcile([mesh_policy("a")], MeshType.istio),
        lambda manager: manager.delete(),
    ],
    ids=["reconcile", "delete"],
)
def test_missing_crd(charm: ops.CharmBase, operation: Callable[[PolicyResourceManager], object]):
    with FakeKubeServer(crds=set(), namespaces=[KUBE_MODEL]) as kube:
        manager = PolicyResourceManager(charm, kube.client(field_manager="m"))
        with pytest.raises(MissingCRDError) as info:
            operation(manager)
    assert info.value.resource == "authorizationpolicies.security.istio.io"
    assert "Istio" in str(info.value)


@pytest.mark.parametrize("verb", ["list", "patch"])
def test_forbidden_propagates(kube: FakeKubeServer, manager: PolicyResourceManager, verb: str):
    kube.forbid(verb=verb, resource=PLURAL)
    with pytest.raises(ApiError) as info:
        manager.reconcile([mesh_policy("a")], MeshType.istio)
    assert info.value.status.code == 403
    assert stored(kube) == {}


@pytest.mark.parametrize("ignore_missing", [True, False])
def test_refused_delete_propagates(
    kube: FakeKubeServer, manager: PolicyResourceManager, ignore_missing: bool
):
    manager.reconcile([mesh_policy("a")], MeshType.istio)
    kube.forbid(verb="delete", resource=PLURAL)
    with pytest.raises(ApiError) as info:
        manager.delete(ignore_missing=ignore_missing)
    assert info.value.status.code == 403
    assert set(stored(kube)) == {key(mesh_policy("a"))}


def test_falls_back_to_namespaced_lists_without_cluster_wide_rights(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    kube.forbid(verb="list", resource=PLURAL, cluster_wide_only=True)  # trusted in-namespace only
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NS}})
    local, remote = mesh_policy("a"), mesh_policy("b", target_namespace=OTHER_NS)
    manager.reconcile([local, remote], MeshType.istio)
    kube.reset_requests()

    summary = manager.reconcile([local, remote], MeshType.istio)
    assert summary.unchanged == 2
    assert kube.write_count() == 0
    listed = [r.namespace for r in kube.requests if r.verb == "list"]
    assert listed == [None, KUBE_MODEL, OTHER_NS]  # cluster-wide (refused), then each namespace

    manager.reconcile([remote], MeshType.istio)
    assert set(stored(kube)) == {key(remote)}


def test_a_manager_told_not_to_list_across_namespaces_never_does(
    kube: FakeKubeServer, charm: ops.CharmBase
):
    manager = PolicyResourceManager(
        charm, kube.client(field_manager=f"{OWNER}-{KUBE_MODEL}"), cluster_wide=False
    )
    kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OTHER_NS}})
    local, remote = mesh_policy("a"), mesh_policy("b", target_namespace=OTHER_NS)
    manager.reconcile([local, remote], MeshType.istio)
    kube.reset_requests()

    manager.reconcile([local], MeshType.istio)

    # Only where it looks: the model's namespace and the wanted one; the other one is not seen.
    assert [r.namespace for r in kube.requests if r.verb == "list"] == [KUBE_MODEL]
    assert set(stored(kube)) == {key(local), key(remote)}
    manager.delete()
    assert set(stored(kube)) == {key(remote)}


def test_namespaced_list_forbidden_too_propagates(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    kube.forbid(verb="list", resource=PLURAL, cluster_wide_only=True)
    kube.forbid(verb="list", resource=PLURAL, namespace=KUBE_MODEL)
    with pytest.raises(ApiError) as info:
        manager.reconcile([mesh_policy("a")], MeshType.istio)
    assert info.value.status.code == 403


def test_metadata_drift_is_repaired(kube: FakeKubeServer, manager: PolicyResourceManager):
    annotated = build_authorization_policy(mesh_policy("a"), annotations={"requested-by": "x"})
    manager.reconcile([], MeshType.istio, raw_policies=[annotated])
    name = annotated["metadata"]["name"]
    drifted = copy.deepcopy(stored(kube)[(KUBE_MODEL, name)])
    drifted["metadata"]["annotations"] = {"requested-by": "someone else"}
    kube.put(drifted)

    summary = manager.reconcile([], MeshType.istio, raw_policies=[annotated])

    assert summary.updated == [f"{KUBE_MODEL}/{name}"]
    assert stored(kube)[(KUBE_MODEL, name)]["metadata"]["annotations"] == {"requested-by": "x"}


def test_a_refused_write_stops_neither_the_other_writes_nor_the_deletions(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    stale = mesh_policy("stale")
    manager.reconcile([stale], MeshType.istio)
    first, second = mesh_policy("aaa"), mesh_policy("zzz")
    kube.reject(422, "denied by admission", "patch", PLURAL, authorization_policy_name(first))

    errors: list[tuple[str, int | None]] = []
    summary = manager.reconcile(
        [first, second],
        MeshType.istio,
        on_error=lambda name, error: errors.append((name, _http_status_code(error))),
    )

    assert set(stored(kube)) == {key(second)}
    assert summary.deleted == ["/".join(key(stale))]
    assert errors == [("/".join(key(first)), 422)]

    # Without on_error, the same happens and the first failure is raised at the end.
    manager.reconcile([stale], MeshType.istio)
    with pytest.raises(ApiError):
        manager.reconcile([first, second], MeshType.istio)
    assert set(stored(kube)) == {key(second)}
