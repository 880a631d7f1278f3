"""The Kubernetes API the benchmark runs against, and how it counts the requests it receives.

The real tier (etcd + kube-apiserver on loopback, ``tests/support/kube_server.py``) counts requests
with the apiserver's own ``apiserver_request_total``. When its binaries are not built, the
benchmark says so and falls back to the fake API server (``tests/support/fake_kube.py``), which
records every request it serves; its figures are labelled as such.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any, Protocol, cast

from lightkube import codecs
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.apps_v1 import DeploymentStatus
from lightkube.types import PatchType
from support import istiod_standin
from support.fake_kube import FakeKubeServer
from support.kube_server import BUILD_SCRIPT, WRITE_VERBS, KubeServer, RequestKey, ensure_namespace

#: Requests the apiserver makes to itself (its lease heartbeat) or that are not resources
#: (``/openapi``, ``/metrics``): never the charm's.
_NOISE_GROUPS_RESOURCES = {("coordination.k8s.io", "leases")}

#: The fake records Kubernetes verbs; the apiserver's metric names them like this.
_FAKE_VERBS = {
    "get": "GET",
    "list": "LIST",
    "watch": "WATCH",
    "create": "POST",
    "update": "PUT",
    "patch": "PATCH",
    "apply": "APPLY",
    "delete": "DELETE",
    "deletecollection": "DELETECOLLECTION",
}

#: Service IPs for thousands of Services (the default range holds ~250).
_SERVICE_RANGE = "--service-cluster-ip-range=10.96.0.0/16"


class KubeBackend(Protocol):
    """An API server with request accounting."""

    kind: str
    """``real`` or ``fake``."""
    label: str
    """What to print next to the figures."""
    kubeconfig: Path
    """Admin kubeconfig: ``KUBECONFIG`` points here while the charm runs."""

    def create_namespace(self, name: str) -> None:
        """Create a namespace (the model)."""
        ...

    def seed(self, objects: list[dict[str, Any]]) -> None:
        """Create objects as Juju would (field manager ``juju``)."""
        ...

    def snapshot(self) -> object:
        """An opaque marker of the requests received so far."""
        ...

    def requests_since(self, snapshot: object) -> Counter[tuple[str, str]]:
        """Requests since ``snapshot``, by (verb, resource); verbs named as the apiserver does."""
        ...

    def play_istio(self, namespace: str) -> None:
        """Do what istiod does with each Gateway of ``namespace``: see `istio_status`."""
        ...

    def server_cpu_s(self) -> float:
        """CPU seconds the API server's own processes have used so far (0 when in-process)."""
        ...

    def close(self) -> None:
        """Stop the server."""
        ...


def istio_status(gateway: dict[str, Any]) -> dict[str, Any]:
    """The status istiod gives a waypoint Gateway it has programmed (for its generation)."""
    return istiod_standin.programmed_status(gateway.get("metadata", {}).get("generation", 1))


def waypoint_deployment(name: str, namespace: str) -> dict[str, Any]:
    """The Deployment istiod makes for waypoint ``name``, one replica, ready."""
    return istiod_standin.waypoint_deployment(name, namespace)


_GATEWAY = create_namespaced_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")


def real_tier_folder() -> tuple[Path | None, str]:
    """The build folder of the real tier if it is complete, else ``None`` and why not.

    Never builds: the first build takes half an hour (``tools/kube-tier/build.sh``).
    """
    key = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-key"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    root = Path(
        os.environ.get("KUBE_TIER_CACHE")
        or Path.home() / ".cache" / "service-mesh-beacon" / "kube-tier"
    )
    folder = root / key
    needed = ["bin/etcd", "bin/kube-apiserver", "crds/istio.yaml", ".complete"]
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        return None, f"{folder} lacks {', '.join(missing)} (build it: bash {BUILD_SCRIPT})"
    return folder, ""


class RealBackend:
    """etcd + kube-apiserver on loopback with every Istio and Gateway API CRD installed."""

    kind = "real"

    def __init__(self, folder: Path) -> None:
        # No audit log: the benchmark counts requests from /metrics, and most clusters run
        # without one (the tier's blocking audit of every write body costs the apiserver CPU).
        self._server = KubeServer.start(folder, extra_apiserver_args=[_SERVICE_RANGE], audit=False)
        try:
            self._server.install_crds()
            self._admin = self._server.admin_client(field_manager="juju")
        except BaseException:
            self._server.stop()
            raise
        self.kubeconfig = self._server.kubeconfig_path
        self.label = f"real kube-apiserver ({folder.name.split('_')[0]}, loopback)"

    def create_namespace(self, name: str) -> None:
        """Create a namespace (the model)."""
        ensure_namespace(self._admin, name)

    def seed(self, objects: list[dict[str, Any]]) -> None:
        """Create objects as Juju would (field manager ``juju``)."""
        for obj in objects:
            self._admin.create(codecs.from_dict(obj))

    def snapshot(self) -> object:
        """The apiserver's request counters, once they have settled.

        The apiserver counts a request just after answering it, so read until two reads agree.
        """
        deadline = time.monotonic() + 2.0
        previous = self._charm_requests(self._server.request_counts())
        while time.monotonic() < deadline:
            time.sleep(0.02)
            current = self._charm_requests(self._server.request_counts())
            if current == previous:
                return current
            previous = current
        return previous

    @staticmethod
    def _charm_requests(counts: dict[RequestKey, int]) -> Counter[tuple[str, str]]:
        result: Counter[tuple[str, str]] = Counter()
        for key, value in counts.items():
            if not key.resource or (key.group, key.resource) in _NOISE_GROUPS_RESOURCES:
                continue
            resource = f"{key.resource}/{key.subresource}" if key.subresource else key.resource
            result[key.verb, resource] += value
        return result

    def play_istio(self, namespace: str) -> None:
        """Program each Gateway of ``namespace`` and make its ready Deployment, as istiod does."""
        for gateway in self._admin.list(_GATEWAY, namespace=namespace):
            body = gateway.to_dict()
            name = body["metadata"]["name"]
            self._admin.patch(
                _GATEWAY.Status,
                name,
                {"status": istio_status(body)},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )
            deployment = waypoint_deployment(name, namespace)
            status = deployment.pop("status")
            self._admin.create(codecs.from_dict(deployment))
            self._admin.patch(
                DeploymentStatus,
                name,
                {"status": status},
                namespace=namespace,
                patch_type=PatchType.MERGE,
            )

    def requests_since(self, snapshot: object) -> Counter[tuple[str, str]]:
        """Requests since ``snapshot``, by (verb, resource)."""
        before = cast("Counter[tuple[str, str]]", snapshot)
        after = cast("Counter[tuple[str, str]]", self.snapshot())
        return Counter({key: n - before[key] for key, n in after.items() if n != before[key]})

    def server_cpu_s(self) -> float:
        """CPU seconds kube-apiserver and etcd have used so far (user + system)."""
        return sum(self._server.cpu_seconds().values())

    def close(self) -> None:
        """Stop etcd and the apiserver."""
        self._server.stop()


class FakeBackend:
    """The in-process fake API server (its threads' CPU shows in ``process_time``)."""

    kind = "fake"
    label = "FAKE API server (tests/support/fake_kube.py), not the real tier"

    def __init__(self) -> None:
        self._kube = FakeKubeServer()
        self._kube.start()
        self.kubeconfig = self._kube.kubeconfig_path

    def create_namespace(self, name: str) -> None:
        """Create a namespace (the model)."""
        self._kube.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})

    def seed(self, objects: list[dict[str, Any]]) -> None:
        """Create objects as Juju would (field manager ``juju``)."""
        for obj in objects:
            self._kube.put(obj, field_manager="juju")

    def play_istio(self, namespace: str) -> None:
        """Program each Gateway of ``namespace`` and make its ready Deployment, as istiod does."""
        for gateway in self._kube.list("gateways", namespace):
            self._kube.put({**gateway, "status": istio_status(gateway)})
            name = gateway["metadata"]["name"]
            self._kube.put(waypoint_deployment(name, namespace), field_manager="istiod")

    def snapshot(self) -> object:
        """How many requests the fake has recorded."""
        return len(self._kube.requests)

    def requests_since(self, snapshot: object) -> Counter[tuple[str, str]]:
        """Requests since ``snapshot``, by (verb, resource)."""
        assert isinstance(snapshot, int)
        result: Counter[tuple[str, str]] = Counter()
        for request in self._kube.requests[snapshot:]:
            result[
                _FAKE_VERBS.get(request.verb, request.verb.upper()), request.resource or ""
            ] += 1
        return result

    def server_cpu_s(self) -> float:
        """Always 0: the fake runs in this process, its CPU is in the hook's own figures."""
        return 0.0

    def close(self) -> None:
        """Stop the fake."""
        self._kube.close()


def is_write(verb: str) -> bool:
    """Whether the apiserver verb changes stored state."""
    return verb in WRITE_VERBS
