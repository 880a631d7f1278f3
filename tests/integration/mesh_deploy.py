"""How the integration tests get charms and deploy them: packed charms, Istio, beacon, testers.

Packed charms come from `BEACON_CHARM_PATH` / `TESTER_CHARM_PATH` (absolute paths to .charm
files) or, when unset, from `scripts/pack.sh`, which copies the shared library into each charm and
runs `charmcraft pack` for the ubuntu@24.04 platform (`PACK_PLATFORM`, unless set: the charms also
have an ubuntu@22.04 one, which these tests use only when the paths name it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import jubilant
import yaml
from mesh_probe import ALLOWED, FORBIDDEN, REFUSED, Case, case

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = REPO_ROOT / "build" / "integration-logs"
"""Where the debug logs of the models of a failed module are written (CI uploads them)."""
PACK_SCRIPT = REPO_ROOT / "scripts" / "pack.sh"
PACK_PLATFORM = "ubuntu-24.04-amd64"
"""The platform packed when no charm path is given (both charms also have ubuntu-22.04-amd64)."""

BEACON = "beacon"
"""Application name the tests give the beacon."""
ISTIO_APP = "istio-k8s"
ISTIO_CHANNEL = os.environ.get("ISTIO_K8S_CHANNEL", "2/edge")

DEPLOY_TIMEOUT = 15 * 60.0
"""Seconds for freshly deployed apps to settle (images are pulled on first use)."""
SETTLE_TIMEOUT = 10 * 60.0
"""Seconds for apps to settle after a config or relation change."""
ERROR_GRACE = 5 * 60.0
"""Seconds an app or unit may stay in error before a wait fails (see `PersistentError`)."""

ISTIO_MODEL_CONFIG: dict[str, jubilant.ConfigValue] = {"automatically-retry-hooks": True}
"""Set on every model the tests use. Juju's default is true, but concierge's MicroK8s preset sets
the model default to false; both charms patch their own StatefulSet inside a hook, which restarts
their pod and can end that hook in error, and without retries the error would never clear."""
UPDATE_STATUS_INTERVAL = "1m"
"""How often the beacon's models run update-status (Juju's default: 5m; its minimum: 1m).

The beacon notices what Istio does after a hook (the waypoint becoming ready, a policy's
conditions, a Service bound to the waypoint by hand) on its next hook, which update-status
guarantees: docs/integration.md says why the charm does not watch for it itself."""
MODEL_CONFIG: dict[str, jubilant.ConfigValue] = {
    **ISTIO_MODEL_CONFIG,
    "update-status-hook-interval": UPDATE_STATUS_INTERVAL,
}
"""Set on every model the tests add for the charms under test."""
DESTROY_DEADLINE = 10 * 60.0
"""Seconds `juju destroy-model` may run before it is killed (MicroK8s can hang there)."""
DESTROY_STEP_TIMEOUT = "3m"
"""`--timeout` of a forced destroy-model: how long Juju waits for each step."""


@dataclasses.dataclass(frozen=True)
class Charms:
    """Packed charms under test, and the OCI images the tester's resources point at."""

    beacon: Path
    tester: Path
    tester_resources: dict[str, str]
    beacon_resources: dict[str, str]


def _packed_by_script(name: str) -> Path:
    """Pack one charm with scripts/pack.sh and return the path it reports."""
    done = subprocess.run(
        ["bash", str(PACK_SCRIPT), name],
        capture_output=True,
        text=True,
        check=False,
        env={"PACK_PLATFORM": PACK_PLATFORM, **os.environ},
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"scripts/pack.sh {name} failed (exit {done.returncode}); set "
            f"{name.upper()}_CHARM_PATH to a packed charm to skip packing.\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    # pack.sh prints `<name>=<absolute path>` for the ubuntu@24.04 charm it packed, on stdout.
    for line in done.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == name and value:
            return Path(value)
    raise RuntimeError(f"scripts/pack.sh {name} did not report a charm path:\n{done.stdout}")


def charm_path(name: str) -> Path:
    """The packed charm `name` (beacon or tester): from `<NAME>_CHARM_PATH`, else packed now."""
    variable = f"{name.upper()}_CHARM_PATH"
    if given := os.environ.get(variable):
        path = Path(given)
        if not path.is_absolute() or not path.is_file():
            raise RuntimeError(f"{variable}={given!r} is not an absolute path to a .charm file")
        return path
    return _packed_by_script(name)


def charm_resources(charm_dir: Path) -> dict[str, str]:
    """Map each OCI image resource of a charm to its `upstream-source`."""
    meta = yaml.safe_load((charm_dir / "charmcraft.yaml").read_text())
    resources: dict[str, dict[str, str]] = meta.get("resources") or {}
    return {
        name: spec["upstream-source"]
        for name, spec in resources.items()
        if spec.get("type") == "oci-image"
    }


def load_charms() -> Charms:
    """Both charms under test (packing whichever has no path in the environment)."""
    return Charms(
        beacon=charm_path("beacon"),
        tester=charm_path("tester"),
        tester_resources=charm_resources(REPO_ROOT / "charms" / "tester"),
        beacon_resources=charm_resources(REPO_ROOT / "charms" / "beacon"),
    )


class PersistentError:
    """A `juju.wait(error=...)` condition: fail on an error that persists, not on one that clears.

    A hook that ends in error because the unit's pod restarted under it (both charms patch their
    own StatefulSet) is retried by Juju and the error clears. So an app or unit in error is
    tolerated until it has been in error, at every status seen since, for `grace` seconds; an
    error that clears resets its clock. The deadline is on the clock, not on a count of polls.
    A unit that keeps failing but leaves the error status between retries is not caught here; the
    wait's own timeout fails it (later, with the last status attached).
    """

    def __init__(
        self,
        *apps: str,
        grace: float = ERROR_GRACE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.apps = apps
        self.grace = grace
        self._clock = clock
        self._since: dict[str, float] = {}
        self._messages: dict[str, str] = {}

    @staticmethod
    def in_error(status: jubilant.Status, apps: tuple[str, ...]) -> dict[str, str]:
        """Every app and unit (of `apps`, or all) whose status is error, with its message."""
        found: dict[str, str] = {}
        for name, app in status.apps.items():
            if apps and name not in apps:
                continue
            if app.app_status.current == "error":
                found[name] = app.app_status.message
            for unit_name, unit in app.units.items():
                if unit.workload_status.current == "error":
                    found[unit_name] = unit.workload_status.message
        return found

    def __call__(self, status: jubilant.Status) -> bool:
        """Record who is in error now; true once someone has been in error for `grace`."""
        now = self._clock()
        current = self.in_error(status, self.apps)
        for name, message in current.items():
            if name not in self._since:
                logger.warning(
                    "%s is in error (%s); tolerated for %.0fs in case Juju's retry clears it",
                    name,
                    message,
                    self.grace,
                )
        for name in self._since.keys() - current.keys():
            logger.info("%s is no longer in error", name)
        self._since = {name: self._since.get(name, now) for name in current}
        self._messages = current
        return bool(self.persistent(now))

    def persistent(self, now: float | None = None) -> dict[str, str]:
        """The apps and units in error for at least `grace` seconds, with their messages."""
        at = self._clock() if now is None else now
        return {
            name: self._messages[name]
            for name, since in self._since.items()
            if at - since >= self.grace
        }

    def __repr__(self) -> str:
        # jubilant names the error callable in its WaitError: say who persisted, and how long.
        return f"PersistentError(in error for {self.grace:.0f}s or more: {self.persistent()})"


def deploy_istio(juju: jubilant.Juju) -> None:
    """Deploy istio-k8s (ambient, its defaults) into `juju`'s model unless it is there already."""
    if ISTIO_APP not in juju.status().apps:
        juju.deploy(ISTIO_APP, ISTIO_APP, channel=ISTIO_CHANNEL, trust=True)
    juju.wait(
        lambda status: jubilant.all_active(status, ISTIO_APP),
        error=PersistentError(ISTIO_APP),
        timeout=DEPLOY_TIMEOUT,
        delay=5.0,
    )


def deploy_beacon(
    juju: jubilant.Juju,
    charms: Charms,
    app: str = BEACON,
    *,
    config: dict[str, jubilant.ConfigValue] | None = None,
    num_units: int = 1,
) -> None:
    """Deploy the beacon charm, trusted (it manages cluster resources), with its metrics proxy."""
    juju.deploy(
        charms.beacon,
        app,
        config=config,
        num_units=num_units,
        resources=charms.beacon_resources,
        trust=True,
    )


def deploy_tester(
    juju: jubilant.Juju,
    charms: Charms,
    app: str,
    *,
    config: dict[str, jubilant.ConfigValue] | None = None,
    num_units: int = 1,
) -> None:
    """Deploy the tester charm, trusted (it patches its own StatefulSet and Service labels)."""
    juju.deploy(
        charms.tester,
        app,
        config=config,
        num_units=num_units,
        resources=charms.tester_resources,
        trust=True,
    )


def join_mesh(juju: jubilant.Juju, *apps: str, beacon: str = BEACON) -> None:
    """Relate each app's `service-mesh` endpoint to the beacon."""
    for app in apps:
        juju.integrate(f"{beacon}:service-mesh", f"{app}:service-mesh")


def wait_active(juju: jubilant.Juju, *apps: str, timeout: float = SETTLE_TIMEOUT) -> None:
    """Wait until the apps and their units are active and idle; fail on an error that persists."""
    juju.wait(
        lambda status: (
            jubilant.all_active(status, *apps) and jubilant.all_agents_idle(status, *apps)
        ),
        error=PersistentError(*apps),
        timeout=timeout,
        delay=3.0,
    )


def set_config(
    juju: jubilant.Juju, app: str, values: dict[str, jubilant.ConfigValue], *apps_to_settle: str
) -> None:
    """Change an app's config and wait for `app` and `apps_to_settle` to be active and idle."""
    juju.config(app, values)
    wait_active(juju, app, *apps_to_settle)


def model_name(juju: jubilant.Juju) -> str:
    """The bare name of the model a Juju instance is bound to (= its Kubernetes namespace)."""
    assert juju.model is not None, "the tests always bind a Juju instance to a model"
    return juju.model.rpartition(":")[2].rpartition("/")[2]


class Models:
    """Creates uniquely named Juju models and destroys them when the owner is done."""

    def __init__(self, *, keep: bool) -> None:
        self.keep = keep
        self.created: list[jubilant.Juju] = []

    def new(self, prefix: str) -> jubilant.Juju:
        """Add a model named `<prefix>-<6 hex digits>` (with `MODEL_CONFIG`), bound to a Juju."""
        juju = jubilant.Juju(wait_timeout=SETTLE_TIMEOUT)
        juju.add_model(f"{prefix}-{secrets.token_hex(3)}", config=MODEL_CONFIG)
        self.created.append(juju)
        return juju

    def save_logs(self, folder: Path) -> None:
        """Write the tail of each model's debug log and status to `folder` (after a failure)."""
        folder.mkdir(parents=True, exist_ok=True)
        for juju in self.created:
            if juju.model is None:
                continue
            path = folder / f"{model_name(juju)}.log"
            try:
                text = juju.cli("status", "--relations") + "\n" + juju.debug_log(limit=2000)
            except jubilant.CLIError as error:
                text = f"(status/debug-log unavailable: {error.stderr.strip()})\n"
            path.write_text(text)
            logger.warning("debug log of model %s saved to %s", juju.model, path)

    def destroy_all(self) -> None:
        """Destroy every model created here, unless asked to keep them."""
        for juju in reversed(self.created):
            model = juju.model
            if model is None:
                continue
            if self.keep:
                logger.info("keeping model %s", model)
                continue
            destroy_model(juju, model)


def destroy_model(
    juju: jubilant.Juju,
    model: str,
    *,
    deadline: float = DESTROY_DEADLINE,
    run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
) -> bool:
    """Destroy `model` (forced, with its storage); give up, logging why, after `deadline` seconds.

    Juju's own `--timeout` bounds each step of a forced destruction, not the command; on
    MicroK8s the command can hang (jubilant's `temp_model` says so too), so the process gets a
    deadline of its own and is killed when it passes. A model that could not be destroyed is
    logged, never a test failure.

    Returns:
        Whether the command finished in time and succeeded.
    """
    command = [
        juju.cli_binary,
        "destroy-model",
        model,
        "--no-prompt",
        "--destroy-storage",
        "--force",
        "--timeout",
        DESTROY_STEP_TIMEOUT,
    ]
    logger.info("destroying model %s (deadline %.0fs)", model, deadline)
    try:
        done = run(command, capture_output=True, text=True, timeout=deadline, check=False)
    except subprocess.TimeoutExpired:
        logger.error("juju destroy-model %s still running after %.0fs: killed", model, deadline)
        return False
    if done.returncode != 0:
        logger.error("could not destroy model %s: %s", model, done.stderr.strip())
        return False
    if juju.model == model:
        juju.model = None
    return True


# The reference scenario of docs/traffic-matrix.md.
RECEIVER = "receiver1"
SENDER_APP = "sender1"
SENDER_UNIT = "sender2"
STRANGER = "sender3"
"""Related to nothing, not even the beacon: on the mesh only while the whole model is."""
REFERENCE_APPS = (RECEIVER, SENDER_APP, SENDER_UNIT, STRANGER)
MESH_MEMBERS = (RECEIVER, SENDER_APP, SENDER_UNIT)
"""The reference apps related to the beacon (on the mesh whatever `model-on-mesh` says)."""


def deploy_reference_scenario(juju: jubilant.Juju, charms: Charms, *, model_on_mesh: bool) -> None:
    """Beacon, receiver1, sender1 (-> inbound), sender2 (-> inbound-unit) and sender3 (alone).

    receiver1, sender1 and sender2 are related to the beacon; sender3 to nothing at all.
    """
    deploy_beacon(juju, charms, config={"model-on-mesh": model_on_mesh})
    for app in REFERENCE_APPS:
        deploy_tester(juju, charms, app)
    join_mesh(juju, *MESH_MEMBERS)
    juju.integrate(f"{SENDER_APP}:outbound", f"{RECEIVER}:inbound")
    juju.integrate(f"{SENDER_UNIT}:outbound", f"{RECEIVER}:inbound-unit")
    wait_active(juju, BEACON, *REFERENCE_APPS, timeout=DEPLOY_TIMEOUT)


def pod_host(app: str, model: str, unit: int = 0) -> str:
    """DNS name of one unit's pod (through the app's headless `-endpoints` Service)."""
    return f"{app}-{unit}.{app}-endpoints.{model}.svc.cluster.local"


def reference_matrix(model: str, *, model_on_mesh: bool) -> list[Case]:
    """The expected traffic of the reference scenario, row by row as docs/traffic-matrix.md has it.

    sender3 is the one row that depends on the mode: on the mesh (model-on-mesh) its request to the
    Service goes through the waypoint, which answers 403; off the mesh it goes straight to
    receiver1's pod, whose ztunnel admits only the waypoint and the allowed principals.
    """
    service = f"http://{RECEIVER}"
    pod = f"http://{pod_host(RECEIVER, model)}"
    sender1, sender2, sender3 = (f"{app}/0" for app in (SENDER_APP, SENDER_UNIT, STRANGER))
    return [
        case(sender1, f"{service}:8080/foo", ALLOWED),
        case(sender1, f"{service}:8081/foo", ALLOWED),
        case(sender1, f"{service}:8080/bar/", ALLOWED),
        case(sender1, f"{service}:8080/foo", ALLOWED, method="POST"),
        case(sender1, f"{service}:8080/foo", FORBIDDEN, method="DELETE"),
        case(sender1, f"{service}:8080/nonexistent", FORBIDDEN),
        case(sender1, f"{pod}:8080/foo", REFUSED),
        case(sender2, f"{service}:8080/foo", FORBIDDEN),
        case(sender2, f"{pod}:8080/foo", ALLOWED),
        case(sender2, f"{pod}:8080/foo", ALLOWED, method="DELETE"),
        case(sender2, f"{pod}:8083/foo", REFUSED),
        case(sender3, f"{service}:8080/foo", FORBIDDEN if model_on_mesh else REFUSED),
        case(sender3, f"{pod}:8080/foo", REFUSED),
    ]


def cross_model_matrix(sender_unit: str, service: str) -> list[Case]:
    """What a sender related to receiver's `inbound` from another model may do on `service`.

    `service` is the receiver's Service as the sender names it (`http://<app>.<model>.svc...`).
    """
    return [
        case(sender_unit, f"{service}:8080/foo", ALLOWED),
        case(sender_unit, f"{service}:8081/foo", ALLOWED),
        case(sender_unit, f"{service}:8080/bar/", ALLOWED),
        case(sender_unit, f"{service}:8080/foo", ALLOWED, method="POST"),
        case(sender_unit, f"{service}:8080/nonexistent", FORBIDDEN),
        case(sender_unit, f"{service}:8080/foo", FORBIDDEN, method="DELETE"),
    ]
