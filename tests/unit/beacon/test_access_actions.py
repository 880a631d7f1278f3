"""The ``access-map`` and ``explain`` actions through ops.testing, Kubernetes through the fake."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from charm import IstioBeaconCharm
from conftest import (
    MESH_LABELS,
    MODEL,
    KubeFactory,
    beacon_state,
    istio_runs_waypoint,
    mesh_relation,
    wire_policy,
)
from lightkube import codecs
from ops import testing
from support import juju_seed
from support.fake_kube import FakeKubeServer

SENDER, RECEIVER, LEGACY = "sender", "receiver", "legacy"


def seed_app(kube: FakeKubeServer, app: str, on_mesh: bool = True) -> None:
    """An app as Juju makes it, with the mesh labels the library puts on it when on the mesh."""
    client = kube.client()
    labels = MESH_LABELS if on_mesh else {}
    client.create(
        codecs.from_dict(juju_seed.statefulset_manifest(app, MODEL, **labels)),
        field_manager=juju_seed.JUJU_FIELD_MANAGER,
    )
    juju_seed.seed_service(client, app, MODEL, {**juju_seed.app_labels(app), **labels})


def foreign_deny(kube: FakeKubeServer, name: str = "no-posts") -> None:
    kube.put(
        {
            "apiVersion": "security.istio.io/v1",
            "kind": "AuthorizationPolicy",
            "metadata": {"name": name, "namespace": MODEL},
            "spec": {
                "action": "DENY",
                "targetRefs": [{"group": "", "kind": "Service", "name": RECEIVER}],
                "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}],
            },
        }
    )


@pytest.fixture
def mesh(kube: FakeKubeServer) -> FakeKubeServer:
    for app in (SENDER, RECEIVER):
        seed_app(kube, app)
    seed_app(kube, LEGACY, on_mesh=False)
    istio_runs_waypoint(kube)
    foreign_deny(kube)
    return kube


def receiver_relation() -> testing.Relation:
    endpoint = {"hosts": None, "ports": [8080, 8081], "methods": ["GET"], "paths": ["/data/*"]}
    return mesh_relation(RECEIVER, [wire_policy(SENDER, RECEIVER, endpoints=[endpoint])])


def liar_relation() -> testing.Relation:
    return mesh_relation("liar", [wire_policy(SENDER, RECEIVER)])


def reconciled(ctx: testing.Context[IstioBeaconCharm], *relations: testing.Relation):
    state = beacon_state(relations=relations)
    return ctx.run(ctx.on.update_status(), state)


def run_action(
    ctx: testing.Context[IstioBeaconCharm], state: testing.State, name: str, **params: Any
) -> dict[str, Any]:
    ctx.run(ctx.on.action(name, params=params), state)
    assert ctx.action_results is not None
    return ctx.action_results


def test_access_map_table_shows_grants_with_provenance_refusals_apps_and_foreign(
    ctx: testing.Context[IstioBeaconCharm], mesh: FakeKubeServer
):
    relation = receiver_relation()
    state = reconciled(ctx, relation, liar_relation())
    text = run_action(ctx, state, "access-map")["map"]
    grant = next(line for line in text.splitlines() if line.startswith("1 "))
    for expected in (SENDER, MODEL, RECEIVER, "app", "8080,8081", "GET", "/data/*"):
        assert expected in grant.split()
    assert f"receiver over relation {relation.id} (service-mesh)" in grant
    assert "narrowed by DENY policy no-posts" in text
    assert "liar" in text
    assert 'targets app "receiver"' in text
    rows = [line.split() for line in text.splitlines()]
    assert [LEGACY, "off", "off", "the", "mesh:", "nothing", "enforced"] in rows
    assert ["no-posts", "DENY", "narrows", "receiver", "(app)"] in [row[:5] for row in rows]


def test_access_map_json_and_filter(ctx: testing.Context[IstioBeaconCharm], mesh: FakeKubeServer):
    state = reconciled(ctx, receiver_relation())
    results = run_action(ctx, state, "access-map", format="json", app=LEGACY)
    data = json.loads(results["map"])
    assert data["grants"] == []
    assert data["apps"] == [
        {"app": LEGACY, "on_mesh": False, "waypoint": "off the mesh: nothing enforced"}
    ]
    everything = json.loads(run_action(ctx, state, "access-map", format="json")["map"])
    (grant,) = [g for g in everything["grants"] if not g["waypoint_access"]]
    assert grant["source"] == SENDER
    assert grant["ports"] == ["8080", "8081"]
    assert grant["foreign"] is False
    assert [f["name"] for f in everything["foreign"]] == ["no-posts"]


@pytest.mark.parametrize(("fmt", "start"), [("mermaid", "flowchart LR"), ("dot", "digraph")])
def test_access_map_graphs(
    ctx: testing.Context[IstioBeaconCharm], mesh: FakeKubeServer, fmt: str, start: str
):
    state = reconciled(ctx, receiver_relation())
    text = run_action(ctx, state, "access-map", format=fmt)["map"]
    assert text.startswith(start)
    assert "8080,8081 GET /data/*" in text


def test_access_map_refuses_an_unknown_format(
    ctx: testing.Context[IstioBeaconCharm], mesh: FakeKubeServer
):
    with pytest.raises(testing.ActionFailed, match="format must be one of"):
        ctx.run(ctx.on.action("access-map", params={"format": "svg"}), beacon_state())


GET_DATA: dict[str, Any] = {"port": 8080, "method": "GET", "path": "/data/1"}


@pytest.mark.parametrize(
    ("params", "verdict", "words"),
    [
        (GET_DATA, "allow", "allows it"),
        ({**GET_DATA, "port": 9000}, "deny", "opens 8080 and 8081, not 9000"),
        ({**GET_DATA, "method": "POST"}, "deny", "no-posts (not made by the beacon) denies it"),
        ({**GET_DATA, "source": LEGACY}, "deny", "caller"),
        ({"port": 80, "target": LEGACY}, "allow", "legacy is not on the mesh, so nothing is"),
        ({"port": 8080}, "unknown", "give method= to decide"),
        ({"port": 8080, "level": "unit"}, "deny", "bound to the waypoint"),
        ({**GET_DATA, "source": "far/other-model"}, "deny", "no relation between these apps"),
    ],
)
def test_explain(
    ctx: testing.Context[IstioBeaconCharm],
    mesh: FakeKubeServer,
    params: dict[str, Any],
    verdict: str,
    words: str,
):
    state = reconciled(ctx, receiver_relation())
    results = run_action(ctx, state, "explain", **{"source": SENDER, "target": RECEIVER, **params})
    assert results["verdict"] == verdict
    assert words in results["explanation"]


def test_explain_names_the_relations_app_policy_for_an_allow_through_the_service(
    ctx: testing.Context[IstioBeaconCharm], mesh: FakeKubeServer
):
    relation = receiver_relation()
    state = reconciled(ctx, relation)
    results = run_action(ctx, state, "explain", source=SENDER, target=RECEIVER, **GET_DATA)
    assert results["verdict"] == "allow"
    assert results["policy"].startswith(f"{RECEIVER}-app-from-{SENDER}-")
    assert results["reason"] == (
        f"AuthorizationPolicy {results['policy']} (asked for by {RECEIVER} over relation "
        f"{relation.id}, service-mesh) allows it"
    )
    # The waypoint-to-pod hop is still shown, as a step that supports the verdict.
    steps = results["explanation"].splitlines()[1:3]
    waypoint = "  1.* waypoint (L7, the Service's policies): allow: "
    assert steps[0] == waypoint + results["reason"]
    assert steps[1].startswith("  2. ztunnel (L4, in front of the pods): allow: ")
    assert results["policy"] not in steps[1]


@pytest.mark.parametrize(
    ("params", "policy", "reason"),
    [
        ({**GET_DATA, "method": "POST"}, "no-posts", "no-posts (not made by the beacon) denies"),
        ({**GET_DATA, "port": 9000}, "", "opens 8080 and 8081, not 9000"),
        ({"port": 8080, "level": "unit"}, "", "bound to the waypoint"),
    ],
)
def test_explain_names_the_step_that_denied(
    ctx: testing.Context[IstioBeaconCharm],
    mesh: FakeKubeServer,
    params: dict[str, Any],
    policy: str,
    reason: str,
):
    state = reconciled(ctx, receiver_relation())
    results = run_action(ctx, state, "explain", **{"source": SENDER, "target": RECEIVER, **params})
    assert results["verdict"] == "deny"
    assert results["policy"] == policy
    assert reason in results["reason"]
    assert results["reason"] in results["explanation"].splitlines()[-1]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"source": "a", "target": "b", "port": 0}, "port must be a port number"),
        (
            {"source": "a", "target": "b", "port": 80, "method": "g3t"},
            "an HTTP method such as GET",
        ),
        ({"source": "a", "target": "b", "port": 80, "level": "pod"}, "level must be app or unit"),
        ({"source": "", "target": "b", "port": 80}, "give source="),
    ],
)
def test_explain_refuses_what_cannot_be_a_request(
    ctx: testing.Context[IstioBeaconCharm],
    mesh: FakeKubeServer,
    params: dict[str, Any],
    message: str,
):
    with pytest.raises(testing.ActionFailed, match=message):
        ctx.run(ctx.on.action("explain", params=params), beacon_state())


def test_actions_say_what_to_do_without_istio(
    ctx: testing.Context[IstioBeaconCharm], make_kube: KubeFactory
):
    make_kube(crds=())
    with pytest.raises(testing.ActionFailed, match="deploy istio-k8s"):
        ctx.run(ctx.on.action("access-map"), beacon_state())


def test_explain_takes_a_method_in_any_case(
    ctx: testing.Context[IstioBeaconCharm], mesh: FakeKubeServer
):
    state = reconciled(ctx, receiver_relation())
    upper = dict(run_action(ctx, state, "explain", source=SENDER, target=RECEIVER, **GET_DATA))
    lower = run_action(
        ctx, state, "explain", source=SENDER, target=RECEIVER, **{**GET_DATA, "method": "get"}
    )
    assert upper["verdict"] == "allow"
    assert lower == upper


@pytest.mark.parametrize("action", ["access-map", "explain"])
@pytest.mark.parametrize("where", ["closed port", "no configuration"])
def test_actions_fail_cleanly_when_kubernetes_cannot_be_reached(
    ctx: testing.Context[IstioBeaconCharm],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    action: str,
    where: str,
):
    """A message saying so, not a traceback: ``event.fail``, the hook itself succeeds."""
    if where == "closed port":
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]  # free once closed: nothing listens there
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {"token": "t"}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
        (tmp_path / "kubeconfig").write_text(json.dumps(config))
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "kubeconfig"))
    else:
        monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    params = {"source": "a", "target": "b", "port": 80} if action == "explain" else {}

    with pytest.raises(testing.ActionFailed, match=r"^cannot reach Kubernetes: ") as failed:
        ctx.run(ctx.on.action(action, params=params), beacon_state())

    assert "Traceback" not in failed.value.message
    assert len(failed.value.message) < 400


def test_actions_say_what_to_do_without_trust(
    ctx: testing.Context[IstioBeaconCharm], mesh: FakeKubeServer
):
    mesh.forbid("list", "authorizationpolicies")
    with pytest.raises(testing.ActionFailed, match="juju trust istio-beacon-k8s"):
        ctx.run(ctx.on.action("explain", params={"source": "a", "target": "b", "port": 1}),
                beacon_state())  # fmt: skip


def test_hostile_text_is_escaped_and_bounded(
    ctx: testing.Context[IstioBeaconCharm], mesh: FakeKubeServer
):
    hostile = "\x1b[31mred\x1b[0m\u202e" + "x" * 900
    relation = mesh_relation("liar", [wire_policy(SENDER, RECEIVER, target_namespace=hostile)])
    state = reconciled(ctx, relation)
    for fmt in ("table", "mermaid", "dot"):
        text = run_action(ctx, state, "access-map", format=fmt)["map"]
        assert "\x1b" not in text
        assert "\u202e" not in text
        assert max(len(line) for line in text.splitlines()) < 1000
    table = run_action(ctx, state, "access-map")["map"]
    assert "\\x1b[31mred" in table
    assert "\\u202e" in table
    data = run_action(ctx, state, "access-map", format="json")["map"]
    assert len(data) < 2000
    assert "\x1b" not in data
