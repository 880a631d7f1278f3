"""The unit tests' fake API server answers what nothing serves exactly as kube-apiserver does.

A cluster without Istio is the case that matters: the real server answers a request for a resource
whose CRD is not installed with a plain-text ``404 page not found``, which lightkube does not turn
into ``ApiError``. Unit tests only exercise that path if the fake answers the same way.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.fake_kube import FakeKubeServer
from support.kube_server import KubeServer

PATHS = [
    # Custom resources whose CRD is not installed: every verb's path, namespaced or not.
    "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies",
    "/apis/security.istio.io/v1/namespaces/default/authorizationpolicies/p",
    "/apis/security.istio.io/v1/authorizationpolicies",
    "/apis/gateway.networking.k8s.io/v1/namespaces/default/gateways",
    "/apis/gateway.networking.k8s.io/v1/gateways",
    # A group nothing serves, and a path outside the API.
    "/apis/example.com/v1/widgets",
    "/nothing/here",
    # Built-in groups: an unknown resource or version is a JSON Status.
    "/api/v1/namespaces/default/widgets",
    "/apis/apps/v1/widgets",
    "/apis/apps/v9/namespaces/default/statefulsets",
    # A missing object of a served kind: a JSON Status that names it.
    "/apis/apps/v1/namespaces/default/statefulsets/nope",
]


def comparable(answer: tuple[int, str | None, str]) -> tuple[int, str | None, Any]:
    """A JSON body decoded (key order and spacing differ), any other body as is."""
    status, content_type, body = answer
    return status, content_type, json.loads(body) if content_type == "application/json" else body


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_fake_answers_unserved_paths_like_the_real_server(bare_kube: KubeServer, method: str):
    with FakeKubeServer(crds=set()) as fake:
        for path in PATHS:
            real = comparable(bare_kube.raw_response(method, path))
            assert comparable(fake.raw_response(method, path)) == real, path
