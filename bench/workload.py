"""The benchmarked charms, and the model they run in: N related consumer apps, K policies each.

Each consumer app ``appNNN`` is related to the provider over ``service-mesh`` and requests K app
policies (from ``clientK`` to itself), each with 3 endpoints, exactly as the library's consumer
writes them. Juju's own Kubernetes objects (the provider's StatefulSet and Service, each
consumer's Service) are created in the model's namespace before the first hook.
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ops
import yaml
from charms.istio_beacon_k8s.v0.service_mesh import (
    Endpoint,
    MeshPolicy,
    MeshType,
    Method,
    PolicyResourceManager,
    PolicyTargetType,
    ServiceMeshProvider,
)
from lightkube import Client
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource
from ops import testing

REPO_ROOT = Path(__file__).resolve().parents[1]
BEACON_ROOT = REPO_ROOT / "charms" / "beacon"
ENDPOINTS_PER_POLICY = 3


@dataclass(frozen=True)
class Subject:
    """A provider charm to benchmark.

    Attributes:
        name: short name for reports.
        description: what it is.
        make_context: a fresh ``ops.testing.Context`` (a new one per run: it records juju-log).
        app_name: the provider's app name.
        peers: the peer endpoint to add to the state, if the charm declares one.
        containers: the workload containers the charm declares (in the state, not connectable).
        expected_policies: how many AuthorizationPolicies the charm must have made in the model
            for N related apps of K app policies each, every request accepted.
        tracing_gated: whether the charm's hooks run without ``ops_tracing`` when the unit is
            not related over ``charm-tracing`` (the beacon's ``tracing_gate``). The model here
            has no such relation, so each run sees ``ops.tracing`` as such a hook does: ``None``.
            In this process ops has loaded ops_tracing already, and the gate cannot act.
    """

    name: str
    description: str
    make_context: Callable[[], testing.Context[ops.CharmBase]]
    app_name: str
    peers: str | None
    containers: tuple[str, ...] = ()
    expected_policies: Callable[[int, int], int] = lambda apps, per_app: apps * per_app
    tracing_gated: bool = False


def beacon_subject() -> Subject | None:
    """The real beacon (``charms/beacon``), or ``None`` when its charm.py does not exist yet."""
    src = BEACON_ROOT / "src"
    if not (src / "charm.py").exists():
        return None
    if str(src) not in sys.path:
        sys.path.insert(0, str(src))
    module = importlib.import_module("charm")
    charm_types = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ops.CharmBase)
        and value is not ops.CharmBase
        and value.__module__ == module.__name__
    ]
    if len(charm_types) != 1:
        raise RuntimeError(f"expected one charm class in {src / 'charm.py'}, got {charm_types}")
    charm_type = charm_types[0]
    charmcraft = yaml.safe_load((BEACON_ROOT / "charmcraft.yaml").read_text())
    meta = {
        key: charmcraft[key]
        for key in ("name", "provides", "requires", "peers", "containers", "assumes")
        if key in charmcraft
    }
    config = {"options": charmcraft.get("config", {}).get("options", {})}
    peers = next(iter(charmcraft.get("peers", {})), None)

    def make_context() -> testing.Context[ops.CharmBase]:
        return testing.Context(
            charm_type,
            meta=meta,
            config=config,
            actions=charmcraft.get("actions"),
            app_name="beacon",
            app_trusted=True,
        )

    return Subject(
        name="beacon",
        description=f"{charm_type.__name__} from charms/beacon (config-changed, leader)",
        make_context=make_context,
        app_name="beacon",
        peers=peers,
        containers=tuple(charmcraft.get("containers", {})),
        # One AuthorizationPolicy per accepted app policy, and one per related app that lets
        # the waypoint reach it (the waypoint's hop).
        expected_policies=lambda apps, per_app: apps * (per_app + 1),
        tracing_gated=True,
    )


class LibraryProviderCharm(ops.CharmBase):
    """A throwaway provider: only the library (publish labels, read requests, own policies)."""

    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.mesh = ServiceMeshProvider(self, labels={"istio.io/dataplane-mode": "ambient"})
        framework.observe(self.on.config_changed, self._reconcile)
        framework.observe(self.on.collect_unit_status, self._on_collect_status)

    def _reconcile(self, _: ops.EventBase) -> None:
        self.mesh.update_relations()
        if not self.unit.is_leader():
            return
        client = Client(namespace=self.model.name, field_manager=f"{self.app.name}-provider")
        PolicyResourceManager(self, client).reconcile(self.mesh.mesh_info(), MeshType.istio)

    def _on_collect_status(self, event: ops.CollectStatusEvent) -> None:
        event.add_status(ops.ActiveStatus())


def library_subject() -> Subject:
    """The library's provider side alone, in `LibraryProviderCharm`."""
    meta: dict[str, Any] = {
        "name": "mesh-provider",
        "provides": {"service-mesh": {"interface": "service_mesh"}},
    }

    def make_context() -> testing.Context[ops.CharmBase]:
        return testing.Context(LibraryProviderCharm, meta=meta, app_name="provider")

    return Subject(
        name="library",
        description="throwaway provider: ServiceMeshProvider + PolicyResourceManager only",
        make_context=make_context,
        app_name="provider",
        peers=None,
    )


class NullCharm(ops.CharmBase):
    """Does nothing: what ops.testing itself costs for a state of this size."""


def null_context(subject: Subject) -> testing.Context[ops.CharmBase]:
    """A context for `NullCharm` with the relations the subject's state holds."""
    meta: dict[str, Any] = {
        "name": "null",
        "provides": {"service-mesh": {"interface": "service_mesh"}},
    }
    if subject.peers:
        meta["peers"] = {subject.peers: {"interface": "null_peers"}}
    if subject.containers:
        meta["containers"] = {name: {} for name in subject.containers}
    return testing.Context(NullCharm, meta=meta, app_name=subject.app_name)


def consumer_app(index: int) -> str:
    """The name of consumer app number ``index``: ``app007``.

    A valid Juju application name: every dash-separated part must hold a letter, so ``app-007``
    would be refused by the beacon (and the benchmark would measure the refusal path).
    """
    return f"app{index:03d}"


def source_app(index: int) -> str:
    """The name of the source app of policy number ``index`` of each consumer: ``client0``."""
    return f"client{index}"


def consumer_policies(app: str, namespace: str, per_app: int, revision: int = 0) -> str:
    """The ``policies`` value consumer ``app`` writes: ``per_app`` app policies, 3 endpoints.

    Another ``revision`` changes every path: what a consumer writes when its API changed.
    """
    policies = [
        MeshPolicy(
            source_namespace=namespace,
            source_app_name=source_app(k),
            target_namespace=namespace,
            target_app_name=app,
            target_type=PolicyTargetType.app,
            endpoints=[
                Endpoint(
                    ports=[8080 + e],
                    methods=[Method.get, Method.post],
                    paths=[f"/v{k}/api-{e}/*" if not revision else f"/r{revision}/v{k}/api-{e}/*"],
                )
                for e in range(ENDPOINTS_PER_POLICY)
            ],
        )
        for k in range(per_app)
    ]
    return json.dumps([policy.to_dict() for policy in policies], separators=(",", ":"))


def build_state(subject: Subject, namespace: str, apps: int, per_app: int) -> testing.State:
    """The provider's state before the first hook: leader, ``apps`` consumers related."""
    relations: list[testing.RelationBase] = [
        testing.Relation(
            "service-mesh",
            remote_app_name=consumer_app(i),
            remote_app_data={"policies": consumer_policies(consumer_app(i), namespace, per_app)},
            remote_units_data={0: {}},
        )
        for i in range(apps)
    ]
    if subject.peers:
        relations.append(testing.PeerRelation(subject.peers))
    return testing.State(
        leader=True,
        relations=relations,
        containers=[testing.Container(name, can_connect=False) for name in subject.containers],
        model=testing.Model(name=namespace),
        planned_units=1,
    )


def juju_objects(provider_app: str, namespace: str, apps: int) -> list[dict[str, Any]]:
    """What Juju creates for the provider (StatefulSet, Service) and each consumer (Service)."""

    def service(app: str) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": app,
                "namespace": namespace,
                "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "juju"},
            },
            "spec": {
                "selector": {"app.kubernetes.io/name": app},
                "ports": [{"name": "placeholder", "port": 65535}],
            },
        }

    own = {"app.kubernetes.io/name": provider_app}
    statefulset = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {
            "name": provider_app,
            "namespace": namespace,
            "labels": {**own, "app.kubernetes.io/managed-by": "juju"},
        },
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": own},
            "serviceName": f"{provider_app}-endpoints",
            "template": {
                "metadata": {"labels": own},
                "spec": {"containers": [{"name": "charm", "image": "jujusolutions/charm-base"}]},
            },
        },
    }
    return [
        statefulset,
        service(provider_app),
        *(service(consumer_app(i)) for i in range(apps)),
    ]


#: The only status the first hook of a fresh model may end in besides active: Istio has not yet
#: programmed the waypoint Gateway that hook created (the benchmark then does istiod's part).
WAITING_FOR_WAYPOINT = "waiting for the waypoint: "


def check_outcome(
    subject: Subject, state: testing.State, apps: int, per_app: int, *, first: bool = False
) -> str | None:
    """Why the hook that produced ``state`` did not do its job, or ``None`` when it did.

    The charm must end active (a refused request blocks the beacon; on a ``first`` hook, waiting
    for the waypoint that Istio has yet to program is also fine) with exactly
    ``subject.expected_policies(apps, per_app)`` AuthorizationPolicies in the model's namespace,
    read from the API server of ``$KUBECONFIG``. Figures of a hook that refused its requests
    measure the refusal path, not the work: the benchmark fails on them.
    """
    status = state.unit_status
    waiting_for_waypoint = (
        first
        and isinstance(status, testing.WaitingStatus)
        and status.message.startswith(WAITING_FOR_WAYPOINT)
    )
    if not isinstance(status, testing.ActiveStatus) and not waiting_for_waypoint:
        return f"unit status is {status.name}: {status.message!r}, not active"
    client = Client(namespace=state.model.name, field_manager="bench")
    policies = len(list(client.list(authorization_policy(), namespace=state.model.name)))
    wanted = subject.expected_policies(apps, per_app)
    if policies != wanted:
        return f"{policies} AuthorizationPolicies in the model, expected {wanted}"
    return None


@functools.cache
def authorization_policy() -> type[GenericNamespacedResource]:
    """Lightkube's generic resource for Istio's AuthorizationPolicy."""
    return create_namespaced_resource(
        "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
    )
