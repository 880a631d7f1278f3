"""The local demo: the packed charms, a real API server, Istio's translation and real Envoy.

Run it with ``scripts/demo.sh`` (which packs the charms and builds the tools first); CI runs it as
a test (``tox -e demo``, ``tests/demo/test_demo.py``). What happens, all on loopback:

1. a real kube-apiserver with the Istio and Gateway API CRDs; a Juju model whose units run the
   packed charms through their ``dispatch`` (``juju_unit_agent``), each tester's workload started
   by a Pebble stand-in in a network namespace of its own (a pod's network);
2. the reference scenario: the beacon (``model-on-mesh=true``), ``receiver1``, ``sender1``
   (related to ``receiver1:inbound``), ``sender2`` (``receiver1:inbound-unit``) and ``sender3``
   (related to nothing), the mesh relations; and in a second model with its own beacon,
   ``sender4``, related to ``receiver1`` through an offer (``inbound`` and ``cross_model_mesh``,
   each side's hooks in its own model, the databags carried across as the controllers do);
   every hook as Juju would run it;
3. the AuthorizationPolicies the beacon wrote, read back from the API server, through Istio's
   validation and istiod's waypoint RBAC builder (``tools/istio-check``); real Envoy runs that
   RBAC in front of ``receiver1``'s real HTTP servers;
4. each sender's ``probe`` action, through its ``dispatch``, to ``http://receiver1:<port>/...``:
   the name resolves (the unit's ``/etc/hosts``) to that sender's capture relay, which carries
   the connection to Envoy in mTLS with the sender's SPIFFE certificate (``ztunnel_standin``);
5. the observed table, the beacon's own prediction for each row (its ``explain`` action), its
   ``access-map`` and the explanation of a denied row.

Steps 3 and 4 run twice: first with the beacon's ``authorization-mode=dry-run`` (a dry-run pass
that sends the rows enforcement would deny: each must reach the receiver, and Envoy's shadow
counters must count each one), then, after ``juju config ... authorization-mode=enforce``, for the
enforced table.

Everything started is stopped by its process id, and the temporary folder removed, on the way out
(also on Ctrl-C or SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from mesh_steps import (
    BEACON,
    deploy_beacon,
    istio_runs_the_waypoint,
    namespace_labels,
    ok,
    pod_template_labels,
    policies_for,
    relate_mesh,
    waypoint,
)
from support.envoy_waypoint import Waypoint, run_waypoint, spiffe_id
from support.istio_check import IstioCheck, problems
from support.juju_unit_agent import CrossModelRelation, JujuModel
from support.kube_server import KubeServer, ensure_built

REPO = Path(__file__).resolve().parents[2]
MODEL = "demo"
OTHER_MODEL = "demo-other"
RECEIVER = "receiver1"
SENDERS = ("sender1", "sender2", "sender3")
REMOTE_SENDER = "sender4"
"""In ``OTHER_MODEL``, related to ``receiver1`` through an offer (``inbound``, ``cmr-mesh``)."""
OFFER = "receiver1-offer"
REMOTE_ALIAS = "remote-5e1d4e6a0c7b4f0d9a3e2b1c8f7a6d50"
CONTAINER = "workload"
RELAY = REPO / "tests" / "support" / "ztunnel_standin.py"
PACKED = {
    "beacon": ("BEACON_CHARM_PATH", "istio-beacon-k8s_ubuntu-24.04-amd64.charm"),
    "tester": ("TESTER_CHARM_PATH", "service-mesh-tester_ubuntu-24.04-amd64.charm"),
}


@dataclasses.dataclass(frozen=True)
class Row:
    """One request of the table: who sends it, and what the reference matrix says happens."""

    sender: str
    method: str
    port: int
    path: str
    expected: str
    """``200`` (the receiver answered) or ``403`` (the waypoint refused)."""
    model: str = MODEL
    """The sender's model."""

    @property
    def host(self) -> str:
        """The receiver's Service as the sender names it (its short name within its model)."""
        return RECEIVER if self.model == MODEL else f"{RECEIVER}.{MODEL}.svc.cluster.local"

    @property
    def url(self) -> str:
        """The URL the sender's probe asks for: the receiver's Service, as in a pod."""
        return f"http://{self.host}:{self.port}{self.path}"

    @property
    def source(self) -> str:
        """The sender as the beacon's ``explain`` names it (``app`` or ``app/model``)."""
        return self.sender if self.model == MODEL else f"{self.sender}/{self.model}"


#: What must happen, row by row (docs/traffic-matrix.md, "model on the mesh", the Service rows):
#: sender1 is named in receiver1's app policy (GET/POST on /foo and /bar/, ports 8080 and 8081), so
#: the waypoint lets exactly that through; sender2 is named only in the unit policy (L4, straight
#: to the pods), which the waypoint does not apply; sender3 is on the mesh through the namespace
#: label but named in no policy. sender4, in another model, is named in the app policy through the
#: cross-model relation (its real identity, announced over cross_model_mesh): as sender1.
EXPECTED: tuple[Row, ...] = (
    Row("sender1", "GET", 8080, "/foo", "200"),
    Row("sender1", "GET", 8081, "/foo", "200"),
    Row("sender1", "GET", 8080, "/bar/", "200"),
    Row("sender1", "POST", 8080, "/foo", "200"),
    Row("sender1", "DELETE", 8080, "/foo", "403"),
    Row("sender1", "GET", 8080, "/nonexistent", "403"),
    Row("sender2", "GET", 8080, "/foo", "403"),
    Row("sender3", "GET", 8080, "/foo", "403"),
    Row("sender4", "GET", 8080, "/foo", "200", OTHER_MODEL),
    Row("sender4", "DELETE", 8080, "/foo", "403", OTHER_MODEL),
    Row("sender4", "GET", 8080, "/nonexistent", "403", OTHER_MODEL),
)
#: The denied row whose explanation the demo prints.
EXPLAINED = Row("sender2", "GET", 8080, "/foo", "403")
#: The dry-run pass: the rows enforcement denies, each of which must reach the receiver then.
WOULD_DENY: tuple[Row, ...] = tuple(row for row in EXPECTED if row.expected == "403")
#: What ``explain`` answers for them during the dry run.
WOULD_DENY_VERDICT = "would deny (dry-run: allowed now)"

WHAT_IS_REAL = """\
Real here: both charms as packed by charmcraft, run through their own `dispatch` on Python 3.12
  from their packed venv; kube-apiserver + etcd (built from the Kubernetes Go modules) with
  Istio's and the Gateway API's CRDs; Istio 1.29's own validation and istiod's own translation of
  the beacon's AuthorizationPolicies into the waypoint's Envoy RBAC; Envoy (upstream, from PyPI)
  with mTLS and SPIFFE client certificates; the testers' HTTP servers and the probe's HTTP
  requests.
Stood in: Juju (its controller and unit agent, and the hook tools, backed by a JSON file);
  Pebble (a stand-in that really starts the workload); Istio's control plane and ztunnel (the
  waypoint's Gateway status and Deployment are written by the demo; capture is a relay per
  sender that adds the sender's certificate; no L4 policy is enforced, so the pod-address rows
  of the matrix are not run); the network (a network namespace per pod on a bridge, loopback
  and Unix sockets between them and this host, /etc/hosts per unit instead of cluster DNS).
  Upstream Envoy reads the caller from the client certificate where Istio's waypoint reads it
  from the HBONE tunnel.
"""


@dataclasses.dataclass
class Observed:
    """One row as it happened: the probe's outcome and the beacon's prediction."""

    row: Row
    observed: str
    """The HTTP status, or the probe's outcome when there was none (refused, reset, ...)."""
    predicted: str
    """``explain``'s verdict: allow, deny or unknown."""


@dataclasses.dataclass
class DryRunPass:
    """What the dry-run pass saw."""

    rows: list[Observed]
    status: str
    """The beacon's status message during the dry run."""
    shadow_denied: int
    """Envoy's ``rbac.istio_dry_run_allow_.shadow_denied`` over the pass: the would-be denials."""


@dataclasses.dataclass
class DemoResult:
    """What the demo saw."""

    dry_run: DryRunPass
    rows: list[Observed]
    access_map: str
    explanation: dict[str, Any]
    istio_problems: list[str]
    policies: list[str]
    seconds: float


class DemoError(RuntimeError):
    """The demo cannot run (a missing part); the message says what to do."""


Progress = Callable[[str], None]


def packed_charm(name: str) -> Path:
    """A packed charm: in build/charms (where `tox -e pack` puts it) or at its ``*_PATH``."""
    variable, file_name = PACKED[name]
    path = Path(os.environ.get(variable) or REPO / "build" / "charms" / file_name)
    if not path.is_file():
        raise DemoError(f"no packed {name} charm at {path}: run scripts/demo.sh or `tox -e pack`")
    return path


def _interrupt_on_signals() -> None:
    """SIGTERM, and SIGINT even where a launcher ignored it, end the demo through its clean-up."""

    def interrupt(signum: int, frame: object) -> None:
        del signum, frame
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


class Processes:
    """Helper processes started by the demo, stopped by their ids (newest first)."""

    def __init__(self) -> None:
        self._running: list[subprocess.Popen[str]] = []

    def start(self, command: Sequence[str], log: Path) -> subprocess.Popen[str]:
        """Start a relay; wait for its ``ready`` line."""
        with log.open("w") as err:
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self._running.append(proc)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise DemoError(f"{command[0]} did not start:\n{log.read_text()[-2000:]}")
        return proc

    def stop(self) -> None:
        """Terminate each process by its id, then wait for it (kill after 10 s)."""
        while self._running:
            proc = self._running.pop()
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def bring_up_tester(model: JujuModel, charm: Path, app: str) -> str:
    """Deploy a tester whose pod (its Pebble) is on the pod network; run its deploy hooks."""
    [unit] = model.deploy(app, charm)
    model.start_pebble(unit, CONTAINER)
    runs = model.start_units(app)
    runs.append(model.run_hook(unit, f"{CONTAINER}-pebble-ready", workload=CONTAINER))
    ok(runs)
    return unit


def relate(model: JujuModel, receiver: str, endpoint: str, sender: str) -> int:
    """``juju integrate RECEIVER:ENDPOINT SENDER:outbound`` and the hooks on both sides."""
    rid = model.relate(receiver, endpoint, sender, "outbound")
    runs = [
        model.run_hook(f"{receiver}/0", f"{endpoint}-relation-created", relation_id=rid),
        model.run_hook(f"{sender}/0", "outbound-relation-created", relation_id=rid),
    ]
    runs += model.join(rid, f"{receiver}/0", f"{sender}/0")
    runs += model.join(rid, f"{sender}/0", f"{receiver}/0")
    # The receiver's policies changed: the beacon hears of it through the mesh relation.
    ok(runs)
    return rid


def captured(model: JujuModel, app: str) -> bool:
    """Whether ambient would capture the app's pods: its pods' label, else its namespace's."""
    mode = pod_template_labels(model, app).get("istio.io/dataplane-mode")
    if mode is None:
        mode = namespace_labels(model).get("istio.io/dataplane-mode")
    return mode == "ambient"


def observed_value(result: dict[str, Any]) -> str:
    """A probe result as the table shows it: the HTTP status, or the outcome without one."""
    if result["outcome"] == "response":
        return str(result["status"])
    return str(result["outcome"])


def deploy_scenario(
    kube: KubeServer, workdir: Path, stack: contextlib.ExitStack[Any], progress: Progress
) -> tuple[JujuModel, JujuModel]:
    """Both models, their apps and relations, every hook through the packed charms' dispatch."""
    beacon_charm, tester_charm = packed_charm("beacon"), packed_charm("tester")
    model = JujuModel(kube, MODEL, workdir / "model")
    stack.callback(model.close)
    progress(f"deploying {BEACON} (trusted, model-on-mesh=true) through its dispatch")
    beacon = deploy_beacon(model, beacon_charm, model_on_mesh=True)
    istio_runs_the_waypoint(model)  # what istiod and the kubelet would do for the Gateway
    ok(model.run_hook(beacon, "update-status"))
    for app in (RECEIVER, *SENDERS):
        progress(f"deploying {app} (its workload started through the Pebble stand-in)")
        bring_up_tester(model, tester_charm, app)
    progress(f"relating {RECEIVER}:inbound to sender1, {RECEIVER}:inbound-unit to sender2")
    relate(model, RECEIVER, "inbound", "sender1")
    relate(model, RECEIVER, "inbound-unit", "sender2")
    mesh: dict[str, int] = {}
    for app in (RECEIVER, "sender1", "sender2"):
        progress(f"relating {app} to the beacon (service-mesh)")
        mesh[app] = relate_mesh(model, app)

    progress(f"model {OTHER_MODEL}: its own beacon (model-on-mesh=true) and {REMOTE_SENDER}")
    other = JujuModel(kube, OTHER_MODEL, workdir / "other-model")
    stack.callback(other.close)
    other_beacon = deploy_beacon(other, beacon_charm, model_on_mesh=True)
    istio_runs_the_waypoint(other)
    ok(other.run_hook(other_beacon, "update-status"))
    bring_up_tester(other, tester_charm, REMOTE_SENDER)
    progress(
        f"offering {RECEIVER}'s inbound and provide-cmr-mesh; {REMOTE_SENDER} relates "
        "outbound and require-cmr-mesh to the offer"
    )
    for offered, consumer in (("inbound", "outbound"), ("provide-cmr-mesh", "require-cmr-mesh")):
        relation = CrossModelRelation(
            model,
            (RECEIVER, offered),
            other,
            (REMOTE_SENDER, consumer),
            offer_name=OFFER,
            remote_name=REMOTE_ALIAS,
        )
        ok(relation.establish())
    # The receiver republished its policies: the beacon hears of it.
    ok(model.changed(mesh[RECEIVER], beacon, f"{RECEIVER}/0"))
    for juju in (model, other):
        statuses = {u: juju.unit_status(u) for u in juju.state()["units"]}
        not_active = {u: s for u, s in statuses.items() if s[0] != "active"}
        if not_active:
            raise DemoError(f"units not active after the deploy: {not_active}")
    return model, other


def start_waypoint(
    model: JujuModel,
    rbac: dict[str, Any],
    workdir: Path,
    stack: contextlib.ExitStack[Any],
    processes: Processes,
    progress: Progress,
) -> Waypoint:
    """Envoy with the waypoint's RBAC for the receiver's Service, in front of its real servers."""
    service = f"{MODEL}/{RECEIVER}"
    ports = receiver_ports(model)
    progress(f"relaying from Envoy into {RECEIVER}'s pod network (ports {ports})")
    sockets = workdir / "sockets"
    sockets.mkdir()
    netns = model.network_namespace(f"{RECEIVER}/0", CONTAINER)
    routes = [f"unix:{sockets}/{RECEIVER}-{p}.sock=tcp:127.0.0.1:{p}" for p in ports]
    processes.start(
        ["nsenter", f"--net={netns}", sys.executable, str(RELAY)]
        + [arg for route in routes for arg in ("--route", route)],
        workdir / f"relay-{RECEIVER}.log",
    )
    upstreams = {(service, p): {"pipe": {"path": f"{sockets}/{RECEIVER}-{p}.sock"}} for p in ports}
    progress("starting Envoy with the waypoint's RBAC, in front of the receiver's servers")
    envoy = stack.enter_context(run_waypoint(rbac, {service: ports}, upstreams=upstreams))
    # The senders' hooks run in their model's node namespace: they reach Envoy, on this host's
    # loopback, through Unix sockets (TLS from the sender's relay to Envoy passes through).
    routes = [
        f"unix:{sockets}/waypoint-{p}.sock=tcp:{envoy.addresses[service]}:{p}" for p in ports
    ]
    processes.start(
        [sys.executable, str(RELAY)] + [arg for route in routes for arg in ("--route", route)],
        workdir / "relay-waypoint.log",
    )
    return envoy


def receiver_ports(model: JujuModel) -> list[int]:
    """The ports the receiver's unit opened (``open-port``): its Service's ports."""
    return sorted(int(p.split("/")[0]) for p in model.state()["units"][f"{RECEIVER}/0"]["ports"])


def capture_senders(
    units: dict[str, JujuModel],
    envoy: Waypoint,
    ports: Sequence[int],
    workdir: Path,
    processes: Processes,
    progress: Progress,
) -> None:
    """Give each sender its capture relay (its identity) and the name of the receiver.

    The relay runs where the sender's hooks run (its model's node namespace), on a loopback
    address that the sender's ``/etc/hosts`` gives the receiver's Service name.
    """
    sockets = workdir / "sockets"
    for index, row in enumerate({row.sender: row for row in EXPECTED}.values(), start=1):
        sender, juju = row.sender, units[row.sender]
        if not captured(juju, sender):
            raise DemoError(
                f"{sender} is not on the mesh: its traffic would go straight to the "
                "receiver's pods, where only ztunnel (not stood in here) decides"
            )
        identity = spiffe_id(row.model, sender)
        cert, key = envoy.pki.issue(sender, uri=identity)
        capture = f"127.77.{index}.1"
        routes = [f"tcp:{capture}:{p}=tls+unix:{sockets}/waypoint-{p}.sock" for p in ports]
        progress(f"capturing {sender}'s traffic to {RECEIVER} as {identity}")
        processes.start(
            [*juju.node_command(), sys.executable, str(RELAY)]
            + ["--cert", str(cert), "--key", str(key)]
            + ["--ca", str(envoy.pki.ca_file)]
            + [arg for route in routes for arg in ("--route", route)],
            workdir / f"relay-{sender}.log",
        )
        juju.set_hosts(f"{sender}/0", {row.host: capture})


def probe_all(
    units: dict[str, JujuModel], progress: Progress, wanted: Sequence[Row] = EXPECTED
) -> list[Observed]:
    """Each sender's ``probe`` action, through its dispatch, with its rows' requests."""
    rows: list[Observed] = []
    for sender, juju in units.items():
        mine = [row for row in wanted if row.sender == sender]
        if not mine:
            continue
        progress(f"running {sender}'s probe action ({len(mine)} requests) through dispatch")
        requests = [{"url": row.url, "method": row.method} for row in mine]
        probe = juju.run_action(f"{sender}/0", "probe", {"requests": json.dumps(requests)})
        if probe.exit_code != 0 or probe.status != "completed":
            raise DemoError(f"{sender}'s probe did not complete:\n{probe.describe()}")
        results = json.loads(probe.results["results"])
        for row, result in zip(mine, results, strict=True):
            rows.append(Observed(row, observed_value(result), ""))
    return rows


Inspect = Callable[[JujuModel, JujuModel], None]
"""Called with both models once the demo has run, before anything is stopped."""


def run(workdir: Path, progress: Progress, inspect: Inspect | None = None) -> DemoResult:
    """Run the whole demo in ``workdir`` and return what it saw (everything is stopped after).

    ``inspect`` (a test's) sees the two models, and through them the API server, as the demo
    left them.
    """
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        processes = Processes()
        stack.callback(processes.stop)
        progress("starting kube-apiserver and etcd, installing the Istio and Gateway API CRDs")
        kube = KubeServer.start(ensure_built())
        stack.callback(kube.stop)
        kube.install_crds()
        model, other = deploy_scenario(kube, workdir, stack, progress)
        beacon = f"{BEACON}/0"
        istio = IstioCheck.build()
        units = {**dict.fromkeys(SENDERS, model), REMOTE_SENDER: other}

        progress("dry run: juju config istio-beacon-k8s authorization-mode=dry-run")
        ok(model.set_config(BEACON, authorization_mode="dry-run"))
        dry_run = dry_run_pass(model, units, istio, workdir / "dry-run", progress)
        progress("enforce: juju config istio-beacon-k8s authorization-mode=enforce")
        ok(model.set_config(BEACON, authorization_mode="enforce"))

        progress("reading the AuthorizationPolicies the beacon wrote, asking Istio about them")
        policies = policies_for(model)
        manifests = [_manifest(p) for p in policies.values()]
        found = [p for v in istio.check(manifests)["objects"] for p in problems(v)]
        service = f"{MODEL}/{RECEIVER}"
        rbac = istio.waypoint(manifests, services=[service], waypoint=waypoint(model))
        envoy = start_waypoint(model, rbac, workdir, stack, processes, progress)
        capture_senders(units, envoy, receiver_ports(model), workdir, processes, progress)
        rows = probe_all(units, progress)

        progress("asking the beacon to explain each row (its explain action)")
        for item in rows:
            item.predicted = _explain(model, beacon, item.row)["verdict"]
        progress("asking the beacon for its access map")
        access = model.run_action(beacon, "access-map", {"format": "table"})
        if access.status != "completed":
            raise DemoError(f"access-map failed:\n{access.describe()}")
        explanation = _explain(model, beacon, EXPLAINED)
        if inspect is not None:
            progress("inspecting what the charms left on the API server")
            inspect(model, other)
        progress("stopping everything")
    return DemoResult(
        dry_run=dry_run,
        rows=rows,
        access_map=str(access.results["map"]),
        explanation=explanation,
        istio_problems=found,
        policies=sorted(policies),
        seconds=time.monotonic() - started,
    )


def dry_run_pass(
    model: JujuModel,
    units: dict[str, JujuModel],
    istio: IstioCheck,
    folder: Path,
    progress: Progress,
) -> DryRunPass:
    """The rows enforcement would deny, sent while the beacon runs its policies in dry-run.

    Its own Envoy (with the RBAC istiod builds from the dry-run policies) and relays, all stopped
    before the enforced pass starts its own.
    """
    status = model.unit_status(f"{BEACON}/0")
    if status[0] != "active" or not status[1].startswith("dry-run: "):
        raise DemoError(f"the beacon does not say it runs a dry run: {status}")
    folder.mkdir()
    with contextlib.ExitStack() as stack:
        processes = Processes()
        stack.callback(processes.stop)
        manifests = [_manifest(p) for p in policies_for(model).values()]
        found = [p for v in istio.check(manifests)["objects"] for p in problems(v)]
        if found:
            raise DemoError(
                "Istio reported problems with the dry-run policies:\n" + "\n".join(found)
            )
        service = f"{MODEL}/{RECEIVER}"
        rbac = istio.waypoint(manifests, services=[service], waypoint=waypoint(model))
        envoy = start_waypoint(model, rbac, folder, stack, processes, progress)
        capture_senders(units, envoy, receiver_ports(model), folder, processes, progress)
        rows = probe_all(units, progress, WOULD_DENY)
        progress("asking the beacon to explain each would-be denial (its explain action)")
        for item in rows:
            item.predicted = str(_explain(model, f"{BEACON}/0", item.row)["verdict"])
        shadow = sum(
            value
            for name, value in envoy.counters("rbac.").items()
            if name.endswith(".rbac.istio_dry_run_allow_.shadow_denied")
        )
        progress("stopping the dry-run pass's Envoy and relays")
    return DryRunPass(rows=rows, status=status[1], shadow_denied=shadow)


def _manifest(policy: dict[str, Any]) -> dict[str, Any]:
    metadata = policy["metadata"]
    return {
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "name": metadata["name"],
            "namespace": metadata["namespace"],
            "labels": metadata.get("labels") or {},
            "annotations": metadata.get("annotations") or {},
        },
        "spec": policy["spec"],
    }


def _explain(model: JujuModel, beacon: str, row: Row) -> dict[str, Any]:
    params = {
        "source": row.source,
        "target": RECEIVER,
        "port": row.port,
        "method": row.method,
        "path": row.path,
    }
    action = model.run_action(beacon, "explain", params)
    if action.status != "completed":
        raise DemoError(f"explain {params} failed:\n{action.describe()}")
    return dict(action.results)


def verdict(observed: str) -> str:
    """An observed value as allow/deny: a 2xx from the receiver is allow, anything else deny."""
    return "allow" if observed.startswith("2") else "deny"


def render(result: DemoResult, out: TextIO) -> None:
    """Print the table, the beacon's view, and what is real."""
    w = out.write
    dry = result.dry_run
    w(
        f"\nDry run first (authorization-mode=dry-run; the beacon says: {dry.status}).\n"
        "The requests enforcement will deny, through real Envoy:\n\n"
    )
    _table(
        w,
        ("from", "request", "once enforced", "observed now", "beacon's explain"),
        [
            (
                o.row.source,
                f"{o.row.method} :{o.row.port}{o.row.path}",
                "403",
                o.observed,
                o.predicted,
            )
            for o in dry.rows
        ],
    )
    w(
        f"\nEnvoy's shadow counter rbac.istio_dry_run_allow_.shadow_denied: {dry.shadow_denied} "
        f"(the {len(dry.rows)} would-be denials above).\n"
        "\nThen enforce (authorization-mode=enforce).\n"
    )
    w(f"\nWho may reach {RECEIVER}'s Service in model {MODEL}, through real Envoy:\n\n")
    head = ("from", "request", "expected", "observed", "beacon's explain")
    table = [
        (
            o.row.source,
            f"{o.row.method} :{o.row.port}{o.row.path}",
            o.row.expected,
            o.observed,
            o.predicted,
        )
        for o in result.rows
    ]
    _table(w, head, table)
    mismatches = mismatched(result)
    w(
        "\n"
        + (
            "Every row is as expected, and the beacon predicted each one.\n"
            if not mismatches
            else "MISMATCHES:\n" + "".join(f"  {m}\n" for m in mismatches)
        )
    )
    w(f"\nThe beacon's AuthorizationPolicies: {', '.join(result.policies)}\n")
    if result.istio_problems:
        w("Istio reported:\n" + "".join(f"  {p}\n" for p in result.istio_problems))
    else:
        w("Istio's validation and translation: no error, no warning.\n")
    w("\n$ juju run istio-beacon-k8s/0 access-map\n")
    w(result.access_map.rstrip() + "\n")
    r = EXPLAINED
    w(
        f"\n$ juju run istio-beacon-k8s/0 explain source={r.sender} target={RECEIVER} "
        f"port={r.port} method={r.method} path={r.path}\n"
    )
    w(str(result.explanation.get("explanation", "")).rstrip() + "\n")
    w("\n" + WHAT_IS_REAL)
    w(f"\nDemo time: {result.seconds:.0f} s.\n")


def _table(
    w: Callable[[str], object], head: Sequence[str], table: Sequence[Sequence[str]]
) -> None:
    widths = [max(len(str(r[i])) for r in [head, *table]) for i in range(len(head))]
    for line in [tuple(head), tuple("-" * n for n in widths), *table]:
        w("  " + "  ".join(str(c).ljust(n) for c, n in zip(line, widths, strict=True)) + "\n")


def mismatched(result: DemoResult) -> list[str]:
    """Every row where the observed outcome or the beacon's prediction is not the expected one."""
    found: list[str] = []
    dry = result.dry_run
    if [o.row for o in dry.rows] != list(WOULD_DENY):
        found.append("the dry-run rows run are not the would-be denials")
    for o in dry.rows:
        row = f"dry run: {o.row.sender} {o.row.method} {o.row.url}"
        if o.observed != "200":
            found.append(f"{row}: expected 200 (nothing is enforced), observed {o.observed}")
        if o.predicted != WOULD_DENY_VERDICT:
            found.append(f"{row}: expected {WOULD_DENY_VERDICT!r}, explain says {o.predicted!r}")
    if dry.shadow_denied != len(WOULD_DENY):
        found.append(
            f"dry run: Envoy counted {dry.shadow_denied} would-be denials, not {len(WOULD_DENY)}"
        )
    if [o.row for o in result.rows] != list(EXPECTED):
        found.append("the rows run are not the expected rows")
    for o in result.rows:
        row = f"{o.row.sender} {o.row.method} {o.row.url}"
        if o.observed != o.row.expected:
            found.append(f"{row}: expected {o.row.expected}, observed {o.observed}")
        if o.predicted != verdict(o.row.expected):
            found.append(f"{row}: expected {verdict(o.row.expected)}, explain says {o.predicted}")
    if result.istio_problems:
        found.append("Istio reported problems with the beacon's policies")
    return found


@contextlib.contextmanager
def demo_folder() -> Iterator[Path]:
    """A temporary folder for the demo, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mesh-demo-") as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    """Run the demo, print what it saw; exit 1 when a row is not as expected."""
    parser = argparse.ArgumentParser(
        description="The local demo: who may reach whom (docs/demo.md)."
    )
    parser.parse_args(argv)
    _interrupt_on_signals()
    start = time.monotonic()

    def progress(message: str) -> None:
        print(f"[{time.monotonic() - start:5.1f}s] {message}", file=sys.stderr, flush=True)

    try:
        with demo_folder() as workdir:
            result = run(workdir, progress)
    except KeyboardInterrupt:
        print("\ninterrupted: everything the demo started is stopped", file=sys.stderr)
        return 130
    except DemoError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    render(result, sys.stdout)
    return 1 if mismatched(result) else 0


if __name__ == "__main__":
    sys.exit(main())
