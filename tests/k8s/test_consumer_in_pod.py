"""The consumer's labels through the production path: the pod's service account, nothing else.

A service-account directory is laid out as Kubernetes mounts it in a pod (``token``, ``ca.crt``,
``namespace``) for the app's ServiceAccount, bound to a Role that allows everything in its
namespace (a namespace admin), and ``KUBERNETES_SERVICE_HOST``/``PORT`` name the real API
server. No kubeconfig is given. The consumer, run by ops.testing, must label its StatefulSet and
Service as that identity.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import ops
import pytest
import yaml
from charms.istio_beacon_k8s.v0 import service_mesh
from charms.istio_beacon_k8s.v0.service_mesh import AppPolicy, ServiceMeshConsumer
from lightkube import Client
from lightkube.resources.apps_v1 import StatefulSet
from lightkube.resources.core_v1 import Service
from ops import testing
from support import juju_seed
from support.kube_server import KubeServer

APP = "shop"
LABELS = {"istio.io/dataplane-mode": "ambient", "istio.io/use-waypoint": "w"}
META = {
    "name": APP,
    "requires": {"service-mesh": {"interface": "service_mesh", "limit": 1}},
    "provides": {"api": {"interface": "http"}},
}


class ShopCharm(ops.CharmBase):
    def __init__(self, framework: ops.Framework):
        super().__init__(framework)
        self.mesh = ServiceMeshConsumer(self, policies=[AppPolicy(relation="api")])


@pytest.fixture
def pod(kube: KubeServer, namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The app's service account mounted as in a pod; the environment of a pod."""
    kubeconfig = yaml.safe_load(kube.namespaced_kubeconfig(namespace, APP).read_text())
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(kubeconfig["users"][0]["user"]["token"])
    shutil.copy(kubeconfig["clusters"][0]["cluster"]["certificate-authority"], account / "ca.crt")
    (account / "namespace").write_text(namespace)
    server = urlsplit(kube.url)
    monkeypatch.setattr(service_mesh, "SERVICE_ACCOUNT_DIR", str(account))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", str(server.hostname))
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(server.port))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.kube/config to fall back on either
    return account


def test_the_consumer_labels_itself_as_the_pods_service_account(
    pod: Path, admin: Client, namespace: str
):
    juju_seed.seed_app(admin, APP, namespace)
    mesh = testing.Relation(
        "service-mesh",
        remote_app_name="beacon",
        remote_app_data={"labels": json.dumps(LABELS), "mesh_type": '"istio"'},
    )
    ctx = testing.Context(ShopCharm, meta=META, app_name=APP)
    out = ctx.run(
        ctx.on.relation_changed(mesh),
        testing.State(leader=True, relations=[mesh], model=testing.Model(name=namespace)),
    )

    assert out.app_status == testing.UnknownStatus()
    statefulset = admin.get(StatefulSet, APP, namespace=namespace)
    assert statefulset.spec is not None
    assert statefulset.spec.template.metadata is not None
    # Each label where Istio reads it: the data plane on the pods, the waypoint on the Service.
    pod_labels = statefulset.spec.template.metadata.labels or {}
    assert pod_labels["istio.io/dataplane-mode"] == "ambient"
    service = admin.get(Service, APP, namespace=namespace)
    assert service.metadata is not None
    assert (service.metadata.labels or {})["istio.io/use-waypoint"] == "w"
    # No kubeconfig existed (KUBECONFIG unset, an empty HOME): the mounted account was the way in.
