"""What the tester publishes on the service-mesh relation, and the labels it puts on its objects.

The leader always converges its mesh labels (the library does so with ``auto_join``, the tester
itself with it off), so leader tests run against the fake Kubernetes API server, seeded with the
StatefulSet and Service that Juju would have created for the app.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from charm import ServiceMeshTesterCharm
from charms.istio_beacon_k8s.v0.service_mesh import use_kubernetes_client
from ops import testing
from support.fake_kube import FakeKubeServer

APP = "service-mesh-tester"
MODEL = "tester-model"
AMBIENT = {"istio.io/dataplane-mode": "ambient"}
LABELS_CONFIGMAP = f"juju-service-mesh-{APP}-labels"


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeServer]:
    with FakeKubeServer() as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig_path))
        server.put(
            {
                "apiVersion": "apps/v1",
                "kind": "StatefulSet",
                "metadata": {"name": APP, "namespace": MODEL, "labels": {"app": APP}},
                "spec": {
                    "serviceName": f"{APP}-endpoints",
                    "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
                    "template": {
                        "metadata": {"labels": {"app.kubernetes.io/name": APP}},
                        "spec": {"containers": [{"name": "charm", "image": "charm"}]},
                    },
                },
            }
        )
        server.put(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": APP, "namespace": MODEL, "labels": {"app": APP}},
                "spec": {"selector": {"app.kubernetes.io/name": APP}},
            }
        )
        # The library acts only as the pod's service account; tests hand it the fake's client.
        with use_kubernetes_client(server.client()):
            yield server


def mesh_relation(labels: dict[str, str] | None = None, **kwargs: Any) -> testing.Relation:
    return testing.Relation(
        "service-mesh",
        remote_app_name="beacon",
        remote_app_data={"labels": json.dumps(labels or {}), "mesh_type": json.dumps("istio")},
        **kwargs,
    )


def state(
    *relations: testing.RelationBase,
    leader: bool = True,
    config: dict[str, str | bool] | None = None,
) -> testing.State:
    return testing.State(
        leader=leader,
        config=config or {},
        relations=set(relations),
        model=testing.Model(name=MODEL),
        containers={testing.Container("workload", can_connect=True)},
    )


def published(state_out: testing.State, relation: testing.Relation) -> list[dict[str, Any]]:
    return json.loads(state_out.get_relation(relation.id).local_app_data["policies"])


def app_policy(source: str, target: str = APP, source_namespace: str = MODEL) -> dict[str, Any]:
    return {
        "source_namespace": source_namespace,
        "source_app_name": source,
        "target_namespace": MODEL,
        "target_app_name": target,
        "target_selector_labels": None,
        "target_service": None,
        "target_type": "app",
        "endpoints": [
            {
                "hosts": None,
                "ports": [8080, 8081],
                "methods": ["GET", "POST"],
                "paths": ["/foo", "/bar/"],
            }
        ],
    }


def unit_policy(source: str, target: str = APP, source_namespace: str = MODEL) -> dict[str, Any]:
    return {
        "source_namespace": source_namespace,
        "source_app_name": source,
        "target_namespace": MODEL,
        "target_app_name": target,
        "target_selector_labels": None,
        "target_service": None,
        "target_type": "unit",
        "endpoints": [{"hosts": None, "ports": [8080, 8081], "methods": None, "paths": None}],
    }


def sort(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(policies, key=lambda p: json.dumps(p, sort_keys=True))


# -- policies ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("kube")
def test_the_declared_policies_are_published_for_each_related_app(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="client")
    inbound_unit = testing.Relation("inbound-unit", remote_app_name="scraper")
    outbound = testing.Relation("outbound", remote_app_name="server")
    peers = testing.PeerRelation("peers")

    state_out = ctx.run(
        ctx.on.config_changed(), state(mesh, inbound, inbound_unit, outbound, peers)
    )

    assert sort(published(state_out, mesh)) == sort(
        [app_policy("client"), unit_policy("scraper"), unit_policy(APP)]
    )
    # The first one spelled out, as it appears on the wire.
    assert app_policy("client") == json.loads(
        '{"source_namespace":"tester-model","source_app_name":"client",'
        '"target_namespace":"tester-model","target_app_name":"service-mesh-tester",'
        '"target_selector_labels":null,"target_service":null,"target_type":"app",'
        '"endpoints":[{"hosts":null,"ports":[8080,8081],"methods":["GET","POST"],'
        '"paths":["/foo","/bar/"]}]}'
    )
    assert state_out.unit_status == testing.ActiveStatus("serving on 8080, 8081, 8083")


@pytest.mark.usefixtures("kube")
def test_without_peer_communication_the_peer_policy_is_withdrawn(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    mesh = mesh_relation(local_app_data={"policies": json.dumps([unit_policy(APP)])})
    peers = testing.PeerRelation("peers")
    inbound = testing.Relation("inbound", remote_app_name="client")

    state_out = ctx.run(
        ctx.on.config_changed(),
        state(mesh, peers, inbound, config={"peer-communication": False}),
    )

    assert published(state_out, mesh) == [app_policy("client")]


@pytest.mark.usefixtures("kube")
def test_with_nothing_related_an_empty_list_is_published(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    mesh = mesh_relation()

    state_out = ctx.run(ctx.on.relation_created(mesh), state(mesh))

    assert state_out.get_relation(mesh.id).local_app_data["policies"] == "[]"


def test_a_follower_publishes_nothing_and_calls_no_api(
    ctx: testing.Context[ServiceMeshTesterCharm], kube: FakeKubeServer
):
    mesh = mesh_relation(AMBIENT)
    inbound = testing.Relation("inbound", remote_app_name="client")

    state_out = ctx.run(
        ctx.on.config_changed(),
        state(mesh, inbound, leader=False, config={"debug-impersonate-app": "victim"}),
    )

    assert state_out.get_relation(mesh.id).local_app_data == {}
    assert kube.requests == []


# -- the impersonation debug option --------------------------------------------------------------


@pytest.mark.usefixtures("kube")
def test_impersonation_publishes_policies_that_target_another_app(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="client")
    inbound_unit = testing.Relation("inbound-unit", remote_app_name="scraper")
    peers = testing.PeerRelation("peers")

    state_out = ctx.run(
        ctx.on.config_changed(),
        state(mesh, inbound, inbound_unit, peers, config={"debug-impersonate-app": "victim"}),
    )

    assert sort(published(state_out, mesh)) == sort(
        [
            app_policy("client", target="victim"),
            unit_policy("scraper", target="victim"),
            unit_policy(APP, target="victim"),
        ]
    )


@pytest.mark.usefixtures("kube")
def test_impersonation_keeps_cross_model_sources(ctx: testing.Context[ServiceMeshTesterCharm]):
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="remote-alias")
    cmr = testing.Relation(
        "provide-cmr-mesh",
        remote_app_name="remote-alias",
        remote_app_data={
            "cmr_data": json.dumps({"app_name": "client", "juju_model_name": "other-model"})
        },
        remote_model_uuid="3d2b2c1a-0000-4000-8000-0123456789ab",  # Juju: another model
    )

    state_out = ctx.run(
        ctx.on.config_changed(),
        state(mesh, inbound, cmr, config={"debug-impersonate-app": "victim"}),
    )

    assert published(state_out, mesh) == [
        app_policy("client", target="victim", source_namespace="other-model")
    ]


@pytest.mark.usefixtures("kube")
def test_clearing_impersonation_restores_the_honest_policies(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    lie = json.dumps([app_policy("client", target="victim")])
    mesh = mesh_relation(local_app_data={"policies": lie})
    inbound = testing.Relation("inbound", remote_app_name="client")

    state_out = ctx.run(
        ctx.on.config_changed(), state(mesh, inbound, config={"debug-impersonate-app": ""})
    )

    assert published(state_out, mesh) == [app_policy("client")]


@pytest.mark.usefixtures("kube")
def test_an_invalid_impersonation_target_blocks_and_publishes_the_honest_policies(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="client")
    peers = testing.PeerRelation("peers")

    state_out = ctx.run(
        ctx.on.config_changed(),
        state(
            mesh,
            inbound,
            peers,
            config={"debug-impersonate-app": "Not_An-App", "peer-communication": False},
        ),
    )

    assert state_out.unit_status == testing.BlockedStatus(
        "invalid config: debug-impersonate-app 'Not_An-App' is not a Juju application name;"
        " set it to one or to ''"
    )
    # The valid options are still honoured: no peer policy, no lie.
    assert published(state_out, mesh) == [app_policy("client")]


# -- a second Service for the inbound app policy ------------------------------------------------


@pytest.mark.usefixtures("kube")
def test_an_extra_inbound_service_adds_the_inbound_policy_on_that_service(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="client")

    state_out = ctx.run(
        ctx.on.config_changed(),
        state(mesh, inbound, config={"inbound-extra-service": "tester-admin"}),
    )

    on_admin = {**app_policy("client"), "target_service": "tester-admin"}
    assert sort(published(state_out, mesh)) == sort([app_policy("client"), on_admin])
    # Republished as declared on every later hook (what the integration test relies on).
    again = ctx.run(ctx.on.update_status(), state_out)
    assert sort(published(again, mesh)) == sort([app_policy("client"), on_admin])


@pytest.mark.usefixtures("kube")
def test_clearing_the_extra_inbound_service_withdraws_its_policy(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    on_admin = {**app_policy("client"), "target_service": "tester-admin"}
    mesh = mesh_relation(local_app_data={"policies": json.dumps([app_policy("client"), on_admin])})
    inbound = testing.Relation("inbound", remote_app_name="client")

    state_out = ctx.run(
        ctx.on.config_changed(), state(mesh, inbound, config={"inbound-extra-service": ""})
    )

    assert published(state_out, mesh) == [app_policy("client")]


@pytest.mark.usefixtures("kube")
def test_an_invalid_extra_inbound_service_blocks_and_keeps_the_valid_options(
    ctx: testing.Context[ServiceMeshTesterCharm],
):
    mesh = mesh_relation()
    inbound = testing.Relation("inbound", remote_app_name="client")
    peers = testing.PeerRelation("peers")

    state_out = ctx.run(
        ctx.on.config_changed(),
        state(
            mesh,
            inbound,
            peers,
            config={"inbound-extra-service": "Admin_Service", "peer-communication": False},
        ),
    )

    assert state_out.unit_status == testing.BlockedStatus(
        "invalid config: inbound-extra-service 'Admin_Service' is not a Kubernetes Service name"
        " (lower-case letters, digits and '-', at most 63); set it to one or to ''"
    )
    # The valid options are still honoured: no peer policy, no policy on the invalid Service.
    assert published(state_out, mesh) == [app_policy("client")]


# -- labels --------------------------------------------------------------------------------------


def pod_labels(kube: FakeKubeServer) -> dict[str, str]:
    statefulset = kube.get("statefulsets", MODEL, APP)
    assert statefulset is not None
    return statefulset["spec"]["template"]["metadata"]["labels"]


def service_labels(kube: FakeKubeServer) -> dict[str, str]:
    service = kube.get("services", MODEL, APP)
    assert service is not None
    return service["metadata"]["labels"]


def test_auto_join_puts_the_mesh_labels_on_the_pods_and_service(
    ctx: testing.Context[ServiceMeshTesterCharm], kube: FakeKubeServer
):
    mesh = mesh_relation(AMBIENT)

    state_out = ctx.run(ctx.on.relation_changed(mesh), state(mesh))

    assert pod_labels(kube) == {"app.kubernetes.io/name": APP, **AMBIENT}
    # The data-plane label is read on pods only: the library leaves it off the Service.
    assert service_labels(kube) == {"app": APP}
    assert state_out.app_status == testing.UnknownStatus()


def test_switching_auto_join_off_removes_the_labels_applied_before(
    ctx: testing.Context[ServiceMeshTesterCharm], kube: FakeKubeServer
):
    mesh = mesh_relation(AMBIENT)
    # Labels applied by an earlier incarnation of the charm pod: the library's memory of having
    # applied them was in that pod; only the ConfigMap remembers.
    ctx.run(ctx.on.relation_changed(mesh), state(mesh))
    assert AMBIENT.items() <= pod_labels(kube).items()
    assert kube.get("configmaps", MODEL, LABELS_CONFIGMAP) is not None

    state_out = ctx.run(ctx.on.config_changed(), state(mesh, config={"auto-join-mesh": False}))

    assert pod_labels(kube) == {"app.kubernetes.io/name": APP}
    assert service_labels(kube) == {"app": APP}
    assert state_out.unit_status == testing.ActiveStatus("serving on 8080, 8081, 8083")


def test_without_trust_and_without_auto_join_nothing_is_blocked(
    ctx: testing.Context[ServiceMeshTesterCharm], kube: FakeKubeServer
):
    # An untrusted app that does not join the mesh cannot have put labels: not a problem.
    kube.forbid()
    mesh = mesh_relation(AMBIENT)

    state_out = ctx.run(ctx.on.config_changed(), state(mesh, config={"auto-join-mesh": False}))

    assert state_out.unit_status == testing.ActiveStatus("serving on 8080, 8081, 8083")
    assert state_out.app_status == testing.UnknownStatus()
    assert kube.write_count() == 0
    # The policies are still published: they do not need Kubernetes.
    assert published(state_out, mesh) == []


def test_without_trust_joining_blocks_with_the_fix_until_trusted(
    ctx: testing.Context[ServiceMeshTesterCharm], kube: FakeKubeServer
):
    kube.forbid()
    mesh = mesh_relation(AMBIENT)

    state_out = ctx.run(ctx.on.relation_changed(mesh), state(mesh))

    assert state_out.app_status == testing.BlockedStatus(
        f"cannot put the mesh labels on {APP}: run `juju trust {APP} --scope=cluster`"
    )
    assert AMBIENT.items() - pod_labels(kube).items()

    # Once trusted, update-status retries and clears the status.
    kube.allow_all()
    state_out = ctx.run(ctx.on.update_status(), state_out)
    assert state_out.app_status == testing.ActiveStatus()
    assert AMBIENT.items() <= pod_labels(kube).items()
