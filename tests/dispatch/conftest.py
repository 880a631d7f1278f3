"""Fixtures of the dispatch tier: the packed charms, a real API server, a Juju model around them.

The charms are the ``.charm`` files ``tox -e pack`` wrote to ``build/charms/`` (or the paths in
``BEACON_CHARM_PATH`` / ``TESTER_CHARM_PATH``). A missing charm, API server binary, Python 3.12 or
root is an error of every test here, never a skip.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from juju_unit_agent import JujuModel
from kube_server import KubeServer, ensure_built

REPO = Path(__file__).resolve().parents[2]
PACKED = {
    "beacon": ("BEACON_CHARM_PATH", "istio-beacon-k8s_amd64.charm"),
    "tester": ("TESTER_CHARM_PATH", "service-mesh-tester_amd64.charm"),
}


def packed_charm(name: str) -> Path:
    """The packed charm ``name`` (beacon or tester); fails the test when it is missing."""
    variable, file_name = PACKED[name]
    path = Path(os.environ.get(variable) or REPO / "build" / "charms" / file_name)
    if not path.is_file():
        pytest.fail(
            f"no packed {name} charm at {path}: run `tox -e pack` first (or set {variable})"
        )
    return path


@pytest.fixture(scope="session")
def beacon_charm() -> Path:
    return packed_charm("beacon")


@pytest.fixture(scope="session")
def tester_charm() -> Path:
    return packed_charm("tester")


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeServer]:
    """The API server, with the Istio and Gateway API CRDs installed (as istio-k8s would)."""
    server = KubeServer.start(ensure_built())
    try:
        server.install_crds()
        yield server
    finally:
        server.stop()


@pytest.fixture
def model(request: pytest.FixtureRequest, kube: KubeServer, tmp_path: Path) -> Iterator[JujuModel]:
    """A fresh model (its own namespace) named after the test."""
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24].rstrip("-")
    juju = JujuModel(kube, f"{base}-{uuid.uuid4().hex[:4]}", tmp_path / "model")
    try:
        yield juju
    finally:
        juju.close()
