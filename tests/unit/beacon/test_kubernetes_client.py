"""Reading what Kubernetes answered, as ApiError or as the HTTP library's error."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kubernetes_client import error_message, is_unserved_kind, status_code
from lightkube import ApiError, Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.resources.core_v1 import ConfigMap
from support.fake_kube import FakeKubeServer

Gateway = create_namespaced_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")
Widget = create_namespaced_resource("apps", "v1", "Widget", "widgets")


def failure(call: Callable[[], object]) -> Exception:
    with pytest.raises(Exception) as raised:  # noqa: PT011 (ApiError or the HTTP library's)
        call()
    return raised.value


@pytest.fixture
def client() -> Iterator[Client]:
    with FakeKubeServer(crds=set()) as kube:
        kube.forbid(verb="list", resource="configmaps")
        yield kube.client()


def test_a_kind_that_is_not_installed(client: Client):
    error = failure(lambda: list(client.list(Gateway)))
    assert not isinstance(error, ApiError)  # plain text, as from a real API server
    assert (status_code(error), error_message(error), is_unserved_kind(error)) == (
        404,
        "404 page not found",
        True,
    )


def test_an_unknown_resource_of_a_built_in_group(client: Client):
    error = failure(lambda: client.get(Widget, "w"))
    assert isinstance(error, ApiError)
    assert is_unserved_kind(error)
    assert error_message(error) == "the server could not find the requested resource"


def test_a_missing_object_or_a_refusal_is_not_a_missing_kind(client: Client):
    missing = failure(lambda: client.get(ConfigMap, "nothing"))
    refused = failure(lambda: list(client.list(ConfigMap)))
    assert (status_code(missing), is_unserved_kind(missing)) == (404, False)
    assert (status_code(refused), is_unserved_kind(refused)) == (403, False)
    assert error_message(refused).startswith("configmaps is forbidden")


def test_an_error_that_is_not_an_answer():
    error = ValueError("not from Kubernetes")
    assert (status_code(error), is_unserved_kind(error), error_message(error)) == (
        0,
        False,
        "not from Kubernetes",
    )
