"""Fixtures of the real-API-server tier: one etcd + kube-apiserver per session.

A missing binary or a server that does not start is an error of every test here, never a skip.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator

import pytest
from lightkube import Client
from support.kube_server import KubeServer, ensure_built, ensure_namespace

FIELD_MANAGER = "kube-tier-tests"


@pytest.fixture(scope="session")
def kube() -> Iterator[KubeServer]:
    """The API server, with every Istio and Gateway API CRD installed."""
    server = KubeServer.start(ensure_built())
    try:
        server.install_crds()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bare_kube() -> Iterator[KubeServer]:
    """A second API server on which no CRD is installed: a cluster without Istio.

    Started only when a test asks for it.
    """
    server = KubeServer.start(ensure_built())
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def admin(kube: KubeServer) -> Iterator[Client]:
    """A cluster-admin client whose default field manager is ``kube-tier-tests``."""
    with kube.admin_client(field_manager=FIELD_MANAGER) as client:
        yield client


@pytest.fixture
def namespace(request: pytest.FixtureRequest, admin: Client) -> str:
    """A fresh namespace named after the test.

    Nothing deletes it: without a controller-manager a deleted namespace never finishes
    terminating, and a session's server is thrown away at its end anyway.
    """
    base = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:50].rstrip("-")
    name = f"{base}-{uuid.uuid4().hex[:6]}"
    ensure_namespace(admin, name)
    return name


@pytest.fixture
def namespace_admin(kube: KubeServer) -> Callable[[str, str], Client]:
    """Factory: ``namespace_admin(namespace, app)``: every verb on everything in the namespace.

    Wider than what Juju gives an app without trust (see ``JUJU_DEFAULT_APP_RULES``) and narrower
    than ``juju trust`` (cluster-wide): a namespace admin, refused only outside its namespace.
    """

    def make(namespace: str, app: str) -> Client:
        return kube.namespaced_client(namespace, app, field_manager=app)

    return make
