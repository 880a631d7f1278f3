"""Fixtures of the dispatch tier: the packed charms, a real API server, a Juju model around them.

The charms are the ``.charm`` files ``tox -e pack`` wrote to ``build/charms/``, one per charm and
base (``<name>_ubuntu-<base>-amd64.charm``); ``BEACON_CHARM_PATH`` / ``TESTER_CHARM_PATH`` replace
the ubuntu@24.04 ones. A test runs on the ``base`` fixture's charms and Python: ubuntu@24.04
(Python 3.12) unless it is parametrised with `BOTH_BASES`. A missing charm, API server binary,
base Python or root is an error of every test here, never a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.juju_unit_agent import BASE_PYTHONS, JujuModel
from support.kube_server import KubeServer, ensure_built

REPO = Path(__file__).resolve().parents[2]
PACKED = {
    "beacon": ("BEACON_CHARM_PATH", "istio-beacon-k8s"),
    "tester": ("TESTER_CHARM_PATH", "service-mesh-tester"),
}
BASES = tuple(BASE_PYTHONS)
"""The charms' bases (charmcraft.yaml platforms), each with its own ``.charm``."""
DEFAULT_BASE = "24.04"
BOTH_BASES = pytest.mark.parametrize("base", BASES)
"""Run a test once per base: each run deploys that base's charms, run by that base's Python."""


def packed_charm(name: str, base: str = DEFAULT_BASE) -> Path:
    """The packed charm ``name`` (beacon or tester) of ``base``; fails the test when missing."""
    variable, charm_name = PACKED[name]
    given = os.environ.get(variable) if base == DEFAULT_BASE else None
    path = Path(given or REPO / "build" / "charms" / f"{charm_name}_ubuntu-{base}-amd64.charm")
    if not path.is_file():
        hint = f" (or set {variable})" if base == DEFAULT_BASE else ""
        pytest.fail(
            f"no packed ubuntu@{base} {name} charm at {path}: run `tox -e pack` first{hint}"
        )
    return path


@pytest.fixture
def base() -> str:
    """The base whose charms and Python a test uses (overridden by `BOTH_BASES`)."""
    return DEFAULT_BASE


@pytest.fixture
def beacon_charm(base: str) -> Path:
    return packed_charm("beacon", base)


@pytest.fixture
def tester_charm(base: str) -> Path:
    return packed_charm("tester", base)


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
def model(request: pytest.FixtureRequest, kube: KubeServer, base: str) -> Iterator[JujuModel]:
    """A fresh model (its own namespace) named after the test, its hooks on ``base``'s Python.

    Its folder is short (not pytest's tmp_path): a Unix socket path (the workload's Pebble) must
    fit in 108 bytes.
    """
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:24].rstrip("-")
    workdir = Path(tempfile.mkdtemp(prefix="juju-"))
    juju = JujuModel(
        kube,
        f"{name}-{base.replace('.', '')}-{uuid.uuid4().hex[:4]}",
        workdir / "model",
        python_version=BASE_PYTHONS[base],
    )
    _MODELS.append(juju)
    started = time.monotonic()
    try:
        yield juju
    finally:
        juju.close()
        shutil.rmtree(workdir, ignore_errors=True)
        _SECONDS[base] = _SECONDS.get(base, 0.0) + time.monotonic() - started


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report, per base, the hooks run through dispatch and what they cost (figures, not tests)."""
    for base, python in BASE_PYTHONS.items():
        models = [m for m in _MODELS if m.python_version == python]
        runs = [run for model in models for run in model.history]
        if runs:
            total = sum(run.seconds for run in runs)
            terminalreporter.write_line(
                f"dispatch tier, ubuntu@{base} (Python {python}): {len(models)} models, "
                f"{_SECONDS.get(base, 0.0):.0f} s in them; {len(runs)} hooks/actions through "
                f"./dispatch, {total:.0f} s (mean {total / len(runs):.2f} s, "
                f"max {max(run.seconds for run in runs):.2f} s)"
            )


_MODELS: list[JujuModel] = []
_SECONDS: dict[str, float] = {}
