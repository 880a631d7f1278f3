"""Faults of the API server in the middle of the beacon's reconcile (issue 12).

The charm runs through ops.testing against the real kube-apiserver, through a loopback proxy
(``faulty_proxy``) that breaks chosen requests: error statuses (500, 409, 429), an error after
the write happened, a reset connection, a request held past the client's timeout, and a server
that cannot be reached at all. After every faulty hook:

- no hook fails: the problem is a status;
- no access is wider than requested: every policy present is wanted now, or is one whose
  deletion was the request that failed (or whose listing failed: the beacon then cannot know
  what to delete, or cannot check the requests naming a Service, changes nothing, and says so);
- no policy that should exist is lost: the unchanged apps keep theirs;
- the next hook, without faults, converges exactly.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import Any

import pytest
from charm import IstioBeaconCharm
from charms.istio_beacon_k8s.v0.service_mesh import Endpoint, MeshPolicy, Method
from kube_names import MANAGED_BY, NAMESPACE_OWNER_LABEL
from lightkube import ALL_NS, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import Namespace
from namespace_labels import owner_value
from ops import testing
from support import juju_seed
from support.faulty_proxy import Fault, FaultyProxy
from support.kube_server import KubeServer

APP = "istio-beacon-k8s"
REQUESTED_BY = "charms.canonical.com/service-mesh.requested-by"
AuthorizationPolicy = create_namespaced_resource(
    "security.istio.io", "v1", "AuthorizationPolicy", "authorizationpolicies"
)
POLICIES = "/authorizationpolicies"
NAMESPACE_OBJECT = r"^/api/v1/namespaces/[^/?]+(\?|$)"
SERVICES = r"/services(\?|$)"


@pytest.fixture
def ctx() -> testing.Context[IstioBeaconCharm]:
    return testing.Context(IstioBeaconCharm, app_name=APP)


@pytest.fixture
def proxy(kube: KubeServer) -> Iterator[FaultyProxy]:
    with FaultyProxy(kube.kubeconfig_path) as running:
        yield running


@pytest.fixture
def model(
    admin: Client, namespace: str, proxy: FaultyProxy, monkeypatch: pytest.MonkeyPatch
) -> str:
    """A model with the beacon's objects; the charm reaches Kubernetes through the proxy."""
    juju_seed.seed_app(admin, APP, namespace)
    monkeypatch.setenv("KUBECONFIG", str(proxy.kubeconfig_path))
    return namespace


def _relation(model: str, app: str, sources: list[str]) -> testing.Relation:
    # Through the app's Service, named: the beacon must list the Services to check the owner.
    policies = [
        MeshPolicy(
            source_namespace=model,
            source_app_name=source,
            target_namespace=model,
            target_app_name=app,
            target_service=app,
            endpoints=[Endpoint(ports=[8080], methods=[Method.get])],
        ).to_dict()
        for source in sources
    ]
    return testing.Relation(
        "service-mesh", remote_app_name=app, remote_app_data={"policies": json.dumps(policies)}
    )


def _state(model: str, relations: list[testing.Relation], **config: bool) -> testing.State:
    return testing.State(
        leader=True,
        model=testing.Model(name=model),
        relations=relations,
        config={key.replace("_", "-"): value for key, value in config.items()},
        containers=[testing.Container("metrics-proxy", can_connect=False)],
    )


def _access(admin: Client, model: str) -> set[tuple[str, str]]:
    """(requesting app, source principal) of the AuthorizationPolicies related apps requested."""
    api: Any = admin
    labels = {MANAGED_BY: owner_value(model, APP)}
    result: set[tuple[str, str]] = set()
    for item in api.list(AuthorizationPolicy, namespace=ALL_NS, labels=labels):
        policy = item.to_dict()
        app = policy["metadata"]["labels"].get(REQUESTED_BY)
        if app is None:
            continue  # the beacon's own (the waypoint's access to related apps' pods)
        for rule in policy["spec"].get("rules", []):
            for source in rule.get("from", []):
                for principal in source["source"]["principals"]:
                    result.add((app, principal))
    return result


def _wanted(model: str, requests: dict[str, list[str]]) -> set[tuple[str, str]]:
    return {
        (app, f"cluster.local/ns/{model}/sa/{source}")
        for app, sources in requests.items()
        for source in sources
    }


BEFORE = {"stays": ["sender"], "changes": ["old-sender"], "leaves": ["sender"]}
AFTER = {"stays": ["sender"], "changes": ["new-sender"], "arrives": ["sender"]}

FAULTS = [
    Fault("PATCH", POLICIES, code=500),
    Fault("PATCH", POLICIES, code=409),
    Fault("PATCH", POLICIES, code=429, times=3),
    Fault("PATCH", POLICIES, code=500, after=True),
    Fault("PATCH", POLICIES, action="reset"),
    Fault("PATCH", POLICIES, action="hang", seconds=11),
    Fault("DELETE", POLICIES, code=500),
    Fault("DELETE", POLICIES, action="reset", times=2),
    Fault("GET", POLICIES, code=500),
    Fault("GET", POLICIES, action="reset"),
    Fault("GET", SERVICES, code=429),
    Fault("GET", NAMESPACE_OBJECT, action="reset"),
    Fault(None, None, code=500, times=4),
]


def _name(fault: Fault) -> str:
    what = fault.action if fault.action != "status" else str(fault.code)
    after = "-after" if fault.after else ""
    path = {NAMESPACE_OBJECT: "/namespace", SERVICES: "/services"}.get(
        fault.path or "", fault.path
    )
    return f"{fault.method or 'any'}{path or ''}-{what}{after}x{fault.times}"


@pytest.mark.parametrize("fault", FAULTS, ids=[_name(f) for f in FAULTS])
def test_a_fault_mid_reconcile_never_widens_access_and_the_next_hook_converges(
    ctx: testing.Context[IstioBeaconCharm],
    admin: Client,
    model: str,
    proxy: FaultyProxy,
    fault: Fault,
):
    before = [_relation(model, app, sources) for app, sources in BEFORE.items()]
    for app in {**BEFORE, **AFTER}:
        juju_seed.seed_service(admin, app, model)
    out = ctx.run(ctx.on.update_status(), _state(model, before))
    assert _access(admin, model) == _wanted(model, BEFORE)

    after = [_relation(model, app, sources) for app, sources in AFTER.items()]
    proxy.inject(dataclasses.replace(fault))
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, relations=after))

    assert proxy.injected(), "the fault never fired: the test proves nothing"
    present = _access(admin, model)
    revoked = _wanted(model, BEFORE) - _wanted(model, AFTER)
    # A broken deletion, or a broken list (the beacon cannot know what to delete), delays the
    # revocation to the next hook; nothing else may.
    revocation_broken = fault.method in (None, "DELETE") or (
        fault.method == "GET" and fault.path in (POLICIES, SERVICES)
    )
    widened = present - _wanted(model, AFTER)
    if revocation_broken:
        # Only what was there before, and was being revoked, may still be there...
        assert widened <= revoked
    else:
        assert not widened, widened
    # ...and nothing that should exist and existed is lost.
    assert _wanted(model, {"stays": ["sender"]}) <= present
    if widened or not (_wanted(model, AFTER) <= present):
        assert isinstance(out.unit_status, testing.BlockedStatus), out.unit_status
        assert out.unit_status.message.isprintable()

    proxy.clear()
    out = ctx.run(ctx.on.update_status(), out)
    assert _access(admin, model) == _wanted(model, AFTER)
    assert not isinstance(out.unit_status, testing.BlockedStatus), out.unit_status


def test_an_unreachable_api_server_is_a_status_and_consumers_keep_their_labels(
    ctx: testing.Context[IstioBeaconCharm], admin: Client, model: str, proxy: FaultyProxy
):
    stays = _relation(model, "stays", ["sender"])
    juju_seed.seed_service(admin, "stays", model)
    with proxy.down():
        out = ctx.run(ctx.on.config_changed(), _state(model, [stays], model_on_mesh=True))

    assert isinstance(out.unit_status, testing.BlockedStatus)
    assert out.unit_status.message.startswith("cannot reach Kubernetes")
    # The namespace was never seen on the mesh: consumers are not told to drop their labels.
    published = json.loads(out.get_relation(stays.id).local_app_data["labels"])
    assert published["istio.io/dataplane-mode"] == "ambient"

    out = ctx.run(ctx.on.update_status(), out)
    assert json.loads(out.get_relation(stays.id).local_app_data["labels"]) == {}
    namespace = admin.get(Namespace, model)
    assert namespace.metadata is not None
    assert (namespace.metadata.labels or {}).get(NAMESPACE_OWNER_LABEL) == owner_value(model, APP)
    assert _access(admin, model) == _wanted(model, {"stays": ["sender"]})
