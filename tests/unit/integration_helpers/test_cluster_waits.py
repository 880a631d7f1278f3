"""The integration tier's waits: transient API errors, unready units, istio-k8s settings, teardown.

Kubernetes answers come from the fake API server (tests/support/fake_kube.py) through a real
lightkube client, so the errors `eventually` sees are the `ApiError`s lightkube raises.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from typing import Any

import jubilant
import lightkube
import mesh_cluster
import pytest
from jubilant.statustypes import AppStatus, ModelStatus, StatusInfo, UnitStatus
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Service
from mesh_deploy import destroy_model
from mesh_probe import assert_ready_for_actions, eventually, transient_api_error
from support.fake_kube import FakeKubeServer

NAMESPACE = "istio-system"
ISTIO_APP = "istio-k8s"


@pytest.fixture
def kube() -> Iterator[FakeKubeServer]:
    with FakeKubeServer() as server:
        server.install_crd("authorizationpolicies.security.istio.io")
        yield server


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def api_error(kube: FakeKubeServer, code: int) -> ApiError:
    """The ApiError lightkube raises when the server answers `code`."""
    kube.reject(code, f"answered {code}", verb="get", resource="services")
    try:
        with pytest.raises(ApiError) as raised:
            kube.client().get(Service, "x", namespace="default")
    finally:
        kube.allow_all()
    return raised.value


@pytest.mark.parametrize("code", [429, 500, 503, 504])
def test_eventually_retries_the_api_asking_to_be_asked_again(kube: FakeKubeServer, code: int):
    client = kube.client()
    kube.put({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x", "namespace": "m"}})
    kube.reject(code, "try again later", verb="get", resource="services")
    clock = Clock()
    calls: list[float] = []

    def check() -> str:
        calls.append(clock.now)
        if len(calls) == 3:
            kube.allow_all()
        service = client.get(Service, "x", namespace="m")
        assert service.metadata is not None
        return str(service.metadata.name)

    found = eventually(
        check, timeout=60, interval=5, what="service", clock=clock, sleep=clock.sleep
    )

    assert found == "x"
    assert calls == [0.0, 5.0, 10.0]


@pytest.mark.parametrize("code", [403, 404, 409, 422])
def test_eventually_raises_any_other_api_error_at_once(kube: FakeKubeServer, code: int):
    error = api_error(kube, code)
    assert not transient_api_error(error)
    clock = Clock()
    calls: list[int] = []

    def check() -> None:
        calls.append(1)
        raise error

    with pytest.raises(ApiError):
        eventually(check, timeout=60, what="service", clock=clock, sleep=clock.sleep)
    assert calls == [1]


def test_eventually_fails_at_the_deadline_with_the_last_transient_error(kube: FakeKubeServer):
    error = api_error(kube, 503)
    clock = Clock()

    def check() -> None:
        raise error

    with pytest.raises(AssertionError, match=r"service: still failing after 13 attempts") as e:
        eventually(check, timeout=60, interval=5, what="service", clock=clock, sleep=clock.sleep)
    assert e.value.__cause__ is error


def test_a_transient_error_needs_an_api_error():
    assert not transient_api_error(RuntimeError("503"))
    assert not transient_api_error(AssertionError("429"))


# -- a unit ready for an action -------------------------------------------------------------------


def status(agent: str, workload: str, unit: str = "sender1/0") -> jubilant.Status:
    app = AppStatus(
        charm="local:x",
        charm_origin="local",
        charm_name="x",
        charm_rev=0,
        exposed=False,
        app_status=StatusInfo(current=workload),
    )
    app.units[unit] = UnitStatus(
        workload_status=StatusInfo(current=workload, message="restarting"),
        juju_status=StatusInfo(current=agent),
    )
    model = ModelStatus(name="m", type="caas", controller="c", cloud="k8s", version="3.6.0")
    return jubilant.Status(model=model, machines={}, apps={unit.split("/", maxsplit=1)[0]: app})


def test_a_unit_idle_and_active_is_ready_for_a_probe():
    assert_ready_for_actions(status("idle", "active"), "sender1/0")


@pytest.mark.parametrize(
    ("agent", "workload"),
    [
        ("executing", "active"),
        ("lost", "active"),
        ("allocating", "waiting"),
        ("idle", "maintenance"),
    ],
)
def test_a_unit_busy_or_restarting_is_not_ready(agent: str, workload: str):
    with pytest.raises(
        AssertionError, match=f"sender1/0 is not ready for an action: agent {agent}"
    ):
        assert_ready_for_actions(status(agent, workload), "sender1/0")


def test_a_unit_that_does_not_exist_is_not_ready():
    with pytest.raises(AssertionError, match="no unit sender1/1"):
        assert_ready_for_actions(status("idle", "active"), "sender1/1")


# -- istio-k8s's settings in force ----------------------------------------------------------------


def put_istiod(
    kube: FakeKubeServer, env: dict[str, str], *, behind: int = 0, ready: int = 1
) -> None:
    """Istiod's Deployment, its status `behind` generations behind its spec."""
    manifest = istiod(env, observed=0, ready=ready)
    generation = kube.put(manifest)["metadata"]["generation"]
    manifest["status"]["observedGeneration"] = generation - behind
    kube.put(manifest)


def istiod(env: dict[str, str], *, observed: int, ready: int) -> Any:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": NAMESPACE},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "istiod"}},
            "template": {
                "metadata": {"labels": {"app": "istiod"}},
                "spec": {
                    "containers": [
                        {
                            "name": "discovery",
                            "image": "pilot",
                            "env": [{"name": k, "value": v} for k, v in env.items()]
                            + [
                                {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}
                            ],
                        }
                    ]
                },
            },
        },
        "status": {
            "observedGeneration": observed,
            "replicas": 1,
            "updatedReplicas": ready,
            "readyReplicas": ready,
        },
    }


def allow_nothing(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {},
    }


def check(client: lightkube.Client, *, hardened: bool, auto_allow: bool) -> None:
    mesh_cluster.assert_istio_settings(
        client,
        NAMESPACE,
        ISTIO_APP,
        hardened_mode=hardened,
        auto_allow_waypoint_policy=auto_allow,
    )


def test_istio_k8s_defaults_in_force(kube: FakeKubeServer):
    put_istiod(kube, {"PILOT_AUTO_ALLOW_WAYPOINT_POLICY": "true"})
    check(kube.client(), hardened=False, auto_allow=True)
    with pytest.raises(AssertionError, match="hardened-mode=True: allow-nothing policies"):
        check(kube.client(), hardened=True, auto_allow=True)
    with pytest.raises(AssertionError, match="PILOT_AUTO_ALLOW_WAYPOINT_POLICY='true'"):
        check(kube.client(), hardened=False, auto_allow=False)


def test_hardened_mode_is_in_force_once_both_policies_exist(kube: FakeKubeServer):
    put_istiod(kube, {"PILOT_AUTO_ALLOW_WAYPOINT_POLICY": "true"})
    ztunnel, waypoint = mesh_cluster.hardened_mode_policies(ISTIO_APP, NAMESPACE)
    assert ztunnel == "istio-k8s-istio-system-policy-global-allow-nothing-ztunnel"
    kube.put(allow_nothing(ztunnel))
    with pytest.raises(AssertionError, match="allow-nothing policies"):
        check(kube.client(), hardened=True, auto_allow=True)
    kube.put(allow_nothing(waypoint))
    check(kube.client(), hardened=True, auto_allow=True)
    with pytest.raises(AssertionError, match="hardened-mode=False"):
        check(kube.client(), hardened=False, auto_allow=True)


def test_auto_allow_off_is_in_force_once_istiod_rolled_out_without_it(kube: FakeKubeServer):
    put_istiod(kube, {}, behind=1)
    with pytest.raises(
        AssertionError, match=r"istiod not rolled out: generation \d+ not observed"
    ):
        check(kube.client(), hardened=False, auto_allow=False)
    put_istiod(kube, {}, ready=0)
    with pytest.raises(AssertionError, match=r"replicas/updated/ready \(1, 0, 0\)"):
        check(kube.client(), hardened=False, auto_allow=False)
    put_istiod(kube, {})
    check(kube.client(), hardened=False, auto_allow=False)


# -- destroying a model, with a deadline ----------------------------------------------------------


class Run:
    def __init__(self, outcome: int | None, stderr: str = "") -> None:
        self.outcome, self.stderr = outcome, stderr
        self.calls: list[tuple[list[str], float]] = []

    def __call__(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((command, kwargs["timeout"]))
        if self.outcome is None:
            raise subprocess.TimeoutExpired(command, kwargs["timeout"])
        return subprocess.CompletedProcess(command, self.outcome, "", self.stderr)


def test_destroy_model_runs_juju_with_a_process_deadline():
    juju = jubilant.Juju(model="beacon-abc123", cli_binary="/snap/bin/juju")
    run = Run(0)

    assert destroy_model(juju, "beacon-abc123", deadline=600, run=run)

    assert run.calls == [
        (
            [
                "/snap/bin/juju",
                "destroy-model",
                "beacon-abc123",
                "--no-prompt",
                "--destroy-storage",
                "--force",
                "--timeout",
                "3m",
            ],
            600,
        )
    ]
    assert juju.model is None


def test_a_hanging_destroy_is_killed_and_logged(caplog: pytest.LogCaptureFixture):
    juju = jubilant.Juju(model="beacon-abc123")

    assert not destroy_model(juju, "beacon-abc123", deadline=600, run=Run(None))

    assert "juju destroy-model beacon-abc123 still running after 600s: killed" in caplog.text
    assert juju.model == "beacon-abc123"


def test_a_failed_destroy_is_logged_not_raised(caplog: pytest.LogCaptureFixture):
    juju = jubilant.Juju(model="beacon-abc123")

    assert not destroy_model(juju, "beacon-abc123", run=Run(1, "ERROR model not found\n"))

    assert "could not destroy model beacon-abc123: ERROR model not found" in caplog.text
