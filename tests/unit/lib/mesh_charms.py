"""Throwaway charms on both sides of the ``service_mesh`` relation, and helpers to run them.

The consumer charm is built per test with the policies under test (``consumer_context``); the
provider charm publishes fixed labels. Both are plain ``ops.CharmBase`` subclasses driven by
``ops.testing``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import ops
from charms.istio_beacon_k8s.v0.service_mesh import (
    AppPolicy,
    ServiceMeshConsumer,
    ServiceMeshProvider,
    UnitPolicy,
)
from ops import testing

MODEL = "my-model"
CONSUMER = "consumer-charm"
PROVIDER = "beacon"
MESH_LABELS = {
    "istio.io/dataplane-mode": "ambient",
    "istio.io/use-waypoint": "my-model-beacon-waypoint",
}

CONSUMER_META: dict[str, Any] = {
    "name": CONSUMER,
    "requires": {
        "service-mesh": {"interface": "service_mesh", "limit": 1},
        "require-cmr-mesh": {"interface": "cross_model_mesh"},
        "rela": {"interface": "foo"},
        "relb": {"interface": "foo"},
    },
    "provides": {
        "provide-cmr-mesh": {"interface": "cross_model_mesh"},
        "inbound": {"interface": "http"},
    },
    "peers": {"peers": {"interface": "consumer_peers"}},
}

PROVIDER_META: dict[str, Any] = {
    "name": PROVIDER,
    "provides": {"service-mesh": {"interface": "service_mesh"}},
}


def consumer_context(
    policies: Sequence[AppPolicy | UnitPolicy] = (),
    *,
    auto_join: bool = False,
    meta: Mapping[str, Any] = CONSUMER_META,
) -> testing.Context[ops.CharmBase]:
    """An ops.testing context for a consumer charm declaring ``policies``."""

    class ConsumerCharm(ops.CharmBase):
        def __init__(self, framework: ops.Framework):
            super().__init__(framework)
            self.mesh = ServiceMeshConsumer(self, policies=policies, auto_join=auto_join)

    return testing.Context(ConsumerCharm, meta=dict(meta), app_name=meta["name"])


def provider_context(labels: Mapping[str, str] = MESH_LABELS) -> testing.Context[ops.CharmBase]:
    """An ops.testing context for a provider charm publishing ``labels``."""

    class ProviderCharm(ops.CharmBase):
        def __init__(self, framework: ops.Framework):
            super().__init__(framework)
            self.mesh = ServiceMeshProvider(self, labels=labels)

    return testing.Context(ProviderCharm, meta=dict(PROVIDER_META), app_name=PROVIDER)


def mesh_relation(**kwargs: Any) -> testing.Relation:
    """The consumer's side of the ``service-mesh`` relation (remote app: the beacon)."""
    kwargs.setdefault("remote_app_name", PROVIDER)
    return testing.Relation("service-mesh", "service_mesh", **kwargs)


def provider_databag(labels: Mapping[str, str] = MESH_LABELS) -> dict[str, str]:
    """A provider app databag as every beacon writes it."""
    return {"labels": json.dumps(dict(labels)), "mesh_type": '"istio"'}


def state(
    *relations: testing.RelationBase, leader: bool = True, model: str = MODEL, **kwargs: Any
) -> testing.State:
    """A state in model ``my-model`` unless told otherwise."""
    return testing.State(
        leader=leader, relations=relations, model=testing.Model(name=model), **kwargs
    )


def published_policies(out: testing.State, relation: testing.Relation) -> list[dict[str, Any]]:
    """The policies the consumer wrote on ``relation``, parsed."""
    return json.loads(out.get_relation(relation.id).local_app_data["policies"])
