"""A real Kubernetes API server (etcd + kube-apiserver) on loopback, for tests.

The binaries and CRDs come from ``tools/kube-tier/build.sh`` (see
``docs/contributing/kube-tier.md``); no kubelet, scheduler or controller-manager runs, so nothing
is scheduled, namespaces never finish terminating and nothing is garbage-collected. What you get
is the API itself: schemas (including CRD schemas with strict field validation), server-side
apply, resourceVersions, RBAC and its 403s.

Typical use::

    server = KubeServer.start(ensure_built())
    try:
        server.install_crds()
        client = server.admin_client(field_manager="my-charm")
        app = server.namespaced_client("my-model", "my-app", field_manager="my-app")
        before = server.request_counts()
        ...
        writes = count_writes(before, server.request_counts(), resource="authorizationpolicies")
    finally:
        server.stop()

Everything listens on 127.0.0.1 on free ports; every file lives in one temporary folder that
``stop()`` removes. Set ``KUBE_TIER_KEEP=1`` to keep that folder (logs, certificates, a kubeconfig)
for debugging.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast
from urllib.parse import urlencode

import yaml
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.rbac_v1 import PolicyRule, RoleRef, Subject
from lightkube.resources.apiextensions_v1 import CustomResourceDefinition
from lightkube.resources.core_v1 import Namespace, ServiceAccount
from lightkube.resources.rbac_authorization_v1 import (
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "tools" / "kube-tier" / "build.sh"

#: Verbs of ``apiserver_request_total`` that change stored state.
WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})

#: Series of ``apiserver_request_total`` that the apiserver writes itself, on a timer: it renews
#: its identity Lease (``kube-system/apiserver-...``) with a PUT every 10 s. No client of a test
#: writes Leases; counting them made "writes nothing" assertions fail whenever the measured window
#: was long enough (a loaded machine) to include a renewal. `request_counts` leaves them out.
SERVER_OWN_SERIES = frozenset({("coordination.k8s.io", "leases")})

#: Audit policy of the tier: every write with its request body, nothing else (reads stay cheap).
_AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Request", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        # Every other request of a ServiceAccount (an app), without bodies: `refused_since`.
        {"level": "Metadata", "userGroups": ["system:serviceaccounts"]},
        {"level": "None"},
    ],
}

#: A namespace admin: every verb on every resource of its namespace, nothing outside it. NOT what
#: Juju gives an app without trust (`JUJU_DEFAULT_APP_RULES`): wider in the namespace (Gateways,
#: policies, ConfigMaps...), narrower outside it (no Namespace reads).
NAMESPACE_ADMIN_RULES = (PolicyRule(apiGroups=["*"], resources=["*"], verbs=["*"]),)


def juju_default_app_rules(namespace: str) -> tuple[PolicyRule, ...]:
    """The Role Juju 3.6 gives every app deployed without ``juju trust``, in its model.

    As Juju builds it (``caas/kubernetes/provider/application/trust.go``,
    ``getDefaultApplicationNamespaceRules``): its own Namespace read; every pod and Service of
    the model read and patched; exec into any pod of the model.
    """
    return (
        PolicyRule(
            apiGroups=[""],
            resources=["namespaces"],
            resourceNames=[namespace],
            verbs=["get", "list"],
        ),
        PolicyRule(apiGroups=[""], resources=["pods", "services"], verbs=["get", "list", "patch"]),
        PolicyRule(apiGroups=[""], resources=["pods/exec"], verbs=["create"]),
    )


#: The ClusterRole Juju 3.6 gives every app without trust (``defaultApplicationClusterRules``).
JUJU_DEFAULT_CLUSTER_RULES = (
    PolicyRule(apiGroups=[""], resources=["namespaces"], verbs=["get", "list"]),
)

#: The audit verbs `writes_since` returns.
_AUDITED_WRITES = frozenset({"create", "update", "patch", "delete", "deletecollection"})

_LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
_START_ATTEMPTS = 3
_TOKEN_SECONDS = 3600


class KubeServerError(RuntimeError):
    """The tier could not be built, started or used; the message says what to do."""


def ensure_built(timeout: float = 90 * 60) -> Path:
    """Return the build folder (``bin/etcd``, ``bin/kube-apiserver``, ``crds/``); build it first.

    Runs ``tools/kube-tier/build.sh``, which returns at once when the folder for the pinned
    versions already exists (``KUBE_TIER_CACHE`` chooses where; see the script). The build's
    progress goes to this process's stderr.

    Raises:
        KubeServerError: Go is missing, or the build failed; the message includes the reason.
    """
    try:
        result = subprocess.run(
            ["bash", str(BUILD_SCRIPT)],
            stdout=subprocess.PIPE,
            stderr=None,  # inherit: a cold build takes minutes and shows its progress
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise KubeServerError(f"{BUILD_SCRIPT} took longer than {timeout:.0f}s") from e
    if result.returncode != 0:
        raise KubeServerError(
            f"{BUILD_SCRIPT} failed (exit {result.returncode}); its message is above. "
            "The kube tier needs Go and a Go module proxy for its first build "
            "(docs/contributing/kube-tier.md)."
        )
    folder = Path(result.stdout.strip().splitlines()[-1])
    for needed in ("bin/etcd", "bin/kube-apiserver", "crds"):
        if not (folder / needed).exists():
            raise KubeServerError(f"{BUILD_SCRIPT} printed {folder}, which has no {needed}")
    return folder


@dataclass(frozen=True)
class RequestKey:
    """One series of the apiserver's ``apiserver_request_total`` counter (summed over codes)."""

    verb: str
    """Upper-case verb as the apiserver counts it: GET, LIST, WATCH, POST, PATCH, APPLY, ..."""
    group: str
    """API group; ``""`` for the core group."""
    resource: str
    """Plural resource name, e.g. ``authorizationpolicies``."""
    subresource: str = ""
    """Subresource, e.g. ``status``; ``""`` for the object itself."""


@dataclass(frozen=True)
class AuditedWrite:
    """One write the apiserver audited: who sent what, where (see `KubeServer.writes_since`)."""

    user: str
    """The authenticated user, e.g. ``kubernetes-admin`` or ``system:apiserver``."""
    verb: str
    """Audit verb: create, update, patch, delete or deletecollection."""
    uri: str
    """Request URI with its query, e.g. ``/apis/.../authorizationpolicies/x?fieldManager=...``."""
    code: int
    """HTTP status the server answered."""
    body: Any
    """The decoded request body (``None`` for a delete without one)."""
    received: datetime.datetime | None = None
    """When the apiserver received the request (microseconds)."""
    completed: datetime.datetime | None = None
    """When it had sent the whole response: the write had taken effect by then."""


def _audit_time(text: object) -> datetime.datetime | None:
    """An audit event's timestamp (RFC 3339, UTC, microseconds), or None when absent."""
    if not isinstance(text, str) or not text:
        return None
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def count_requests(
    before: Mapping[RequestKey, int],
    after: Mapping[RequestKey, int],
    *,
    verbs: Iterable[str] | None = None,
    group: str | None = None,
    resource: str | None = None,
) -> int:
    """Count the requests between two ``request_counts()`` snapshots that match the filters.

    Args:
        before: The earlier snapshot.
        after: The later snapshot.
        verbs: Only these verbs (default: all).
        group: Only this API group (default: any).
        resource: Only this plural resource (default: any).
    """
    wanted = None if verbs is None else {v.upper() for v in verbs}
    total = 0
    for key, value in after.items():
        if wanted is not None and key.verb not in wanted:
            continue
        if group is not None and key.group != group:
            continue
        if resource is not None and key.resource != resource:
            continue
        total += value - before.get(key, 0)
    return total


def count_writes(
    before: Mapping[RequestKey, int],
    after: Mapping[RequestKey, int],
    *,
    group: str | None = None,
    resource: str | None = None,
) -> int:
    """Count the writes (any of `WRITE_VERBS`) between two ``request_counts()`` snapshots."""
    return count_requests(before, after, verbs=WRITE_VERBS, group=group, resource=resource)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((_LOOPBACK, 0))
        return s.getsockname()[1]


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(
        ["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise KubeServerError(f"openssl {' '.join(args)} failed:\n{result.stderr}")


def _make_pki(pki: Path) -> None:
    """Create a CA, a serving cert for 127.0.0.1, an admin client cert and an SA key pair."""
    if shutil.which("openssl") is None:
        raise KubeServerError("the kube tier needs the openssl command (Debian/Ubuntu: openssl)")
    pki.mkdir(parents=True)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=pki)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=kube-tier-ca",
        "-days", "2", "-out", "ca.crt", cwd=pki,
    )  # fmt: skip
    leaves = {
        "apiserver": ("/CN=kube-apiserver", "subjectAltName=IP:127.0.0.1,DNS:localhost"),
        "admin": ("/O=system:masters/CN=kube-tier-admin", "extendedKeyUsage=clientAuth"),
    }
    for name, (subject, extension) in leaves.items():
        _openssl(
            "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=pki
        )
        _openssl(
            "req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki
        )
        (pki / f"{name}.ext").write_text(extension + "\n")
        _openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
            cwd=pki,
        )  # fmt: skip
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=pki)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


class KubeServer:
    """A running etcd + kube-apiserver pair; create it with `KubeServer.start`.

    Attributes:
        url: ``https://127.0.0.1:<port>`` of the apiserver.
        workdir: The temporary folder holding data, certificates, logs and ``admin.kubeconfig``.
        cache_dir: The build folder the binaries and CRDs came from.
    """

    def __init__(self, cache_dir: Path, workdir: Path, keep: bool) -> None:
        self.cache_dir = cache_dir
        self.workdir = workdir
        self.url = ""
        self._keep = keep
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._logs: list[IO[bytes]] = []
        self._clients: list[Client] = []
        self._internal: Client | None = None
        self._ssl: ssl.SSLContext | None = None
        self._port = 0
        self._audit = True

    # ---------------------------------------------------------------------------------- lifecycle

    @classmethod
    def start(
        cls,
        cache_dir: Path | None = None,
        *,
        timeout: float = 180.0,
        extra_apiserver_args: Iterable[str] = (),
        audit: bool = True,
    ) -> KubeServer:
        """Start etcd and kube-apiserver and wait until ``/readyz`` says ok.

        Args:
            cache_dir: Folder made by the build script; default: `ensure_built()`.
            timeout: Seconds to wait for readiness (a first start on 2 cores takes ~10-20 s).
            extra_apiserver_args: More ``kube-apiserver`` flags, e.g. feature gates.
            audit: Keep the audit log that `writes_since` and `refused_since` read. It costs
                the apiserver CPU on every write (a blocking write of the request body); the
                benchmark turns it off, as most clusters run without one.

        Raises:
            KubeServerError: A process exited or did not become ready in time. The message
                includes the tail of its log. Nothing is left running.
        """
        cache_dir = cache_dir or ensure_built()
        keep = os.environ.get("KUBE_TIER_KEEP", "") not in ("", "0")
        for attempt in range(1, _START_ATTEMPTS + 1):
            server = cls(cache_dir, Path(tempfile.mkdtemp(prefix="kube-tier-")), keep)
            server._audit = audit
            try:
                server._launch(timeout, list(extra_apiserver_args))
            except KubeServerError as error:
                server.stop()
                # A free port found here can be taken by another process before ours binds it.
                if "address already in use" not in str(error) or attempt == _START_ATTEMPTS:
                    raise
                continue
            except BaseException:
                server.stop()
                raise
            return server
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Close the clients made here, stop both processes and remove the temporary folder.

        Safe to call more than once, and on a server that failed to start.
        """
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        self._internal = None
        # apiserver first, then etcd
        for _name, proc in reversed(self._processes):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)
        self._processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()
        if not self._keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KubeServer:
        """Use the server as a context manager that stops it on exit."""
        return self

    def __exit__(self, *exc: object) -> None:
        """Stop the server."""
        self.stop()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("wb")
        self._logs.append(log)
        proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads run while we start these
        )
        self._processes.append((name, proc))
        return proc

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds (user + system) ``etcd`` and ``kube-apiserver`` have used so far.

        Read from ``/proc/<pid>/stat`` (Linux): what the server side of a measured window
        cost, as a difference of two reads. A process that has exited is left out.
        """
        ticks = os.sysconf("SC_CLK_TCK")
        used: dict[str, float] = {}
        for name, proc in self._processes:
            try:
                stat = Path(f"/proc/{proc.pid}/stat").read_text()
            except OSError:
                continue
            # The command name (field 2) may hold spaces: the fields after it follow its ")".
            fields = stat[stat.rindex(")") + 2 :].split()
            used[name] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return used

    def log_tail(self, name: str, lines: int = 40) -> str:
        """Return the last lines of ``etcd`` or ``kube-apiserver``'s log."""
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _check_alive(self) -> None:
        for name, proc in self._processes:
            if proc.poll() is not None:
                raise KubeServerError(
                    f"{name} exited with {proc.returncode} during start-up; "
                    f"last lines of its log:\n{self.log_tail(name)}"
                )

    def _launch(self, timeout: float, extra: list[str]) -> None:
        deadline = time.monotonic() + timeout
        bin_dir = self.cache_dir / "bin"
        pki = self.workdir / "pki"
        _make_pki(pki)

        etcd_client, etcd_peer = _free_port(), _free_port()
        client_url, peer_url = (
            f"http://{_LOOPBACK}:{etcd_client}",
            f"http://{_LOOPBACK}:{etcd_peer}",
        )
        self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=kube-tier",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kube-tier={peer_url}",
                "--unsafe-no-fsync",  # throwaway data: durability costs time on a shared disk
                "--log-level=warn",
            ],
        )
        self._wait_for("etcd", deadline, lambda: self._etcd_healthy(etcd_client))

        self._port = _free_port()
        self.url = f"https://{_LOOPBACK}:{self._port}"
        self._spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={client_url}",
                f"--bind-address={_LOOPBACK}",
                f"--advertise-address={_LOOPBACK}",
                f"--secure-port={self._port}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                "--service-account-issuer=https://kubernetes.default.svc",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                # No node runs here: the "kubernetes" Service must not point at 127.0.0.1.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                *self._audit_args(),
                *extra,
            ],
        )
        ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._ssl = ctx
        self._wait_for("kube-apiserver", deadline, self._apiserver_ready)
        self._write_kubeconfig()

    def _audit_args(self) -> list[str]:
        if not self._audit:
            return []
        return [
            f"--audit-policy-file={self._audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def _audit_policy(self) -> Path:
        path = self.workdir / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(_AUDIT_POLICY))
        return path

    @property
    def audit_log(self) -> Path:
        """The apiserver's audit log: one JSON event per write (see `writes_since`)."""
        return self.workdir / "audit.log"

    def _require_audit(self, what: str) -> None:
        if not self._audit:
            raise KubeServerError(f"{what} reads the audit log: start the server with audit=True")

    def audit_mark(self) -> int:
        """A position in the audit log, for `writes_since`."""
        try:
            return self.audit_log.stat().st_size
        except FileNotFoundError:
            return 0

    def writes_since(
        self, mark: int, *, include_server: bool = False, settle: float = 1.0
    ) -> list[AuditedWrite]:
        """The writes audited after ``mark`` (an `audit_mark`), oldest first.

        Args:
            mark: Where to start reading.
            include_server: Also return the apiserver's own writes (user ``system:apiserver``).
            settle: Seconds to wait first: the audit event of a request is written as its
                response completes, so the last write of a window can reach the log just after
                its client got the answer.
        """
        self._require_audit("writes_since")
        time.sleep(settle)
        with self.audit_log.open("rb") as log:
            log.seek(mark)
            lines = log.read().decode(errors="replace").splitlines()
        writes: list[AuditedWrite] = []
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line still being written
            user = str(event.get("user", {}).get("username", ""))
            if user == "system:apiserver" and not include_server:
                continue
            if event.get("verb") not in _AUDITED_WRITES:
                continue  # a ServiceAccount's read (audited for `refused_since`)
            writes.append(
                AuditedWrite(
                    user=user,
                    verb=str(event.get("verb", "")),
                    uri=str(event.get("requestURI", "")),
                    code=int(event.get("responseStatus", {}).get("code", 0)),
                    body=event.get("requestObject"),
                    received=_audit_time(event.get("requestReceivedTimestamp")),
                    completed=_audit_time(event.get("stageTimestamp")),
                )
            )
        return writes

    def refused_since(self, mark: int, *, settle: float = 1.0) -> list[AuditedWrite]:
        """Every request of a ServiceAccount that the API server refused with 403 since ``mark``.

        Reads and writes alike (the audit policy records every request of a ServiceAccount).
        """
        self._require_audit("refused_since")
        time.sleep(settle)
        with self.audit_log.open("rb") as log:
            log.seek(mark)
            lines = log.read().decode(errors="replace").splitlines()
        refused: list[AuditedWrite] = []
        for line in lines:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if int(event.get("responseStatus", {}).get("code", 0)) != 403:
                continue
            refused.append(
                AuditedWrite(
                    user=str(event.get("user", {}).get("username", "")),
                    verb=str(event.get("verb", "")),
                    uri=str(event.get("requestURI", "")),
                    code=403,
                    body=None,
                )
            )
        return refused

    def _wait_for(self, name: str, deadline: float, ready: Any) -> None:
        while True:
            self._check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                raise KubeServerError(
                    f"{name} was not ready in time; last lines of its log:\n{self.log_tail(name)}"
                )
            time.sleep(0.2)

    @staticmethod
    def _etcd_healthy(port: int) -> bool:
        conn = http.client.HTTPConnection(_LOOPBACK, port, timeout=2)
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            return response.status == 200 and b"true" in response.read()
        except OSError:
            return False
        finally:
            conn.close()

    def _apiserver_ready(self) -> bool:
        try:
            status, _ = self.raw_request("GET", "/readyz", timeout=2)
        except OSError:
            return False
        return status == 200

    def _write_kubeconfig(self) -> None:
        pki = self.workdir / "pki"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kube-tier",
                    "cluster": {"server": self.url, "certificate-authority": str(pki / "ca.crt")},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(pki / "admin.crt"),
                        "client-key": str(pki / "admin.key"),
                    },
                }
            ],
            "contexts": [{"name": "admin", "context": {"cluster": "kube-tier", "user": "admin"}}],
            "current-context": "admin",
        }
        (self.workdir / "admin.kubeconfig").write_text(yaml.safe_dump(config))

    # ------------------------------------------------------------------------------------ clients

    @property
    def kubeconfig_path(self) -> Path:
        """Kubeconfig file of the admin user (``kubectl --kubeconfig`` works with it)."""
        return self.workdir / "admin.kubeconfig"

    def admin_client(
        self, field_manager: str | None = None, namespace: str | None = None
    ) -> Client:
        """Return a lightkube client authenticated as a cluster admin (``system:masters``).

        `stop()` closes it; closing it earlier is fine too.
        """
        config = KubeConfig.from_file(self.kubeconfig_path)
        return self._track(Client(config, namespace=namespace, field_manager=field_manager))

    def _own_client(self) -> Client:
        """The admin client this harness uses for its own set-up (field manager ``kube-tier``)."""
        if self._internal is None:
            self._internal = self.admin_client(field_manager="kube-tier")
        return self._internal

    def _track(self, client: Client) -> Client:
        self._clients.append(client)
        return client

    def namespaced_client(
        self,
        namespace: str,
        service_account: str,
        *,
        field_manager: str | None = None,
        rules: Sequence[PolicyRule] | None = None,
    ) -> Client:
        """Return a client of an app's ServiceAccount, bound to a Role in its namespace only.

        Creates (as admin, idempotently) the namespace, the ServiceAccount, a Role (by default
        a namespace admin: every verb on every resource of every API group in that namespace;
        see `NAMESPACE_ADMIN_RULES`, and `juju_default_app_rules` for what Juju really gives an
        app without trust) and its RoleBinding. Then
        authenticates as that ServiceAccount with a bound token. The client can manage namespaced
        objects of its own namespace, and gets a real 403 for cluster-scoped objects (other
        Namespaces, listing Namespaces, CRDs, ClusterRoles, ...) and for anything in another
        namespace. Its own Namespace object counts as inside the namespace for RBAC: the default
        Role may read, label and even delete it. Pass narrower ``rules`` to refuse that.

        Args:
            namespace: The model's namespace.
            service_account: The application name (Juju names the ServiceAccount after the app).
            field_manager: Default field manager of the returned client.
            rules: The Role's rules instead of `NAMESPACE_ADMIN_RULES`.
        """
        path = self.namespaced_kubeconfig(namespace, service_account, rules=rules)
        config = KubeConfig.from_file(path)
        return self._track(Client(config, namespace=namespace, field_manager=field_manager))

    def namespaced_kubeconfig(
        self,
        namespace: str,
        service_account: str,
        *,
        rules: Sequence[PolicyRule] | None = None,
        cluster_rules: Sequence[PolicyRule] | None = None,
    ) -> Path:
        """Write a kubeconfig for the identity :meth:`namespaced_client` uses, and return its path.

        For code that finds its client through ``KUBECONFIG`` (a charm run by ``ops.testing``):
        the same set-up (namespace, ServiceAccount, Role, RoleBinding, bound token), the context's
        namespace set to ``namespace``. The file lives in :attr:`workdir`.

        Args:
            namespace: The model's namespace.
            service_account: The application name.
            rules: The Role's rules instead of `NAMESPACE_ADMIN_RULES`.
            cluster_rules: Also bind a ClusterRole with these rules (as Juju binds one to every
                app, e.g. `JUJU_DEFAULT_CLUSTER_RULES`).
        """
        admin = self._own_client()
        ensure_namespace(admin, namespace)
        meta = ObjectMeta(name=service_account, namespace=namespace)
        admin.apply(ServiceAccount(metadata=meta), force=True)
        if cluster_rules is not None:
            cluster_name = f"{namespace}-{service_account}"
            admin.apply(
                ClusterRole(metadata=ObjectMeta(name=cluster_name), rules=list(cluster_rules)),
                force=True,
            )
            admin.apply(
                ClusterRoleBinding(
                    metadata=ObjectMeta(name=cluster_name),
                    roleRef=RoleRef(
                        apiGroup="rbac.authorization.k8s.io", kind="ClusterRole", name=cluster_name
                    ),
                    subjects=[
                        Subject(kind="ServiceAccount", name=service_account, namespace=namespace)
                    ],
                ),
                force=True,
            )
        admin.apply(
            Role(
                metadata=ObjectMeta(
                    name=f"{service_account}-namespace-admin", namespace=namespace
                ),
                rules=list(NAMESPACE_ADMIN_RULES if rules is None else rules),
            ),
            force=True,
        )
        admin.apply(
            RoleBinding(
                metadata=ObjectMeta(
                    name=f"{service_account}-namespace-admin", namespace=namespace
                ),
                roleRef=RoleRef(
                    apiGroup="rbac.authorization.k8s.io",
                    kind="Role",
                    name=f"{service_account}-namespace-admin",
                ),
                subjects=[
                    Subject(kind="ServiceAccount", name=service_account, namespace=namespace)
                ],
            ),
            force=True,
        )
        token = admin.create(
            ServiceAccount.Token(
                metadata=ObjectMeta(name=service_account, namespace=namespace),
                spec=TokenRequestSpec(audiences=[], expirationSeconds=_TOKEN_SECONDS),
            ),
            name=service_account,
            namespace=namespace,
        )
        assert token.status is not None
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "kube-tier",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority": str(self.workdir / "pki" / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": service_account, "user": {"token": token.status.token}}],
            "contexts": [
                {
                    "name": "app",
                    "context": {
                        "cluster": "kube-tier",
                        "user": service_account,
                        "namespace": namespace,
                    },
                }
            ],
            "current-context": "app",
        }
        path = self.workdir / f"{namespace}.{service_account}.kubeconfig"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)
        return path

    # ---------------------------------------------------------------------------------------- CRDs

    def crd_documents(self, kinds: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Return the CRDs in the build folder as dicts, optionally only those of the given kinds.

        Raises:
            KubeServerError: A requested kind is not among the CRDs.
        """
        documents: list[dict[str, Any]] = []
        for path in sorted((self.cache_dir / "crds").glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                    documents.append(doc)
        if kinds is None:
            return documents
        wanted = set(kinds)
        chosen = [d for d in documents if d["spec"]["names"]["kind"] in wanted]
        missing = wanted - {d["spec"]["names"]["kind"] for d in chosen}
        if missing:
            raise KubeServerError(f"no CRD for {sorted(missing)} in {self.cache_dir / 'crds'}")
        return chosen

    def install_crds(self, kinds: Iterable[str] | None = None, timeout: float = 60.0) -> list[str]:
        """Install CRDs (all by default, else those of the listed kinds); wait until usable.

        Usable means established *and* listable for every served version: right after a CRD is
        established the apiserver may still answer 429 "storage is (re)initializing" while its
        watch cache fills.

        Returns:
            The names of the installed CRDs, e.g. ``authorizationpolicies.security.istio.io``.
        """
        client = self._own_client()
        docs = self.crd_documents(kinds)
        for doc in docs:
            client.apply(
                cast("CustomResourceDefinition", CustomResourceDefinition.from_dict(doc)),
                force=True,
            )
        deadline = time.monotonic() + timeout
        for doc in docs:
            name = doc["metadata"]["name"]
            while not _established(client.get(CustomResourceDefinition, name)):
                if time.monotonic() > deadline:
                    raise KubeServerError(f"CRD {name} not established within {timeout}s")
                time.sleep(0.1)
            group, plural = doc["spec"]["group"], doc["spec"]["names"]["plural"]
            for version in doc["spec"]["versions"]:
                if not version.get("served", False):
                    continue
                path = f"/apis/{group}/{version['name']}/{plural}"
                while (answer := self.raw_request("GET", path, params={"limit": "1"}))[0] != 200:
                    if time.monotonic() > deadline:
                        raise KubeServerError(f"cannot list {path} within {timeout}s: {answer}")
                    time.sleep(0.1)
        return [doc["metadata"]["name"] for doc in docs]

    # ----------------------------------------------------------------------------- raw HTTP access

    def raw_request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """Send one request as admin and return ``(status, decoded JSON body or text)``.

        For what lightkube does not expose, e.g. ``fieldValidation=Strict`` or ``/metrics``.
        """
        status, _, data = self.raw_response(
            method, path, body, params=params, content_type=content_type, timeout=timeout
        )
        try:
            return status, json.loads(data)
        except json.JSONDecodeError:
            return status, data

    def raw_response(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
        content_type: str = "application/json",
        timeout: float = 30.0,
    ) -> tuple[int, str | None, str]:
        """Like :meth:`raw_request`, but return ``(status, Content-Type, body text)`` undecoded."""
        if self._ssl is None:
            raise KubeServerError("the server is not started")
        conn = http.client.HTTPSConnection(
            _LOOPBACK, self._port, context=self._ssl, timeout=timeout
        )
        try:
            query = f"?{urlencode(params)}" if params else ""
            payload = None if body is None else json.dumps(body).encode()
            headers = {"Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = content_type
            conn.request(method, path + query, body=payload, headers=headers)
            response = conn.getresponse()
            data = response.read().decode(errors="replace")
        finally:
            conn.close()
        return response.status, response.getheader("Content-Type"), data

    def resource_path(self, api_version: str, kind: str, namespace: str | None) -> str:
        """Return the collection URL path for ``kind`` in ``api_version``, found by discovery."""
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        status, listing = self.raw_request("GET", base)
        if status != 200:
            raise KubeServerError(f"{api_version} is not served (HTTP {status}): {listing}")
        for res in listing["resources"]:
            if res["kind"] == kind and "/" not in res["name"]:
                if res["namespaced"]:
                    if namespace is None:
                        raise KubeServerError(f"{kind} is namespaced: give a namespace")
                    return f"{base}/namespaces/{namespace}/{res['name']}"
                return f"{base}/{res['name']}"
        raise KubeServerError(f"{api_version} serves no kind {kind}")

    def strict_create(
        self, obj: Mapping[str, Any], *, dry_run: bool = True, namespace: str | None = None
    ) -> tuple[int, Any]:
        """POST ``obj`` with ``fieldValidation=Strict`` (server-side dry run by default).

        Unknown or duplicate fields make the API answer 400/422 instead of silently dropping them,
        so a 201 proves the whole object matches the schema.

        Returns:
            ``(status, body)``: 201 and the object as stored, or the error ``Status``.
        """
        metadata = obj.get("metadata") or {}
        ns = namespace or metadata.get("namespace")
        path = self.resource_path(obj["apiVersion"], obj["kind"], ns)
        params = {"fieldValidation": "Strict"}
        if dry_run:
            params["dryRun"] = "All"
        return self.raw_request("POST", path, obj, params=params)

    def request_counts(self) -> dict[RequestKey, int]:
        """Snapshot ``apiserver_request_total`` from ``/metrics``, summed over codes and versions.

        Diff two snapshots with `count_requests` / `count_writes`. The counters are the apiserver's
        own accounting, so a request that a client library sent but did not report still shows.
        The apiserver's own timed writes (`SERVER_OWN_SERIES`) are left out; `writes_since` tells
        who sent which write.
        """
        status, text = self.raw_request("GET", "/metrics")
        if status != 200 or not isinstance(text, str):
            raise KubeServerError(f"GET /metrics answered {status}")
        counts: Counter[RequestKey] = Counter()
        for labels, value in _metric_samples(text, "apiserver_request_total"):
            key = RequestKey(
                verb=labels.get("verb", ""),
                group=labels.get("group", ""),
                resource=labels.get("resource", ""),
                subresource=labels.get("subresource", ""),
            )
            if (key.group, key.resource) in SERVER_OWN_SERIES:
                continue
            counts[key] += int(float(value))
        return dict(counts)


def _die_with_parent() -> None:
    """In the child: be killed when the test process dies, even by SIGKILL (Linux only)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _established(crd: CustomResourceDefinition) -> bool:
    conditions = (crd.status.conditions if crd.status else None) or []
    return any(c.type == "Established" and c.status == "True" for c in conditions)


def _metric_samples(text: str, name: str) -> Iterator[tuple[dict[str, str], str]]:
    """Yield (labels, value) of each sample of metric ``name`` in Prometheus text format."""
    prefix = name + "{"
    for line in text.splitlines():
        if not line.startswith(prefix):
            continue
        label_text, _, value = line[len(prefix) :].rpartition("} ")
        labels: dict[str, str] = {}
        for part in _split_labels(label_text):
            key, _, raw = part.partition("=")
            labels[key] = raw.strip('"')
        yield labels, value.strip()


def _split_labels(text: str) -> Iterator[str]:
    # Label values of this metric hold no commas or quotes, but be exact anyway.
    current, quoted = [], False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            yield "".join(current)
            current = []
        else:
            current.append(ch)
    if current:
        yield "".join(current)


def ensure_namespace(client: Client, name: str) -> None:
    """Create namespace ``name`` unless it exists (needs a client allowed to create namespaces)."""
    try:
        client.create(Namespace(metadata=ObjectMeta(name=name)))
    except ApiError as e:
        if e.status.code != 409:
            raise
