"""Fixtures of the library's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_kube import FakeKubeServer
from juju_objects import KUBE_MODEL


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeServer]:
    """A fake API server with namespace ``mesh-model``, reached by ``lightkube.Client()``."""
    with FakeKubeServer(namespaces=("default", KUBE_MODEL)) as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig_path))
        yield server
