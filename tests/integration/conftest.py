"""Fixtures of the integration tier: a reachable Juju controller, packed charms, Istio, models.

These tests need a Juju 3.6 controller on MicroK8s (`sudo concierge prepare -p microk8s`); without
one every test fails with a message saying so. Models are destroyed after each module unless
`--keep-models` is given or `KEEP_MODELS` is set to a non-empty value other than `0`/`false`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator

import jubilant
import lightkube
import mesh_cluster
import mesh_deploy
import pytest

logger = logging.getLogger(__name__)

ISTIO_MODEL = os.environ.get("ISTIO_MODEL", "istio-system")
"""Model that holds istio-k8s; reused (and left in place) when it already exists."""


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--keep-models",
        action="store_true",
        default=False,
        help="keep the Juju models the tests create (also: KEEP_MODELS=1)",
    )


def _keep_models(config: pytest.Config) -> bool:
    from_env = os.environ.get("KEEP_MODELS", "").strip().lower() not in {"", "0", "false", "no"}
    return bool(config.getoption("--keep-models")) or from_env


@pytest.fixture(scope="session", autouse=True)
def controller() -> str:
    """The name of the current Juju controller; fails every test when there is none to reach."""
    if shutil.which("juju") is None:
        pytest.fail(
            "the integration tests need the `juju` CLI and a Juju 3.6 controller on MicroK8s, "
            "and `juju` is not on PATH. Prepare the machine with "
            "`sudo snap install concierge --classic && sudo concierge prepare -p microk8s "
            "--juju-channel=3.6/stable` (see docs/integration.md).",
            pytrace=False,
        )
    try:
        shown = jubilant.Juju().cli("show-controller", "--format", "json", include_model=False)
    except jubilant.CLIError as error:
        pytest.fail(
            "no reachable Juju controller (`juju show-controller` failed: "
            f"{error.stderr.strip()}). Bootstrap one on MicroK8s, e.g. with "
            "`sudo concierge prepare -p microk8s` (see docs/integration.md).",
            pytrace=False,
        )
    name = next(iter(json.loads(shown)))
    logger.info("using Juju controller %s", name)
    return name


@pytest.fixture(scope="session")
def kube(tmp_path_factory: pytest.TempPathFactory) -> lightkube.Client:
    """A lightkube client for the controller's cluster (see mesh_cluster.kubeconfig_path)."""
    try:
        return mesh_cluster.make_client(tmp_path_factory.mktemp("kube"))
    except mesh_cluster.KubeconfigNotFoundError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def charms() -> mesh_deploy.Charms:
    """The packed beacon and tester charms (from BEACON/TESTER_CHARM_PATH, or packed now)."""
    try:
        return mesh_deploy.load_charms()
    except RuntimeError as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="module")
def models(request: pytest.FixtureRequest, controller: str) -> Iterator[mesh_deploy.Models]:
    """A per-module model factory; its models are destroyed after the module."""
    del controller  # only ordering: no model is added before the controller check
    factory = mesh_deploy.Models(keep=_keep_models(request.config))
    failed_before = request.session.testsfailed
    try:
        yield factory
    finally:
        if request.session.testsfailed > failed_before:
            factory.save_logs(mesh_deploy.LOG_DIR)
        factory.destroy_all()


@pytest.fixture(scope="session")
def istio(request: pytest.FixtureRequest, controller: str) -> Iterator[jubilant.Juju]:
    """istio-k8s, active, in ISTIO_MODEL (created for the session unless it already exists)."""
    del controller
    listed = json.loads(jubilant.Juju().cli("models", "--format", "json", include_model=False))
    existing = {model.get("short-name") for model in listed.get("models", [])}
    juju = jubilant.Juju(model=ISTIO_MODEL, wait_timeout=mesh_deploy.DEPLOY_TIMEOUT)
    created = ISTIO_MODEL not in existing
    if created:
        juju.add_model(ISTIO_MODEL, config=mesh_deploy.ISTIO_MODEL_CONFIG)
    else:
        # A reused model keeps whatever concierge's preset gave it: say explicitly what we need.
        juju.model_config(mesh_deploy.ISTIO_MODEL_CONFIG)
    mesh_deploy.deploy_istio(juju)
    yield juju
    if created and not _keep_models(request.config):
        mesh_deploy.destroy_model(juju, ISTIO_MODEL)
