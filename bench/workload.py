"""The benchmarked charms, and the model they run in: N related consumer apps, K policies each.

Each consumer app ``app-NNN`` is related to the provider over ``service-mesh`` and requests K app
policies (from ``client-k`` to itself), each with 3 endpoints, exactly as the library's consumer
writes them. Juju's own Kubernetes objects (the provider's StatefulSet and Service, each
consumer's Service) are created in the model's namespace before the first hook.
"""

from __future__ import annotations

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
    """

    name: str
    description: str
    make_context: Callable[[], testing.Context[ops.CharmBase]]
    app_name: str
    peers: str | None
    containers: tuple[str, ...] = ()


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
    return testing.Context(NullCharm, meta=meta, app_name=subject.app_name)


def consumer_app(index: int) -> str:
    """The name of consumer app number ``index``."""
    return f"app-{index:03d}"


def consumer_policies(app: str, namespace: str, per_app: int) -> str:
    """The ``policies`` value consumer ``app`` writes: ``per_app`` app policies, 3 endpoints."""
    policies = [
        MeshPolicy(
            source_namespace=namespace,
            source_app_name=f"client-{k}",
            target_namespace=namespace,
            target_app_name=app,
            target_type=PolicyTargetType.app,
            endpoints=[
                Endpoint(
                    ports=[8080 + e],
                    methods=[Method.get, Method.post],
                    paths=[f"/v{k}/api-{e}/*"],
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
