"""The reference scenario and more, as consumer declarations, and the traffic each must see.

Apps in model ``mesh-model`` unless said otherwise. ``sender3`` is on the mesh but related to
nothing. ``sender-a`` lives in ``other-model`` and reaches ``receiver1`` across models.
"""

from __future__ import annotations

from dataclasses import dataclass

from beacon_path import Consumer
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    CMRData,
    Endpoint,
    Method,
    UnitPolicy,
)
from support.envoy_waypoint import spiffe_id

MODEL = "mesh-model"

SENDER1 = spiffe_id(MODEL, "sender1")
SENDER2 = spiffe_id(MODEL, "sender2")
SENDER3 = spiffe_id(MODEL, "sender3")
REMOTE_A = spiffe_id("other-model", "sender-a")
REMOTE_B = spiffe_id("model-b", "sender-b")
#: The cross-model sender's app name, but claimed from the wrong namespace.
IMPOSTOR = spiffe_id(MODEL, "sender-a")


def reference_receiver_policies() -> list[AppPolicy | UnitPolicy]:
    """What the reference scenario's receiver1 declares (docs/traffic-matrix.md)."""
    return [
        AppPolicy(
            relation="inbound",
            endpoints=[
                Endpoint(
                    ports=[8080, 8081],
                    methods=[Method.get, Method.post],
                    paths=["/foo", "/bar/"],
                )
            ],
        ),
        UnitPolicy(relation="inbound-unit", ports=[8080, 8081]),
    ]


def consumers() -> list[Consumer]:
    """Every receiving charm, as it declares its policies, and who is related to it."""
    return [
        Consumer(
            "receiver1",
            reference_receiver_policies(),
            {"inbound": ["sender1", "remote-a"], "inbound-unit": ["sender2"]},
            {"remote-a": CMRData(app_name="sender-a", juju_model_name="other-model")},
        ),
        Consumer(
            "receiver2",
            [AppPolicy(relation="any")],  # an app policy without endpoints: anything, any port
            {"any": ["sender1", "remote-b"]},
            {"remote-b": CMRData(app_name="sender-b", juju_model_name="model-b")},
        ),
        Consumer(
            "receiver3",
            [
                AppPolicy(
                    relation="web",
                    service="receiver3-api",
                    endpoints=[
                        Endpoint(
                            hosts=["receiver3.example.com", "receiver3:8080"],
                            ports=[8080],
                            methods=[Method.put, Method.delete],
                            paths=["/api/*", "*.json", "/items/{*}/detail"],
                        ),
                        Endpoint(ports=[9090], methods=[Method.get]),
                    ],
                )
            ],
            {"web": ["sender1", "sender2"]},
        ),
    ]


#: Every Service the waypoint serves here, and its ports. ``bystander`` has no policy at all.
SERVICE_PORTS = {
    f"{MODEL}/receiver1": [8080, 8081, 8083],
    f"{MODEL}/receiver2": [8080, 9999],
    f"{MODEL}/receiver3-api": [8080, 9090],
    f"{MODEL}/bystander": [8080],
}

SERVICES = {
    "receiver1": {"app.kubernetes.io/name": "receiver1"},
    "receiver2": {"app.kubernetes.io/name": "receiver2"},
    "receiver3": {"app.kubernetes.io/name": "receiver3"},
    "receiver3-api": {"app.kubernetes.io/name": "receiver3"},
    "bystander": {"app.kubernetes.io/name": "bystander"},
}


@dataclass(frozen=True)
class Row:
    """One request through the waypoint and what it must get (200 from the backend, or 403)."""

    sender: str
    service: str
    port: int
    method: str
    path: str
    expected: int
    host: str | None = None

    @property
    def id(self) -> str:
        """A readable test id."""
        who = self.sender.removeprefix("spiffe://cluster.local/ns/")
        host = f" Host:{self.host}" if self.host else ""
        return (
            f"{who} {self.method} {self.service}:{self.port}{self.path}{host} -> {self.expected}"
        )


R1, R2, R3, BY = "receiver1", "receiver2", "receiver3-api", "bystander"
HOST_OK = "receiver3.example.com"

WAYPOINT_ROWS = [
    # The reference matrix, service rows (through the waypoint).
    Row(SENDER1, R1, 8080, "GET", "/foo", 200),
    Row(SENDER1, R1, 8081, "GET", "/foo", 200),
    Row(SENDER1, R1, 8080, "GET", "/bar/", 200),
    Row(SENDER1, R1, 8080, "POST", "/foo", 200),
    Row(SENDER1, R1, 8080, "DELETE", "/foo", 403),
    Row(SENDER2, R1, 8080, "GET", "/foo", 403),  # sender2 is only allowed to the pods
    Row(SENDER3, R1, 8080, "GET", "/foo", 403),  # related to nothing
    Row(REMOTE_A, R1, 8080, "GET", "/foo", 200),  # across models
    Row(REMOTE_A, R1, 8081, "POST", "/bar/", 200),
    Row(REMOTE_A, R1, 8080, "GET", "/nonexistent", 403),
    # More of receiver1: exact paths, ports not allowed, identities not allowed.
    Row(SENDER1, R1, 8080, "GET", "/bar", 403),
    Row(SENDER1, R1, 8080, "GET", "/foo/x", 403),
    Row(SENDER1, R1, 8083, "GET", "/foo", 403),
    Row(SENDER1, R1, 8080, "PUT", "/foo", 403),
    Row(IMPOSTOR, R1, 8080, "GET", "/foo", 403),  # right app name, wrong model
    Row(REMOTE_B, R1, 8080, "GET", "/foo", 403),
    # An app policy without endpoints: any method, path and port, for its sources only.
    Row(SENDER1, R2, 8080, "DELETE", "/anything", 200),
    Row(SENDER1, R2, 9999, "PATCH", "/", 200),
    Row(REMOTE_B, R2, 8080, "GET", "/x", 200),
    Row(SENDER2, R2, 8080, "GET", "/", 403),
    Row(REMOTE_A, R2, 8080, "GET", "/", 403),
    # A named Service, hosts, prefix/suffix/template paths, two endpoints.
    Row(SENDER1, R3, 8080, "PUT", "/api/x", 200, HOST_OK),
    Row(SENDER1, R3, 8080, "DELETE", "/data.json", 200, "receiver3:8080"),
    Row(SENDER2, R3, 8080, "PUT", "/items/42/detail", 200, HOST_OK),
    Row(SENDER1, R3, 8080, "PUT", "/other/../api/x", 200, HOST_OK),  # normalized before RBAC
    Row(SENDER1, R3, 8080, "PUT", "/api/x", 403),  # Host receiver3-api:8080 is not listed
    Row(SENDER1, R3, 8080, "PUT", "/api/x", 403, "RECEIVER3.EXAMPLE.COM.evil"),
    Row(SENDER1, R3, 8080, "GET", "/api/x", 403, HOST_OK),
    Row(SENDER1, R3, 8080, "PUT", "/items/4/2/detail", 403, HOST_OK),
    Row(SENDER1, R3, 8080, "PUT", "/apix", 403, HOST_OK),
    Row(SENDER1, R3, 9090, "GET", "/anything", 200),
    Row(SENDER2, R3, 9090, "GET", "/", 200),
    Row(SENDER1, R3, 9090, "POST", "/anything", 403),
    Row(SENDER3, R3, 9090, "GET", "/", 403),
    # A Service no policy attaches to: the waypoint allows everything.
    Row(SENDER3, BY, 8080, "DELETE", "/x", 200),
]
