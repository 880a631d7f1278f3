"""Fixtures of the dispatch tier: the packed charms, a real API server, a Juju model around them.

The charms are the ``.charm`` files ``tox -e pack`` wrote to ``build/charms/`` (or the paths in
``BEACON_CHARM_PATH`` / ``TESTER_CHARM_PATH``). A missing charm, API server binary, Python 3.12 or
root is an error of every test here, never a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.juju_unit_agent import JujuModel
from support.kube_server import KubeServer, ensure_built

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
def model(request: pytest.FixtureRequest, kube: KubeServer) -> Iterator[JujuModel]:
    """A fresh model (its own namespace) named after the test.

    Its folder is short (not pytest's tmp_path): a Unix socket path (the workload's Pebble) must
    fit in 108 bytes.
    """
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24].rstrip("-")
    workdir = Path(tempfile.mkdtemp(prefix="juju-"))
    juju = JujuModel(kube, f"{base}-{uuid.uuid4().hex[:4]}", workdir / "model")
    _MODELS.append(juju)
    try:
        yield juju
    finally:
        juju.close()
        shutil.rmtree(workdir, ignore_errors=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how many hooks ran through dispatch and what they cost (a figure, not a test)."""
    runs = [run for model in _MODELS for run in model.history]
    if runs:
        total = sum(run.seconds for run in runs)
        terminalreporter.write_line(
            f"dispatch tier: {len(runs)} hooks/actions through ./dispatch, {total:.0f} s "
            f"(mean {total / len(runs):.2f} s, max {max(run.seconds for run in runs):.2f} s)"
        )


_MODELS: list[JujuModel] = []
