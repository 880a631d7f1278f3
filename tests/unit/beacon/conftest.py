"""Fixtures for the beacon's unit tests: the ops.testing context and a fake Kubernetes API.

The Kubernetes fixtures only need ``KUBECONFIG``: the same tests can run against the real API
server tier by providing another ``make_kube`` (a server plus the seeding helpers below).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import pytest
from charm import IstioBeaconCharm
from ops import testing
from support import istiod_standin, juju_seed
from support.fake_kube import ALL_CRDS, FakeKubeServer
from waypoint import build_gateway

MODEL = "mesh-model"
APP = "istio-beacon-k8s"
WAYPOINT = f"{MODEL}-{APP}-waypoint"
OWNER = f"{MODEL}.{APP}"
MANAGED_BY = "charms.canonical.com/service-mesh.managed-by"
REQUESTED_BY = "charms.canonical.com/service-mesh.requested-by"
RELATION_ID = "charms.canonical.com/service-mesh.relation-id"
NAMESPACE_OWNER = "charms.canonical.com/istio.io.waypoint.managed-by"
WAYPOINT_ACCESS_FOR = "charms.canonical.com/service-mesh.waypoint-access-for"
#: The deployed charm's ownership labels, which the beacon's objects carry for a rollback.
DEPLOYED_INSTANCE = "app.kubernetes.io/instance"
DEPLOYED_SCOPE = "kubernetes-resource-handler-scope"


def rollback_labels(scope: str) -> dict[str, str]:
    """What the deployed charm selects its ``scope`` objects by, in MODEL for APP."""
    return {DEPLOYED_INSTANCE: f"{MODEL}-{APP}", DEPLOYED_SCOPE: scope}


POLICY_ROLLBACK = rollback_labels("istio-authorization-policy")
UNPROTECTED = (
    " is not protected until its request is valid: it has no ALLOW policy, so Istio lets anyone "
    "reach it through its Service"
)
MESH_LABELS = {
    "istio.io/dataplane-mode": "ambient",
    "istio.io/use-waypoint": WAYPOINT,
    "istio.io/use-waypoint-namespace": MODEL,
}

KubeFactory = Callable[..., FakeKubeServer]


@pytest.fixture
def ctx() -> testing.Context[IstioBeaconCharm]:
    return testing.Context(IstioBeaconCharm, app_name=APP)


@pytest.fixture
def make_kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeFactory]:
    """Start a fake API server (``crds`` chooses the installed CRDs), seeded with the beacon.

    ``KUBECONFIG`` points at the last one started.
    """
    with contextlib.ExitStack() as stack:

        def start(crds: Iterable[str] = ALL_CRDS) -> FakeKubeServer:
            kube = stack.enter_context(FakeKubeServer(crds=crds))
            monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
            seed_beacon(kube)
            return kube

        yield start


@pytest.fixture
def kube(make_kube: KubeFactory) -> FakeKubeServer:
    """A fake API server with Istio's CRDs and the beacon's own StatefulSet and Service."""
    return make_kube()


def seed_beacon(kube: FakeKubeServer) -> None:
    """What Juju creates for the beacon: its namespace, StatefulSet and Service."""
    juju_seed.seed_app(kube.client(), APP, MODEL)


def seed_service(
    kube: FakeKubeServer, name: str, labels: dict[str, str] | None = None, namespace: str = MODEL
) -> None:
    """A Service; by default labelled as Juju labels an app's Service (named after the app)."""
    juju_seed.seed_service(kube.client(), name, namespace, labels)


def seed_waypoint_deployment(kube: FakeKubeServer, replicas: int, ready: int) -> None:
    """The Deployment Istio makes from the waypoint Gateway, with ``ready`` replicas ready."""
    kube.put(istiod_standin.waypoint_deployment(WAYPOINT, MODEL, replicas, ready))


def istio_runs_waypoint(
    kube: FakeKubeServer,
    replicas: int = 1,
    ready: int | None = None,
    *,
    programmed: bool = True,
    address: bool = True,
) -> None:
    """What Istio does with the beacon's Gateway: programs it, gives it an address, runs it.

    The Gateway is the beacon's (as it would write it) with the status istiod writes; its
    Deployment has ``replicas`` wanted, ``ready`` of them ready (all by default).
    """
    gateway = kube.get("gateways", MODEL, WAYPOINT) or build_gateway(
        WAYPOINT, MODEL, {MANAGED_BY: OWNER}
    )
    generation = gateway["metadata"].get("generation", 1)
    condition = {
        "type": "Programmed",
        "status": "True" if programmed else "False",
        "reason": "Programmed" if programmed else "Invalid",
        "message": "" if programmed else "listener mesh:\tport 15008 conflicts",
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    gateway["status"] = {
        "conditions": [condition],
        "addresses": [{"type": "IPAddress", "value": "10.152.183.7"}] if address else [],
    }
    stored = kube.put(gateway, field_manager="pilot-discovery")
    # put() starts the generation over; keep the condition about the stored generation.
    condition["observedGeneration"] = stored["metadata"].get("generation", generation)
    kube.put(stored, field_manager="pilot-discovery")
    seed_waypoint_deployment(kube, replicas, replicas if ready is None else ready)


def seed_model_operator(kube: FakeKubeServer, scheme: str = "current") -> dict[str, str]:
    """Juju's model operator Service (see ``juju_seed.seed_model_operator``); its selector."""
    return juju_seed.seed_model_operator(kube.client(), MODEL, scheme)


def wire_policy(
    source: str, target: str | None, target_type: str = "app", **fields: Any
) -> dict[str, Any]:
    """A MeshPolicy in wire form (all eight keys), from ``source`` to ``target`` in MODEL."""
    unit = target_type == "unit"
    policy: dict[str, Any] = {
        "source_namespace": MODEL,
        "source_app_name": source,
        "target_namespace": MODEL,
        "target_app_name": target,
        "target_selector_labels": None,
        "target_service": None,
        "target_type": target_type,
        "endpoints": [
            {"hosts": None, "ports": [8080], "methods": None, "paths": None}
            if unit
            else {"hosts": [], "ports": [8080], "methods": ["GET"], "paths": ["/foo"]}
        ],
    }
    policy.update(fields)
    return policy


def mesh_relation(app: str, policies: list[dict[str, Any]] | str | None) -> testing.Relation:
    """A ``service-mesh`` relation with ``app``, whose databag holds ``policies``.

    A string is written as is (to send malformed data); ``None`` writes no ``policies`` key.
    """
    data: dict[str, str] = {}
    if isinstance(policies, str):
        data["policies"] = policies
    elif policies is not None:
        data["policies"] = json.dumps(policies)
    return testing.Relation("service-mesh", remote_app_name=app, remote_app_data=data)


def beacon_state(
    *,
    leader: bool = True,
    relations: Iterable[testing.RelationBase] = (),
    config: Mapping[str, str | int | float | bool] | None = None,
    planned_units: int = 1,
) -> testing.State:
    """The beacon's state in MODEL."""
    return testing.State(
        leader=leader,
        model=testing.Model(name=MODEL),
        relations=list(relations),
        config=dict(config or {}),
        planned_units=planned_units,
        containers=[testing.Container("metrics-proxy", can_connect=False)],
    )


def policies_in(kube: FakeKubeServer, namespace: str | None = None) -> dict[str, dict[str, Any]]:
    """The AuthorizationPolicies in the fake, by name."""
    return {p["metadata"]["name"]: p for p in kube.list("authorizationpolicies", namespace)}


def request_policies(
    kube: FakeKubeServer, namespace: str | None = None
) -> dict[str, dict[str, Any]]:
    """The AuthorizationPolicies that implement a related app's request, by name."""
    return {
        name: policy
        for name, policy in policies_in(kube, namespace).items()
        if REQUESTED_BY in (policy["metadata"].get("labels") or {})
    }


def waypoint_access(kube: FakeKubeServer) -> dict[str, dict[str, Any]]:
    """The policies that let the waypoint reach an app's pods, by app."""
    return {
        policy["metadata"]["annotations"][WAYPOINT_ACCESS_FOR]: policy
        for policy in policies_in(kube).values()
        if WAYPOINT_ACCESS_FOR in (policy["metadata"].get("annotations") or {})
    }


def requested_by(kube: FakeKubeServer) -> dict[str, set[str]]:
    """For each app, the names of the AuthorizationPolicies that say it requested them."""
    result: dict[str, set[str]] = {}
    for name, policy in policies_in(kube).items():
        app = (policy["metadata"].get("labels") or {}).get(REQUESTED_BY)
        if app is not None:
            result.setdefault(app, set()).add(name)
    return result


def namespace_labels(kube: FakeKubeServer) -> dict[str, str]:
    """The labels of the beacon's namespace."""
    namespace = kube.get("namespaces", None, MODEL)
    assert namespace is not None
    return namespace["metadata"].get("labels") or {}
