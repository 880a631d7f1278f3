"""The consumer puts the mesh labels on its own StatefulSet and Service (auto_join)."""

from __future__ import annotations

import dataclasses
import http.server
import json
import logging
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import use_kubernetes_client
from juju_objects import KUBE_MODEL, pod_template_labels, seed_app, service_labels
from lightkube import Client, KubeConfig
from mesh_charms import (
    CONSUMER,
    MESH_LABELS,
    consumer_context,
    mesh_relation,
    provider_databag,
    state,
)
from ops import testing
from support.fake_kube import FakeKubeServer

JUJU = {"app.kubernetes.io/name": CONSUMER}
# Each mesh label goes only where Istio reads it: the data-plane mode on pods, the waypoint on
# the Service.
POD_MESH = {"istio.io/dataplane-mode": MESH_LABELS["istio.io/dataplane-mode"]}
SERVICE_MESH = {"istio.io/use-waypoint": MESH_LABELS["istio.io/use-waypoint"]}
CONFIGMAP = f"juju-service-mesh-{CONSUMER}-labels"


@pytest.fixture
def app(kube: FakeKubeServer) -> FakeKubeServer:
    """The fake cluster, with the consumer's StatefulSet and Service as Juju made them."""
    seed_app(kube, CONSUMER, KUBE_MODEL)
    kube.reset_requests()
    return kube


def joined(labels: dict[str, str] = MESH_LABELS) -> testing.State:
    return state(mesh_relation(remote_app_data=provider_databag(labels)), model=KUBE_MODEL)


def remembered(kube: FakeKubeServer) -> dict[str, str]:
    configmap = kube.get("configmaps", KUBE_MODEL, CONFIGMAP)
    assert configmap is not None
    return json.loads(configmap["data"]["labels"])


def test_leader_puts_the_mesh_labels_on_its_pods_and_service(app: FakeKubeServer):
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), joined())

    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}
    assert service_labels(app, CONSUMER) == {**JUJU, **SERVICE_MESH}
    assert remembered(app) == MESH_LABELS
    assert out.app_status == testing.UnknownStatus()


def test_a_converged_consumer_makes_no_api_call(app: FakeKubeServer):
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), joined())
    app.reset_requests()

    ctx.run(ctx.on.upgrade_charm(), out)
    ctx.run(ctx.on.update_status(), out)

    assert app.requests == []


def test_non_leader_does_nothing(app: FakeKubeServer):
    ctx = consumer_context(auto_join=True)
    mesh = mesh_relation(remote_app_data=provider_databag())
    out = ctx.run(ctx.on.relation_changed(mesh), state(mesh, leader=False, model=KUBE_MODEL))
    assert app.requests == []
    assert out.app_status == testing.UnknownStatus()


def test_untrusted_app_is_blocked_until_trusted(app: FakeKubeServer):
    app.forbid()  # an untrusted app may do nothing with the API
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), joined())
    assert isinstance(out.app_status, testing.BlockedStatus)
    assert f"juju trust {CONSUMER} --scope=cluster" in out.app_status.message
    assert pod_template_labels(app, CONSUMER) == JUJU

    # Once trusted, update-status retries.
    app.allow_all()
    out = ctx.run(ctx.on.update_status(), out)
    assert not isinstance(out.app_status, testing.BlockedStatus)
    assert service_labels(app, CONSUMER) == {**JUJU, **SERVICE_MESH}


def test_untrusted_app_without_labels_to_put_is_not_blocked(app: FakeKubeServer):
    app.forbid()
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), joined({}))
    assert out.app_status == testing.UnknownStatus()


def test_labels_put_while_trusted_stay_reported_until_trust_returns(app: FakeKubeServer):
    """Trust revoked, then the mesh relation removed: the labels it put cannot go yet: said so."""
    ctx = consumer_context(auto_join=True)
    mesh = mesh_relation(remote_app_data=provider_databag())
    out = ctx.run(ctx.on.leader_elected(), state(mesh, model=KUBE_MODEL))
    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}

    app.forbid()
    out = ctx.run(ctx.on.relation_broken(out.get_relation(mesh.id)), out)
    assert isinstance(out.app_status, testing.BlockedStatus)
    assert out.app_status.message == (
        f"cannot remove the mesh labels from {CONSUMER}: run `juju trust {CONSUMER} "
        "--scope=cluster`"
    )
    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}

    # Trusted again: update-status removes them and clears the status.
    app.allow_all()
    out = ctx.run(ctx.on.update_status(), dataclasses.replace(out, relations=[]))
    assert pod_template_labels(app, CONSUMER) == JUJU
    assert service_labels(app, CONSUMER) == JUJU
    assert not isinstance(out.app_status, testing.BlockedStatus)


def test_a_unit_leading_again_checks_what_another_leader_changed(app: FakeKubeServer):
    """Unit 0 put the labels; unit 1, leading meanwhile, removed them: unit 0 puts them back."""
    ctx = consumer_context(auto_join=True)
    mesh = mesh_relation(remote_app_data=provider_databag())
    unit0 = ctx.run(ctx.on.leader_elected(), state(mesh, model=KUBE_MODEL))
    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}

    # Unit 1 (its own stored state) leads while the mesh relation goes: it removes them.
    ctx.run(ctx.on.relation_broken(mesh), state(mesh, model=KUBE_MODEL))
    assert pod_template_labels(app, CONSUMER) == JUJU

    # Related again; unit 0 leads again, with what it remembers from before.
    again = mesh_relation(remote_app_data=provider_databag())
    ctx.run(ctx.on.leader_elected(), dataclasses.replace(unit0, relations=[again]))
    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}
    assert service_labels(app, CONSUMER) == {**JUJU, **SERVICE_MESH}


def test_other_api_errors_are_reported(kube: FakeKubeServer):
    # No StatefulSet: Kubernetes answers 404.
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), joined())
    assert isinstance(out.app_status, testing.BlockedStatus)
    assert "Kubernetes said 404" in out.app_status.message


def test_unreachable_kubernetes_is_reported(tmp_path: Path):
    # Nothing listens on the address the client points at.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = KubeConfig.from_dict(
        {
            "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
            "users": [{"name": "u", "user": {}}],
            "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "x",
        }
    )
    ctx = consumer_context(auto_join=True)
    with use_kubernetes_client(Client(config)):
        out = ctx.run(ctx.on.leader_elected(), joined())
    assert isinstance(out.app_status, testing.BlockedStatus)
    assert out.app_status.message.startswith(f"cannot reach Kubernetes to label {CONSUMER}")


def test_outside_a_pod_the_consumer_says_so_and_reads_no_kubeconfig(
    monkeypatch: pytest.MonkeyPatch,
):
    # A kubeconfig naming a reachable cluster is on hand: the library must not use it. No
    # service account is mounted here (this is no pod), so nothing is touched.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with FakeKubeServer(namespaces=("default", KUBE_MODEL)) as kube:
        monkeypatch.setenv("KUBECONFIG", str(kube.kubeconfig_path))
        seed_app(kube, CONSUMER, KUBE_MODEL)
        kube.reset_requests()
        ctx = consumer_context(auto_join=True)
        out = ctx.run(ctx.on.leader_elected(), joined())
        assert kube.requests == []
        assert pod_template_labels(kube, CONSUMER) == JUJU
    assert out.app_status == testing.BlockedStatus(
        f"cannot put the mesh labels on {CONSUMER}: not running in a Kubernetes pod (no service "
        "account token at /var/run/secrets/kubernetes.io/serviceaccount/token, or no "
        "KUBERNETES_SERVICE_HOST); the library only acts as the pod's service account (in unit "
        "tests, wrap the run in use_kubernetes_client(None))"
    )


def test_outside_a_pod_with_nothing_to_put_the_consumer_stays_quiet(
    monkeypatch: pytest.MonkeyPatch,
):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), state(model=KUBE_MODEL))
    assert out.app_status == testing.UnknownStatus()


def test_switched_off_kubernetes_puts_nothing_and_reports_nothing(app: FakeKubeServer):
    ctx = consumer_context(auto_join=True)
    with use_kubernetes_client(None):
        out = ctx.run(ctx.on.leader_elected(), joined())
    assert out.app_status == testing.UnknownStatus()
    assert app.requests == []
    assert pod_template_labels(app, CONSUMER) == JUJU


def test_switching_auto_join_off_removes_the_labels(app: FakeKubeServer):
    on = consumer_context(auto_join=True)
    out = on.run(on.on.leader_elected(), joined())
    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}

    off = consumer_context(auto_join=False)
    out = off.run(off.on.upgrade_charm(), out)

    assert pod_template_labels(app, CONSUMER) == JUJU
    assert service_labels(app, CONSUMER) == JUJU
    assert remembered(app) == {}


def test_labels_put_by_an_earlier_unit_are_removed_with_auto_join_off(app: FakeKubeServer):
    """The ConfigMap, not the unit's memory, says what to remove (a pod restart wipes memory)."""
    on = consumer_context(auto_join=True)
    on.run(on.on.leader_elected(), joined())

    off = consumer_context(auto_join=False)
    off.run(off.on.leader_elected(), joined())

    assert pod_template_labels(app, CONSUMER) == JUJU


def test_whole_model_on_the_mesh_removes_the_labels(app: FakeKubeServer):
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), joined())
    mesh = out.get_relations("service-mesh")[0]
    emptied = dataclasses.replace(mesh, remote_app_data=provider_databag({}))

    ctx.run(ctx.on.relation_changed(emptied), dataclasses.replace(out, relations=[emptied]))

    assert pod_template_labels(app, CONSUMER) == JUJU
    assert service_labels(app, CONSUMER) == JUJU


def test_leaving_the_mesh_removes_the_labels(app: FakeKubeServer):
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), joined())
    mesh = out.get_relations("service-mesh")[0]

    ctx.run(ctx.on.relation_broken(mesh), out)

    assert pod_template_labels(app, CONSUMER) == JUJU
    assert service_labels(app, CONSUMER) == JUJU


def test_importing_the_library_does_not_import_lightkube():
    root = Path(__file__).resolve().parents[3]
    # ops itself imports pydantic when ops[tracing] is installed (as for the beacon): what counts
    # is that the library adds neither lightkube nor pydantic to what ops already loaded.
    code = (
        "import sys, ops; before = set(sys.modules); "
        "import charms.istio_beacon_k8s.v0.service_mesh; "
        "added = set(sys.modules) - before; "
        "assert not any(m.split('.')[0] == 'lightkube' for m in added), 'lightkube imported'; "
        "assert not any(m.split('.')[0] == 'pydantic' for m in added), 'pydantic imported'; "
        "assert 'lightkube' not in sys.modules, 'lightkube imported by ops?'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(root / "lib")},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_kubernetes_requests_are_not_logged_one_by_one(
    app: FakeKubeServer, monkeypatch: pytest.MonkeyPatch
):
    # Each line a charm logs is a juju-log call: the HTTP client's per-request INFO lines would
    # cost one per request. The library quiets the loggers that the charm left unconfigured.
    for name in ("httpx", "httpcore", "httpx2", "httpcore2"):
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    ctx = consumer_context(auto_join=True)
    ctx.run(ctx.on.leader_elected(), joined())

    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}
    requests_logged = [line for line in ctx.juju_log if "HTTP Request" in line.message]
    assert requests_logged == []


def test_a_non_json_http_error_is_reported_with_its_status(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    # A proxy or load balancer in front of the API server answers in plain text: lightkube
    # then raises its HTTP library's error, not ApiError. The status still names the code.
    class PlainTextBadGateway(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"bad gateway\n"
            self.send_response(502)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            del format, args

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), PlainTextBadGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": "c",
                            "cluster": {"server": f"http://127.0.0.1:{server.server_port}"},
                        }
                    ],
                    "users": [{"name": "u", "user": {}}],
                    "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                    "current-context": "x",
                }
            )
        )
        ctx = consumer_context(auto_join=True)
        with use_kubernetes_client(Client(KubeConfig.from_file(kubeconfig))):
            out = ctx.run(ctx.on.leader_elected(), joined())
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert out.app_status == testing.BlockedStatus(
        f"cannot put the mesh labels on {CONSUMER}: Kubernetes said 502"
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("istio.io/dataplane-mode", "none"),  # would take the app off the mesh
        ("istio.io/use-waypoint-namespace", "elsewhere"),  # a waypoint that serves another model
    ],
)
def test_mesh_labels_it_cannot_justify_are_not_put(
    app: FakeKubeServer, caplog: pytest.LogCaptureFixture, key: str, value: str
):
    ctx = consumer_context(auto_join=True)
    ctx.run(ctx.on.leader_elected(), joined())

    ctx.run(ctx.on.leader_elected(), joined({**MESH_LABELS, key: value}))

    # The labels stay as they were: bad provider data never takes the app off the mesh.
    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}
    assert service_labels(app, CONSUMER) == {**JUJU, **SERVICE_MESH}
    assert "ignoring the mesh labels" in caplog.text


UNUSABLE_PROVIDER_DATA = {
    "nested": {"labels": "[" * 1000 + "]" * 1000, "mesh_type": '"istio"'},
    "not-json": {"labels": "{not json", "mesh_type": '"istio"'},
    "unknown-mesh": {"labels": json.dumps(MESH_LABELS), "mesh_type": '"other-mesh"'},
    "oversized": {"labels": json.dumps(MESH_LABELS) + " " * 20_000, "mesh_type": '"istio"'},
}


@pytest.mark.parametrize(
    "databag", list(UNUSABLE_PROVIDER_DATA.values()), ids=list(UNUSABLE_PROVIDER_DATA)
)
def test_unusable_provider_data_keeps_the_labels_it_applied(
    app: FakeKubeServer, databag: dict[str, str]
):
    """Stripping them would take the app's pods off the mesh: they stay until data is valid."""
    ctx = consumer_context(auto_join=True)
    out = ctx.run(ctx.on.leader_elected(), joined())
    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}
    mesh = out.get_relations("service-mesh")[0]
    broken = dataclasses.replace(mesh, remote_app_data=databag)

    out = ctx.run(ctx.on.relation_changed(broken), dataclasses.replace(out, relations=[broken]))

    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}
    assert service_labels(app, CONSUMER) == {**JUJU, **SERVICE_MESH}
    assert remembered(app) == MESH_LABELS
    # A new leader, with no memory of its own, keeps them too.
    fresh = consumer_context(auto_join=True)
    fresh.run(fresh.on.leader_elected(), state(broken, model=KUBE_MODEL))
    assert pod_template_labels(app, CONSUMER) == {**JUJU, **POD_MESH}
    assert service_labels(app, CONSUMER) == {**JUJU, **SERVICE_MESH}
