"""Fixtures of the library's unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_kube import FakeKubeServer


@pytest.fixture
def kube(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeKubeServer]:
    """A fake API server that ``lightkube.Client()`` reaches through ``KUBECONFIG``."""
    with FakeKubeServer() as server:
        monkeypatch.setenv("KUBECONFIG", str(server.kubeconfig_path))
        yield server
