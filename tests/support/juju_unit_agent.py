"""What Juju's unit agent does for a Kubernetes charm: run a packed charm through ``dispatch``.

`JujuModel` stands in for a Juju model on a real API server (`kube_server.KubeServer`):

- **deploy** unpacks a ``.charm`` (file modes kept, as Juju keeps them) into one directory per
  unit, creates what Juju creates in Kubernetes (the model's namespace, the app's StatefulSet and
  Service, its ServiceAccount with the RBAC of a trusted or an untrusted app, a bound token), and
  the app's peer relation;
- **run_hook / run_action** run ``./dispatch`` in the unit's charm directory with the ``JUJU_*``
  environment of that hook or action, Juju's hook tools on ``PATH`` (`juju_hook_tools`), the
  Python of the charm's base as ``python3`` (`JujuModel`'s ``python_version``: 3.12 for
  ubuntu@24.04, the default, 3.10 for ubuntu@22.04), and, in a private mount namespace, what a
  pod has: the service-account token and CA at
  ``/var/run/secrets/kubernetes.io/serviceaccount`` with ``KUBERNETES_SERVICE_HOST``/``PORT``
  pointing at the API server, and the unit's own ``/charm`` (where ops looks for
  ``/charm/containers/<name>/pebble.socket``);
- each hook works on a copy of the model's hook-tool state that is kept only if the hook exits 0
  (Juju commits a hook's relation data, status and state at the end of a successful hook).

Needs root (mount namespaces), ``unshare`` (util-linux) and the base's Python; a missing one is
an error, never a skip.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import uuid
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from lightkube import Client
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.core_v1 import ServiceAccount
from lightkube.resources.rbac_authorization_v1 import (
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
)

from support import juju_hook_tools, juju_seed, pod_network
from support.kube_server import NAMESPACE_ADMIN_RULES, KubeServer, ensure_namespace

JUJU_VERSION = "3.6.14"
SERVICE_ACCOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
CHARM_ROOT = Path("/charm")
#: What ``juju trust`` gives an app: everything, cluster-wide.
TRUSTED_APP_RULES = (
    PolicyRule(apiGroups=["*"], resources=["*"], verbs=["*"]),
    PolicyRule(nonResourceURLs=["*"], verbs=["*"]),
)
HOOK_TIMEOUT = 180.0

# The mount namespace of one hook: the unit's /charm, a private /run holding the service account.
_POD_SHELL = """set -e
mount --bind "$1" /charm
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/secrets/kubernetes.io/serviceaccount
mount --bind "$2" /run/secrets/kubernetes.io/serviceaccount
if [ -n "$5" ]; then mount --bind "$5" /etc/hosts; fi
cd "$3"
exec "$4"
"""


class AgentError(RuntimeError):
    """The harness cannot run (missing tool, not root, bad charm); the message says what."""


BASE_PYTHONS = {"22.04": "3.10", "24.04": "3.12"}
"""The Python each Ubuntu base runs charms with (``/usr/bin/python3`` there)."""


def find_python(version: str) -> str:
    """A Python ``version`` (a base's): ``python<version>`` on PATH, else pyenv's newest."""
    candidates = [shutil.which(f"python{version}")]
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    pattern = f"{version}.*/bin/python{version}"
    candidates += [str(p) for p in sorted((root / "versions").glob(pattern))][::-1]
    wanted = tuple(int(part) for part in version.split("."))
    for candidate in candidates:
        if candidate and Path(candidate).exists():
            probe = subprocess.run(
                [candidate, "-c", f"import sys; print(sys.version_info[:2] == {wanted!r})"],
                capture_output=True,
                text=True,
                check=False,
            )
            if probe.stdout.strip() == "True":
                return candidate
    base = next((b for b, v in BASE_PYTHONS.items() if v == version), "?")
    raise AgentError(
        f"the dispatch tier runs the ubuntu@{base} charms on Python {version} and found none: "
        f"install one (pyenv install {version}) or put python{version} on PATH"
    )


def unpack_charm(charm: Path, target: Path) -> None:
    """Unzip a packed charm keeping each file's mode, as Juju does when it deploys one."""
    with zipfile.ZipFile(charm) as archive:
        for info in archive.infolist():
            mode = info.external_attr >> 16
            path = target / info.filename
            if stat.S_ISLNK(mode):
                path.parent.mkdir(parents=True, exist_ok=True)
                path.symlink_to(archive.read(info).decode())
                continue
            archive.extract(info, target)
            if mode and not info.is_dir():
                path.chmod(stat.S_IMODE(mode))


@dataclasses.dataclass
class HookRun:
    """What one ``./dispatch`` run did."""

    unit: str
    event: str
    exit_code: int
    stdout: str
    stderr: str
    calls: list[dict[str, Any]]
    """The hook tools it called, in order: ``{"tool", "args", "exit"}``."""
    log: list[dict[str, str]]
    """What it sent to ``juju-log``: ``{"level", "message"}``."""
    seconds: float = 0.0
    """Wall-clock time of the run."""

    def tools(self) -> set[str]:
        """The names of the hook tools called."""
        return {call["tool"] for call in self.calls}

    def describe(self) -> str:
        """A readable account for an assertion message."""
        log = "\n".join(f"  {line['level']}: {line['message']}" for line in self.log[-12:])
        return (
            f"{self.unit} {self.event}: exit {self.exit_code}\n"
            f"--- stderr ---\n{self.stderr[-4000:]}\n--- juju-log (last 12) ---\n{log}"
        )


@dataclasses.dataclass
class ActionRun(HookRun):
    """A ``HookRun`` of an action, with what the action reported."""

    status: str = ""
    message: str = ""
    results: dict[str, Any] = dataclasses.field(default_factory=dict[str, Any])
    action_log: list[str] = dataclasses.field(default_factory=list[str])


class JujuModel:
    """A Juju model whose units run their packed charm's ``dispatch``; see the module docstring."""

    def __init__(
        self, kube: KubeServer, name: str, workdir: Path, *, python_version: str = "3.12"
    ) -> None:
        if os.geteuid() != 0:
            raise AgentError(
                "the dispatch tier needs root (it runs each hook in a mount namespace)"
            )
        if shutil.which("unshare") is None:
            raise AgentError("the dispatch tier needs unshare (Debian/Ubuntu: util-linux)")
        CHARM_ROOT.mkdir(exist_ok=True)  # a mount point; each hook binds its unit's own over it
        self.kube = kube
        self.name = name
        self.uuid = str(uuid.uuid4())
        self.workdir = workdir
        self.state_dir = workdir / "hook-contexts"
        self.state_dir.mkdir(parents=True)
        self.tools_dir = workdir / "hook-tools"
        juju_hook_tools.write_tools(self.tools_dir, self.state_dir, sys.executable)
        self.python_version = python_version
        self.python_dir = workdir / f"python{python_version}-first"
        self.python_dir.mkdir()
        python = find_python(python_version)
        for alias in ("python3", f"python{python_version}"):
            (self.python_dir / alias).symlink_to(python)
        self.state_file = workdir / "model.json"
        self._write(
            {
                "model": {"name": name, "uuid": self.uuid, "since": juju_hook_tools.now()},
                "apps": {},
                "units": {},
                "relations": {},
                "actions": {},
                "log": [],
                "calls": [],
            }
        )
        self._ids = itertools.count()
        self._contexts = itertools.count()
        self._addresses = itertools.count(10)
        self.admin: Client = kube.admin_client(field_manager="juju")
        self._pebbles: dict[tuple[str, str], subprocess.Popen[str]] = {}
        self._network: pod_network.PodNetwork | None = None
        self._pods: dict[str, list[str]] = {}
        ensure_namespace(self.admin, name)
        juju_seed.seed_model_operator(self.admin, name)  # Juju makes it in every model
        self.history: list[HookRun] = []

    # ----------------------------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """The model's committed hook-tool state (a copy: change it with `edit`)."""
        return json.loads(self.state_file.read_text())

    def _write(self, state: Mapping[str, Any]) -> None:
        self.state_file.write_text(json.dumps(state, indent=1, sort_keys=True))

    def edit(self, change: Any) -> None:
        """Apply ``change(state)`` to the committed state (what Juju's controller would change)."""
        state = self.state()
        change(state)
        self._write(state)

    def unit_status(self, unit: str) -> tuple[str, str]:
        """``(status, message)`` of a unit."""
        record = self.state()["units"][unit]["status"]
        return record["status"], record["message"]

    def app_data(self, relation_id: int, app: str) -> dict[str, str]:
        """An app's databag in a relation."""
        return dict(self.state()["relations"][str(relation_id)]["data"].get(f"app:{app}", {}))

    def unit_data(self, relation_id: int, unit: str) -> dict[str, str]:
        """A unit's databag in a relation."""
        return dict(self.state()["relations"][str(relation_id)]["data"].get(f"unit:{unit}", {}))

    # ---------------------------------------------------------------------------------- deploy

    def deploy(
        self,
        app: str,
        charm: Path,
        *,
        units: int = 1,
        trust: bool = False,
        config: Mapping[str, Any] | None = None,
        rules: Sequence[PolicyRule] | None = None,
        cluster_rules: Sequence[PolicyRule] | None = None,
    ) -> list[str]:
        """Deploy ``charm`` as ``app`` with ``units`` units (no hook runs yet); return the units.

        Creates the app's StatefulSet and Service as Juju does, its ServiceAccount with the rights
        of a trusted (``juju trust --scope=cluster``) or untrusted app, and its peer relation.
        Untrusted, its Role has ``rules`` (by default `NAMESPACE_ADMIN_RULES`, a namespace admin,
        which is *not* what Juju gives: see `support.kube_server.juju_default_app_rules`) and,
        with ``cluster_rules``, a ClusterRole too.
        """
        app_dir = self.workdir / "apps" / app
        reference = app_dir / "charm"
        reference.mkdir(parents=True)
        unpack_charm(charm, reference)
        metadata = yaml.safe_load((reference / "metadata.yaml").read_text())
        options = (yaml.safe_load((reference / "config.yaml").read_text()) or {}).get(
            "options", {}
        )
        actions_file = reference / "actions.yaml"
        actions = yaml.safe_load(actions_file.read_text()) if actions_file.exists() else {}
        endpoints: dict[str, dict[str, str]] = {}
        for role in ("provides", "requires", "peers"):
            for endpoint, spec in (metadata.get(role) or {}).items():
                endpoints[endpoint] = {"role": role, "interface": spec["interface"]}
        values = {name: spec.get("default") for name, spec in options.items()}
        values.update(config or {})

        juju_seed.seed_app(self.admin, app, self.name)
        sa_dir = app_dir / "serviceaccount"
        self._service_account(app, trust, sa_dir, rules, cluster_rules)

        unit_names = [f"{app}/{i}" for i in range(units)]

        def add(state: dict[str, Any]) -> None:
            state["apps"][app] = {
                "charm": metadata["name"],
                "config": values,
                "leader": unit_names[0],
                "units": unit_names,
                "planned_units": unit_names,
                "endpoints": endpoints,
                "containers": sorted(metadata.get("containers") or {}),
                "actions": actions or {},
                "status": {"status": "unknown", "message": "", "since": juju_hook_tools.now()},
                "workload_version": "",
                "trusted": trust,
                "dir": str(app_dir),
            }
            for endpoint, spec in endpoints.items():
                if spec["role"] == "peers":
                    rid = str(next(self._ids))
                    state["relations"][rid] = {
                        "id": int(rid),
                        "apps": {app: endpoint},
                        "data": {f"app:{app}": {}},
                        "members": {},
                        "gone_for": [],
                    }

        self.edit(add)
        for unit in unit_names:
            self._add_unit_dir(app, unit, reference)
        return unit_names

    def add_unit(self, app: str) -> str:
        """Scale ``app`` up by one unit (no hook runs yet); return its name."""
        state = self.state()
        taken = [int(u.split("/")[1]) for u in state["apps"][app]["units"]]
        unit = f"{app}/{max(taken) + 1}"

        def add(state: dict[str, Any]) -> None:
            state["apps"][app]["units"].append(unit)
            state["apps"][app]["planned_units"].append(unit)

        self.edit(add)
        self._add_unit_dir(app, unit, Path(state["apps"][app]["dir"]) / "charm")
        return unit

    def _add_unit_dir(self, app: str, unit: str, reference: Path) -> None:
        unit_dir = self.unit_dir(unit)
        shutil.copytree(reference, unit_dir / "charm", symlinks=True)
        containers = self.state()["apps"][app]["containers"]
        for container in containers:
            (unit_dir / "charm-root" / "containers" / container).mkdir(parents=True)
        (unit_dir / "charm-root").mkdir(exist_ok=True)
        (unit_dir / "home").mkdir()

        def add(state: dict[str, Any]) -> None:
            n = next(self._addresses)
            state["units"][unit] = {
                "status": {"status": "waiting", "message": "agent initialising", "since": ""},
                "ports": [],
                "state": {},
                "address": f"10.1.0.{n}",
            }

        self.edit(add)

    def unit_dir(self, unit: str) -> Path:
        """The folder of one unit: ``charm/`` (JUJU_CHARM_DIR) and ``charm-root/`` (its /charm)."""
        return self.workdir / "units" / unit.replace("/", "-")

    def set_hosts(self, unit: str, names: Mapping[str, str]) -> None:
        """Give the unit's hooks their own ``/etc/hosts``: ``names`` maps host names to addresses.

        A pod resolves Service and pod names through the cluster's DNS; here a hook's mount
        namespace gets this file instead (with ``localhost``), so that a URL such as
        ``http://receiver:8080/`` in an action's parameters means what it means in a pod.
        """
        lines = ["127.0.0.1 localhost", *(f"{address} {name}" for name, address in names.items())]
        (self.unit_dir(unit) / "etc-hosts").write_text("\n".join(lines) + "\n")

    def container_socket(self, unit: str, container: str) -> Path:
        """Where, on this host, the unit's ``/charm/containers/<container>/pebble.socket`` is."""
        return self.unit_dir(unit) / "charm-root" / "containers" / container / "pebble.socket"

    def _service_account(
        self,
        app: str,
        trust: bool,
        sa_dir: Path,
        rules: Sequence[PolicyRule] | None = None,
        cluster_rules: Sequence[PolicyRule] | None = None,
    ) -> None:
        meta = ObjectMeta(name=app, namespace=self.name)
        self.admin.apply(ServiceAccount(metadata=meta), force=True)
        subject = Subject(kind="ServiceAccount", name=app, namespace=self.name)
        if trust or cluster_rules is not None:
            role_name = f"{self.name}-{app}"
            self.admin.apply(
                ClusterRole(
                    metadata=ObjectMeta(name=role_name),
                    rules=list(TRUSTED_APP_RULES if trust else cluster_rules or []),
                ),
                force=True,
            )
            self.admin.apply(
                ClusterRoleBinding(
                    metadata=ObjectMeta(name=role_name),
                    roleRef=RoleRef(
                        apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=role_name
                    ),
                    subjects=[subject],
                ),
                force=True,
            )
        if not trust:
            self.admin.apply(
                Role(
                    metadata=ObjectMeta(name=app, namespace=self.name),
                    rules=list(NAMESPACE_ADMIN_RULES if rules is None else rules),
                ),
                force=True,
            )
            self.admin.apply(
                RoleBinding(
                    metadata=ObjectMeta(name=app, namespace=self.name),
                    roleRef=RoleRef(apiGroup="rbac.authorization.k8s.io", kind="Role", name=app),
                    subjects=[subject],
                ),
                force=True,
            )
        token = self.admin.create(
            ServiceAccount.Token(
                metadata=ObjectMeta(name=app, namespace=self.name),
                spec=TokenRequestSpec(audiences=[], expirationSeconds=3600),
            ),
            name=app,
            namespace=self.name,
        )
        assert token.status is not None
        sa_dir.mkdir(parents=True)
        assert token.status.token is not None
        (sa_dir / "token").write_text(token.status.token)
        shutil.copy(self.kube.workdir / "pki" / "ca.crt", sa_dir / "ca.crt")
        (sa_dir / "namespace").write_text(self.name)

    def trust(self, app: str) -> None:
        """``juju trust APP --scope=cluster`` after the fact (same token, wider RBAC)."""
        sa_dir = Path(self.state()["apps"][app]["dir"]) / "serviceaccount"
        shutil.rmtree(sa_dir)
        self._service_account(app, True, sa_dir)

    # ------------------------------------------------------------------------------- relations

    def relate(self, app1: str, endpoint1: str, app2: str, endpoint2: str) -> int:
        """Create a relation between two apps (no hook runs yet); return its id."""
        rid = next(self._ids)

        def add(state: dict[str, Any]) -> None:
            for app, endpoint in ((app1, endpoint1), (app2, endpoint2)):
                if endpoint not in state["apps"][app]["endpoints"]:
                    raise AgentError(f"{app} has no endpoint {endpoint}")
            state["relations"][str(rid)] = {
                "id": rid,
                "apps": {app1: endpoint1, app2: endpoint2},
                "data": {f"app:{app1}": {}, f"app:{app2}": {}},
                "members": {},
                "gone_for": [],
            }

        self.edit(add)
        return rid

    def peer_relation(self, app: str) -> int:
        """The id of ``app``'s peer relation."""
        for rid, rel in self.state()["relations"].items():
            if list(rel["apps"]) == [app]:
                return int(rid)
        raise AgentError(f"{app} has no peer relation")

    def endpoint(self, relation_id: int, app: str) -> str:
        """The endpoint name of ``app`` in a relation."""
        return self.state()["relations"][str(relation_id)]["apps"][app]

    def remote_app(self, relation_id: int, app: str) -> str:
        """The other app of a relation (its own for a peer relation)."""
        apps = list(self.state()["relations"][str(relation_id)]["apps"])
        others = [a for a in apps if a != app]
        return others[0] if others else app

    # ------------------------------------------------------------------------------------ hooks

    def run_hook(
        self,
        unit: str,
        hook: str,
        *,
        relation_id: int | None = None,
        remote_unit: str | None = None,
        departing_unit: str | None = None,
        workload: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> HookRun:
        """Run ``./dispatch`` for one hook of ``unit``, as the unit agent would.

        For relation hooks give ``relation_id`` (``remote_unit`` for joined/changed/departed).
        For ``<container>-pebble-ready`` give ``workload``.
        """
        extra: dict[str, str] = {"JUJU_HOOK_NAME": hook}
        if relation_id is not None:
            app = unit.split("/", maxsplit=1)[0]
            extra["JUJU_RELATION"] = self.endpoint(relation_id, app)
            extra["JUJU_RELATION_ID"] = f"{extra['JUJU_RELATION']}:{relation_id}"
            extra["JUJU_REMOTE_APP"] = self.remote_app(relation_id, app)
            if remote_unit is not None:
                extra["JUJU_REMOTE_UNIT"] = remote_unit
            if departing_unit is not None:
                extra["JUJU_DEPARTING_UNIT"] = departing_unit
        if workload is not None:
            extra["JUJU_WORKLOAD_NAME"] = workload
        extra.update(env or {})
        return self._dispatch(unit, f"hooks/{hook}", hook, extra)

    def run_action(
        self, unit: str, action: str, params: Mapping[str, Any] | None = None
    ) -> ActionRun:
        """Run an action through ``./dispatch`` (``JUJU_DISPATCH_PATH=actions/<name>``)."""
        app = unit.split("/", maxsplit=1)[0]
        action_uuid = str(uuid.uuid4())
        spec = self.state()["apps"][app]["actions"].get(action)
        if spec is None:
            raise AgentError(f"{app} has no action {action}")
        # Juju fills in the defaults of the action's parameters schema.
        values = {
            name: prop["default"]
            for name, prop in (spec.get("params") or {}).items()
            if "default" in prop
        }
        values.update(params or {})

        def add(state: dict[str, Any]) -> None:
            state["actions"][action_uuid] = {
                "name": action,
                "unit": unit,
                "params": values,
                "results": {},
                "status": "running",
                "message": "",
                "log": [],
            }

        self.edit(add)
        run = self._dispatch(
            unit,
            f"actions/{action}",
            f"{action}-action",
            {"JUJU_ACTION_NAME": action, "JUJU_ACTION_UUID": action_uuid},
            always_keep=("actions",),
        )
        record = self.state()["actions"][action_uuid]
        status = record["status"]
        if status == "running":
            status = "completed" if run.exit_code == 0 else "failed"
        return ActionRun(
            **dataclasses.asdict(run),
            status=status,
            message=record["message"],
            results=record["results"],
            action_log=record["log"],
        )

    def _dispatch(
        self,
        unit: str,
        dispatch_path: str,
        event: str,
        extra: Mapping[str, str],
        always_keep: Iterable[str] = (),
    ) -> HookRun:
        app = unit.split("/", maxsplit=1)[0]
        unit_dir = self.unit_dir(unit)
        charm_dir = unit_dir / "charm"
        sa_dir = Path(self.state()["apps"][app]["dir"]) / "serviceaccount"
        context_id = f"{unit.replace('/', '-')}-{event}-{next(self._contexts)}"
        context_file = self.state_dir / f"{context_id}.json"
        before = self.state()
        context_file.write_text(json.dumps(before))
        host, port = self.kube.url.removeprefix("https://").rsplit(":", 1)
        env = {
            "PATH": f"{self.tools_dir}:{self.python_dir}:/usr/local/sbin:/usr/local/bin:"
            "/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(unit_dir / "home"),
            "LANG": "C.UTF-8",
            "JUJU_CHARM_DIR": str(charm_dir),
            "JUJU_CONTEXT_ID": context_id,
            "JUJU_DISPATCH_PATH": dispatch_path,
            "JUJU_MODEL_NAME": self.name,
            "JUJU_MODEL_UUID": self.uuid,
            "JUJU_UNIT_NAME": unit,
            "JUJU_VERSION": JUJU_VERSION,
            "JUJU_PRINCIPAL_UNIT": "",
            "JUJU_AVAILABILITY_ZONE": "",
            "JUJU_AGENT_SOCKET_ADDRESS": "@/var/lib/juju/agents/unit-" + unit.replace("/", "-"),
            "JUJU_AGENT_SOCKET_NETWORK": "unix",
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": port,
            **extra,
        }
        # Once pods exist, hooks run in the pod network's node namespace (the API server is
        # forwarded there on the same address), so they reach the workloads by address.
        node = self._network.in_node() if self._network is not None else []
        command = [
            *node, "unshare", "--mount", "--propagation", "private",
            "sh", "-c", _POD_SHELL, "pod-sandbox",
            str(unit_dir / "charm-root"), str(sa_dir), str(charm_dir), "./dispatch",
            str(hosts) if (hosts := unit_dir / "etc-hosts").is_file() else "",
        ]  # fmt: skip
        started = time.monotonic()
        try:
            proc = subprocess.run(
                command,
                env=env,
                cwd=charm_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=HOOK_TIMEOUT,
                check=False,
            )
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as e:
            code, out, err = -1, str(e.stdout or ""), f"{e.stderr or ''}\n(timed out)"
        after = json.loads(context_file.read_text())
        calls = after["calls"][len(before["calls"]) :]
        log = after["log"][len(before["log"]) :]
        if code == 0:
            committed = after
        else:
            # A failed hook's changes are dropped; what it logged and what it called stay.
            committed = copy.deepcopy(before)
            committed["log"] = after["log"]
            committed["calls"] = after["calls"]
            for key in always_keep:
                committed[key] = after[key]
        self._write(committed)
        context_file.unlink()
        run = HookRun(
            unit=unit,
            event=event,
            exit_code=code,
            stdout=out,
            stderr=err,
            calls=[{k: c[k] for k in ("tool", "args", "exit")} for c in calls],
            log=[{k: line[k] for k in ("level", "message")} for line in log],
            seconds=time.monotonic() - started,
        )
        self.history.append(run)
        return run

    # ------------------------------------------------------------------- what Juju sequences do

    def start_units(self, app: str, units: Iterable[str] | None = None) -> list[HookRun]:
        """Bring up units as Juju does on deploy, and return the hooks run.

        install, relation-created (for each relation the app is already in, peers included),
        leader-elected (on the leader), config-changed, start. pebble-ready is the caller's: it
        comes when the workload container's Pebble is up (see `start_pebble`).
        """
        state = self.state()
        runs: list[HookRun] = []
        for unit in units or state["apps"][app]["units"]:
            runs.append(self.run_hook(unit, "install"))
            for rid, rel in state["relations"].items():
                if app in rel["apps"]:
                    endpoint = rel["apps"][app]
                    runs.append(
                        self.run_hook(unit, f"{endpoint}-relation-created", relation_id=int(rid))
                    )
            if state["apps"][app]["leader"] == unit:
                runs.append(self.run_hook(unit, "leader-elected"))
            runs.append(self.run_hook(unit, "config-changed"))
            runs.append(self.run_hook(unit, "start"))
        return runs

    def join(self, relation_id: int, unit: str, remote_unit: str) -> list[HookRun]:
        """``unit`` sees ``remote_unit`` arrive: relation-joined then relation-changed."""
        app = unit.split("/", maxsplit=1)[0]
        endpoint = self.endpoint(relation_id, app)

        def add(state: dict[str, Any]) -> None:
            rel = state["relations"][str(relation_id)]
            members = rel["members"].setdefault(unit, [])
            if remote_unit not in members:
                members.append(remote_unit)
            rel["data"].setdefault(f"unit:{remote_unit}", {})
            rel["data"].setdefault(f"unit:{unit}", {})

        self.edit(add)
        return [
            self.run_hook(
                unit,
                f"{endpoint}-relation-joined",
                relation_id=relation_id,
                remote_unit=remote_unit,
            ),
            self.run_hook(
                unit,
                f"{endpoint}-relation-changed",
                relation_id=relation_id,
                remote_unit=remote_unit,
            ),
        ]

    def changed(self, relation_id: int, unit: str, remote_unit: str | None = None) -> HookRun:
        """relation-changed on ``unit`` (after the other side wrote its data)."""
        app = unit.split("/", maxsplit=1)[0]
        return self.run_hook(
            unit,
            f"{self.endpoint(relation_id, app)}-relation-changed",
            relation_id=relation_id,
            remote_unit=remote_unit,
        )

    def set_config(self, app: str, **options: Any) -> list[HookRun]:
        """``juju config APP key=value``: store it, then config-changed on every unit."""
        values = {key.replace("_", "-"): value for key, value in options.items()}

        def change(state: dict[str, Any]) -> None:
            state["apps"][app]["config"].update(values)

        self.edit(change)
        return [
            self.run_hook(unit, "config-changed") for unit in self.state()["apps"][app]["units"]
        ]

    def remove_relation(self, relation_id: int) -> list[HookRun]:
        """``juju remove-relation``: departed for every member on each side, then broken."""
        runs: list[HookRun] = []
        state = self.state()
        rel = state["relations"][str(relation_id)]

        def mark(state: dict[str, Any]) -> None:
            state["relations"][str(relation_id)]["removing"] = True

        self.edit(mark)
        for app in rel["apps"]:
            endpoint = rel["apps"][app]
            for unit in state["apps"][app]["units"]:
                for remote in list(rel["members"].get(unit, [])):

                    def drop(
                        state: dict[str, Any], unit: str = unit, remote: str = remote
                    ) -> None:
                        state["relations"][str(relation_id)]["members"][unit].remove(remote)

                    self.edit(drop)
                    runs.append(
                        self.run_hook(
                            unit,
                            f"{endpoint}-relation-departed",
                            relation_id=relation_id,
                            remote_unit=remote,
                            departing_unit=remote,
                        )
                    )
                runs.append(
                    self.run_hook(unit, f"{endpoint}-relation-broken", relation_id=relation_id)
                )

                def gone(state: dict[str, Any], unit: str = unit) -> None:
                    state["relations"][str(relation_id)]["gone_for"].append(unit)

                self.edit(gone)
        return runs

    def remove_app(self, app: str) -> list[HookRun]:
        """``juju remove-application``, and return the hooks run.

        Its relations go (departed, broken on both sides), then each unit gets stop and remove,
        with a goal state of zero units.
        """
        runs: list[HookRun] = []
        for rid, rel in self.state()["relations"].items():
            if app in rel["apps"] and len(rel["apps"]) > 1 and not rel.get("removing"):
                runs += self.remove_relation(int(rid))

        def scale_to_zero(state: dict[str, Any]) -> None:
            state["apps"][app]["planned_units"] = []

        self.edit(scale_to_zero)
        for unit in self.state()["apps"][app]["units"]:
            runs.append(self.run_hook(unit, "stop"))
            runs.append(self.run_hook(unit, "remove"))
        return runs

    # ------------------------------------------------------------------------- workload Pebbles

    def start_pebble(self, unit: str, container: str) -> Path:
        """Start the workload container's Pebble; return the container's root folder.

        The Pebble is ``pebble_standin``, as its own process, on the socket where ops looks. It
        runs in the unit's pod network namespace (`pod_network`), with the unit's address, so
        several units serve the same ports and other units' hooks reach them by address.
        """
        socket = self.container_socket(unit, container)
        root = self.unit_dir(unit) / "containers" / container
        state = self.unit_dir(unit) / "pebble" / container
        root.mkdir(parents=True, exist_ok=True)
        if self._network is None:
            port = int(self.kube.url.rsplit(":", 1)[1])
            self._network = pod_network.PodNetwork(self.workdir / "network", port)
        if unit not in self._pods:
            address = self.state()["units"][unit]["address"]
            self._pods[unit] = self._network.add_pod(unit, address)
        command = [
            *self._pods[unit], sys.executable, str(Path(__file__).with_name("pebble_standin.py")),
            "--socket", str(socket), "--state-dir", str(state), "--root", str(root),
        ]  # fmt: skip
        with (self.unit_dir(unit) / f"pebble-{container}.log").open("w") as log:
            proc = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True
            )
        self._pebbles[(unit, container)] = proc
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if line.strip() != "ready":
            proc.kill()
            proc.wait()
            proc.stdout.close()
            del self._pebbles[(unit, container)]
            raise AgentError(f"the Pebble stand-in for {unit}/{container} did not start: {line!r}")
        return root

    def fetch(self, url: str) -> tuple[int, str]:
        """GET ``url`` from the node namespace (where pods are reachable by address).

        Returns ``(HTTP status, body)``, or ``(0, error)`` when no response came.
        """
        node = self._network.in_node() if self._network is not None else []
        script = (
            "import sys, urllib.request\n"
            "try:\n"
            "    r = urllib.request.urlopen(sys.argv[1], timeout=5)\n"
            "    print(r.status); print(r.read().decode())\n"
            "except Exception as e:\n"
            "    print(0); print(e)\n"
        )
        out = subprocess.run(
            [*node, sys.executable, "-I", "-c", script, url],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        status, _, body = out.partition("\n")
        return int(status), body.strip()

    def network_namespace(self, unit: str, container: str) -> Path:
        """The network namespace of a workload Pebble in its pod, for nsenter."""
        return Path(f"/proc/{self._pebbles[(unit, container)].pid}/ns/net")

    def node_command(self) -> list[str]:
        """Command prefix that runs a command where this model's hooks run (the node namespace)."""
        return self._network.in_node() if self._network is not None else []

    def stop_pebble(self, unit: str, container: str) -> None:
        """Stop a workload Pebble (its services stop with it), as when the pod goes."""
        proc = self._pebbles.pop((unit, container), None)
        if proc is None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()

    def close(self) -> None:
        """Stop every workload Pebble and close the admin client (the server is the caller's)."""
        for unit, container in list(self._pebbles):
            self.stop_pebble(unit, container)
        if self._network is not None:
            self._network.close()
        self.admin.close()


class CrossModelRelation:
    """A relation between apps of two models, as Juju makes one through an offer.

    Each side sees the other app under a local name, as in Juju: the consuming model under the
    offer's name (``juju consume``), the offering model under ``remote-<hex>``. Each side's hooks
    read and write their own model's hook-tool state; `sync` carries each side's databags to the
    other, as the controllers do. One offer may carry several endpoints (one `CrossModelRelation`
    per endpoint pair, with the same names).
    """

    def __init__(
        self,
        offering: JujuModel,
        offered: tuple[str, str],
        consuming: JujuModel,
        consumer: tuple[str, str],
        offer_name: str,
        remote_name: str,
    ) -> None:
        self.offering, self.consuming = offering, consuming
        (self.offered_app, offered_endpoint), (self.consumer_app, consumer_endpoint) = (
            offered,
            consumer,
        )
        self.offer_name, self.remote_name = offer_name, remote_name
        offered_spec = offering.state()["apps"][self.offered_app]["endpoints"][offered_endpoint]
        consumer_spec = consuming.state()["apps"][self.consumer_app]["endpoints"][
            consumer_endpoint
        ]
        _remote_app(consuming, offer_name, offered_endpoint, offered_spec, offering.uuid)
        _remote_app(offering, remote_name, consumer_endpoint, consumer_spec, consuming.uuid)
        self.consumer_id = consuming.relate(
            self.consumer_app, consumer_endpoint, offer_name, offered_endpoint
        )
        self.offered_id = offering.relate(
            self.offered_app, offered_endpoint, remote_name, consumer_endpoint
        )

    def sync(self) -> None:
        """Carry each side's app and unit databags to the other side's view of it."""
        for source, rid, app, target, target_rid, alias in (
            (self.consuming, self.consumer_id, self.consumer_app,
             self.offering, self.offered_id, self.remote_name),
            (self.offering, self.offered_id, self.offered_app,
             self.consuming, self.consumer_id, self.offer_name),
        ):  # fmt: skip
            data = source.state()["relations"][str(rid)]["data"]
            units = {
                key.split(":", 1)[1]: bag
                for key, bag in data.items()
                if key.startswith(f"unit:{app}/")
            }

            def put(
                state: dict[str, Any],
                data: dict[str, Any] = data,
                units: dict[str, Any] = units,
                app: str = app,
                target_rid: int = target_rid,
                alias: str = alias,
            ) -> None:
                bags = state["relations"][str(target_rid)]["data"]
                bags[f"app:{alias}"] = dict(data.get(f"app:{app}", {}))
                for unit, bag in units.items():
                    bags[f"unit:{alias}/{unit.split('/')[1]}"] = dict(bag)

            target.edit(put)

    def establish(self) -> list[HookRun]:
        """Run relation-created on both sides, then each side sees the other join, data carried.

        Assumes one unit on each side (``/0``).
        """
        consumer_unit, offered_unit = f"{self.consumer_app}/0", f"{self.offered_app}/0"
        offer_unit, remote_unit = f"{self.offer_name}/0", f"{self.remote_name}/0"
        consumer_endpoint = self.consuming.endpoint(self.consumer_id, self.consumer_app)
        offered_endpoint = self.offering.endpoint(self.offered_id, self.offered_app)
        runs = [
            self.consuming.run_hook(
                consumer_unit,
                f"{consumer_endpoint}-relation-created",
                relation_id=self.consumer_id,
            ),
            self.offering.run_hook(
                offered_unit, f"{offered_endpoint}-relation-created", relation_id=self.offered_id
            ),
        ]
        self.sync()
        runs += self.consuming.join(self.consumer_id, consumer_unit, offer_unit)
        self.sync()
        runs += self.offering.join(self.offered_id, offered_unit, remote_unit)
        self.sync()
        runs.append(self.consuming.changed(self.consumer_id, consumer_unit, offer_unit))
        self.sync()
        runs.append(self.offering.changed(self.offered_id, offered_unit, remote_unit))
        return runs


def _remote_app(
    model: JujuModel, name: str, endpoint: str, spec: Mapping[str, str], model_uuid: str
) -> None:
    """Make the other model's app known in ``model`` (no units run here; one planned unit).

    ``model_uuid`` is its own model's, which ``relation-model-get`` answers.
    """

    def add(state: dict[str, Any]) -> None:
        app = state["apps"].setdefault(
            name,
            {
                "charm": "",
                "config": {},
                "leader": "",
                "units": [],
                "planned_units": [f"{name}/0"],
                "endpoints": {},
                "containers": [],
                "actions": {},
                "status": {"status": "unknown", "message": "", "since": juju_hook_tools.now()},
                "workload_version": "",
                "trusted": False,
                "dir": "",
                "remote": True,
                "model_uuid": model_uuid,
            },
        )
        app["endpoints"][endpoint] = dict(spec)

    model.edit(add)
