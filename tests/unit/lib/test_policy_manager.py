"""PolicyResourceManager against the fake API server: owns by label, writes only differences."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import lightkube
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
from lightkube.config.kubeconfig import KubeConfig
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


def kept_and_dropped_with_drift(
    kube: FakeKubeServer, manager: PolicyResourceManager
) -> tuple[MeshPolicy, MeshPolicy]:
    """Two owned policies, the first one edited by someone else since."""
    keep, drop = mesh_policy("keep"), mesh_policy("drop")
    manager.reconcile([keep, drop], MeshType.istio)
    drifted = copy.deepcopy(stored(kube)[key(keep)])
    drifted["spec"]["rules"] = [{}]
    kube.put(drifted)
    return keep, drop


def test_updates_what_differs_and_deletes_what_is_no_longer_wanted(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    # Someone edits the object the manager owns: the next reconcile puts it back.
    keep, drop = kept_and_dropped_with_drift(kube, manager)
    kube.reset_requests()

    summary = manager.reconcile([keep], MeshType.istio)

    objects = stored(kube)
    assert set(objects) == {key(keep)}
    assert objects[key(keep)]["spec"] == build_authorization_policy(keep)["spec"]
    assert summary.updated == ["/".join(key(keep))]
    assert summary.deleted == ["/".join(key(drop))]
    assert summary.created == []
    # Written first: the apply comes before the deletion (LIBPATCH 20).
    assert [r.verb for r in kube.requests if r.verb not in ("get", "list")] == ["apply", "delete"]


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


class TimedTransport(httpx2.BaseTransport):
    """A transport to the fake that delays the chosen methods and times every request.

    It records when each request went out and when its answer came back (by then the server
    has acted on it), and the most requests it had in flight at once.
    """

    def __init__(self, delays: dict[str, float]) -> None:
        self._inner = httpx2.HTTPTransport()
        self._delays = delays
        self._lock = threading.Lock()
        self._in_flight = 0
        self.most_in_flight = 0
        self.spans: list[tuple[str, str, float, float]] = []  # method, path, sent, answered

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        with self._lock:
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
        sent = time.monotonic()
        try:
            time.sleep(self._delays.get(request.method, 0.0))
            response = self._inner.handle_request(request)
            response.read()
        finally:
            with self._lock:
                self._in_flight -= 1
        with self._lock:
            self.spans.append((request.method, request.url.path, sent, time.monotonic()))
        return response

    def writes(self, method: str) -> list[tuple[float, float]]:
        return [(sent, answered) for m, _, sent, answered in self.spans if m == method]


def timed_manager(
    kube: FakeKubeServer, charm: ops.CharmBase, delays: dict[str, float]
) -> tuple[PolicyResourceManager, TimedTransport]:
    transport = TimedTransport(delays)
    client = lightkube.Client(
        KubeConfig.from_file(kube.kubeconfig_path),
        field_manager=f"{OWNER}-{KUBE_MODEL}",
        transport=transport,
    )
    return PolicyResourceManager(charm, client), transport


def test_every_write_is_answered_before_the_first_deletion_goes_out(
    kube: FakeKubeServer, charm: ops.CharmBase
):
    # Every policy of the workload is replaced: deleted first, it would be open to everyone
    # until the replacements arrived.
    stale = [mesh_policy(f"stale{i}") for i in range(12)]
    fresh = [mesh_policy(f"fresh{i}") for i in range(12)]
    PolicyResourceManager(charm, kube.client(field_manager=f"{OWNER}-{KUBE_MODEL}")).reconcile(
        stale, MeshType.istio
    )
    # Slow writes: a deletion sent alongside them would go out before the last one is answered.
    manager, transport = timed_manager(kube, charm, {"PATCH": 0.05})

    summary = manager.reconcile(fresh, MeshType.istio, max_workers=4)

    assert set(stored(kube)) == {key(p) for p in fresh}
    deletions, writes = transport.writes("DELETE"), transport.writes("PATCH")
    assert (len(deletions), len(writes)) == (12, 12)
    assert max(answered for _, answered in writes) <= min(sent for sent, _ in deletions)
    # They did overlap among themselves, up to the limit.
    assert transport.most_in_flight == 4
    assert summary.deleted == sorted("/".join(key(p)) for p in stale)
    assert summary.created == ["/".join(key(p)) for p in fresh]


@pytest.mark.parametrize("max_workers", [1, 3])
def test_writes_in_flight_never_exceed_max_workers(
    kube: FakeKubeServer, charm: ops.CharmBase, max_workers: int
):
    manager, transport = timed_manager(kube, charm, {"PATCH": 0.02})
    wanted = [mesh_policy(f"app{i}") for i in range(9)]

    summary = manager.reconcile(wanted, MeshType.istio, max_workers=max_workers)

    assert transport.most_in_flight == max_workers
    assert summary.created == ["/".join(key(p)) for p in wanted]
    assert set(stored(kube)) == {key(p) for p in wanted}


def test_max_workers_below_one_is_refused(manager: PolicyResourceManager):
    with pytest.raises(ValueError, match="max_workers"):
        manager.reconcile([mesh_policy("a")], MeshType.istio, max_workers=0)
    with pytest.raises(ValueError, match="max_workers"):
        manager.delete(max_workers=0)


def test_failures_are_reported_in_order_from_the_calling_thread(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    stale = [mesh_policy(f"stale{i}") for i in range(6)]
    manager.reconcile(stale, MeshType.istio)
    # Refused: two deletions, and three of the writes (sent in the order given: z.., a.., m..).
    for policy in (stale[4], stale[1]):
        kube.forbid(verb="delete", resource=PLURAL, name=authorization_policy_name(policy))
    wanted = [mesh_policy(name) for name in ("zz", "ok1", "aa", "ok2", "mm", "ok3")]
    for policy in (wanted[4], wanted[0], wanted[2]):
        kube.reject(422, "denied by admission", "patch", PLURAL, authorization_policy_name(policy))
    calls: list[tuple[str, int | None, int]] = []

    summary = manager.reconcile(
        wanted,
        MeshType.istio,
        on_error=lambda name, error: calls.append(
            (name, _http_status_code(error), threading.get_ident())
        ),
        max_workers=4,
    )

    refused_deletions = sorted("/".join(key(p)) for p in (stale[1], stale[4]))
    refused_writes = ["/".join(key(wanted[i])) for i in (0, 2, 4)]  # the order given
    assert [(name, code) for name, code, _ in calls] == [
        *((name, 422) for name in refused_writes),
        *((name, 403) for name in refused_deletions),
    ]
    assert {thread for _, _, thread in calls} == {threading.get_ident()}
    assert summary.deleted == sorted(
        "/".join(key(p)) for i, p in enumerate(stale) if i not in (1, 4)
    )
    assert summary.created == ["/".join(key(wanted[i])) for i in (1, 3, 5)]
    assert set(stored(kube)) == {key(stale[1]), key(stale[4])} | {
        key(wanted[i]) for i in (1, 3, 5)
    }


def test_without_on_error_the_first_failure_is_raised_after_all_the_rest(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    stale = [mesh_policy(f"stale{i}") for i in range(4)]
    manager.reconcile(stale, MeshType.istio)
    kube.forbid(verb="delete", resource=PLURAL, name=authorization_policy_name(stale[2]))
    wanted = [mesh_policy(f"app{i}") for i in range(6)]
    kube.reject(422, "denied by admission", "patch", PLURAL, authorization_policy_name(wanted[0]))

    with pytest.raises(ApiError) as info:
        manager.reconcile(wanted, MeshType.istio, max_workers=4)

    # The refused write comes first, before the refused deletion.
    assert info.value.status.code == 422
    assert set(stored(kube)) == {key(stale[2])} | {key(p) for p in wanted[1:]}


def test_delete_tries_every_object_then_raises_the_first_refusal(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    owned = [mesh_policy(f"app{i}") for i in range(6)]
    manager.reconcile(owned, MeshType.istio)
    refused = sorted(key(owned[i]) for i in (2, 5))
    for _, name in refused:
        kube.forbid(verb="delete", resource=PLURAL, name=name)
    kube.reset_requests()

    with pytest.raises(ApiError) as info:
        manager.delete(max_workers=3)

    assert info.value.status.code == 403
    assert set(stored(kube)) == set(refused)
    assert sorted(str(r.name) for r in kube.requests if r.verb == "delete") == sorted(
        name for _, name in (key(p) for p in owned)
    )


def test_a_policy_whose_replacement_is_refused_is_kept_until_it_stands(
    kube: FakeKubeServer, manager: PolicyResourceManager, caplog: pytest.LogCaptureFixture
):
    # The owner's Service had one policy; its request changed, so the policy gets a new name.
    old, new = mesh_policy("client", endpoints=[Endpoint(ports=[8080])]), mesh_policy("client")
    # Other workloads: one whose policy is dropped for good, one whose replacement is written.
    gone = mesh_policy("client", target_app_name="gone")
    moved_old = mesh_policy("client", target_app_name="moved", endpoints=[Endpoint(ports=[1])])
    moved_new = mesh_policy("client", target_app_name="moved")
    pods = mesh_policy(
        "client", target_type=PolicyTargetType.unit, endpoints=[Endpoint(ports=[9000])]
    )
    manager.reconcile([old, gone, moved_old, pods], MeshType.istio)
    kube.reject(422, "denied by admission", "patch", PLURAL, authorization_policy_name(new))
    errors: list[str] = []

    summary = manager.reconcile(
        [new, moved_new], MeshType.istio, on_error=lambda name, _: errors.append(name)
    )

    # Deleting the old one would have left the owner's Service with no ALLOW policy: open.
    assert summary.kept == ["/".join(key(old))]
    assert errors == ["/".join(key(new))]
    assert summary.created == ["/".join(key(moved_new))]
    # The unit policy applies to the same app's pods, not to its Service: not held back.
    assert summary.deleted == sorted("/".join(key(p)) for p in (gone, moved_old, pods))
    assert set(stored(kube)) == {key(old), key(moved_new)}
    assert "kept 1 policies no longer wanted" in caplog.text

    kube.allow_all()
    summary = manager.reconcile([new, moved_new], MeshType.istio)

    assert (summary.created, summary.deleted, summary.kept) == (
        ["/".join(key(new))],
        ["/".join(key(old))],
        [],
    )
    assert set(stored(kube)) == {key(new), key(moved_new)}


def test_a_refused_update_leaves_the_object_as_it_was_standing(
    kube: FakeKubeServer, manager: PolicyResourceManager
):
    # The updated object is still there, as it was: the workload keeps a policy, so the one
    # no longer wanted goes.
    keep, drop = kept_and_dropped_with_drift(kube, manager)
    kube.reject(422, "denied by admission", "patch", PLURAL, authorization_policy_name(keep))

    summary = manager.reconcile([keep], MeshType.istio, on_error=lambda *_: None)

    assert (summary.updated, summary.deleted, summary.kept) == ([], ["/".join(key(drop))], [])
    assert set(stored(kube)) == {key(keep)}
