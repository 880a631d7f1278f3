"""Fixtures of the library's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import use_kubernetes_client
from juju_objects import KUBE_MODEL
from support.fake_kube import FakeKubeServer


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeServer]:
    """A fake API server with namespace ``mesh-model``.

    The library reaches it through ``use_kubernetes_client`` (the library itself only ever uses
    the pod's service account); ``KUBECONFIG`` points at it for clients the tests make.
    """
    with FakeKubeServer(namespaces=("default", KUBE_MODEL)) as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig_path))
        with use_kubernetes_client(server.client()):
            yield server
