"""The ``access-map`` and ``explain`` actions: read the model, ask the engine, format the answer.

The charm only routes the action events here; every failure the operator can act on is an
:class:`ActionError` with a message saying what to do.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from charms.istio_beacon_k8s.v0.service_mesh import MissingCRDError, RelationRequest
from kubernetes_client import error_message, make_client, status_code
from waypoint import waypoint_name

from access.cluster import read_model
from access.map import build_access_map, explain
from access.model import Level, Model
from access.report import FORMATS, explanation_results, format_map, safe_text

_METHOD_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")


class ActionError(Exception):
    """Why an action cannot answer, in words the operator acts on."""


def read(
    app: str, namespace: str, requests: Sequence[RelationRequest], *, managing: bool
) -> Model:
    """Read the model's state for the engine through the beacon's Kubernetes client.

    Raises:
        ActionError: Istio is missing, the charm is not trusted, or Kubernetes refused.
    """
    try:
        with contextlib.closing(make_client(app, namespace)) as client:
            return read_model(
                client, namespace, app, waypoint_name(namespace, app), requests, managing=managing
            )
    except MissingCRDError as error:
        raise ActionError(f"deploy istio-k8s: Istio is missing ({error.resource})") from None
    except Exception as error:  # lightkube.ApiError, or an HTTP error: see status_code
        code = status_code(error)
        if not code:
            # No answer at all (no connection, a timeout, not in a pod): the operator's to fix.
            said = safe_text(str(error) or type(error).__name__)
            raise ActionError(f"cannot reach Kubernetes: {said}") from None
        if code == 403:
            raise ActionError(
                f"run `juju trust {app} --scope=cluster` or bind the Role in charms/beacon/rbac "
                f"(docs/beacon.md): Kubernetes refused to let the beacon read the model "
                f"({safe_text(error_message(error))})"
            ) from None
        raise ActionError(
            f"cannot read the model: Kubernetes said {code} {safe_text(error_message(error))}"
        ) from None


def access_map_results(model: Model, params: Mapping[str, Any]) -> dict[str, str]:
    """The ``access-map`` action's results: ``map``, in the ``format`` asked for.

    Raises:
        ActionError: an unknown format.
    """
    fmt = str(params.get("format") or "table")
    if fmt not in FORMATS:
        raise ActionError(f"format must be one of {', '.join(FORMATS)}, not {safe_text(fmt, 40)}")
    app = params.get("app") or None
    access = build_access_map(model, str(app) if app else None)
    return {"map": format_map(access, fmt), "grants": str(len(access.grants))}


def explain_results(model: Model, params: Mapping[str, Any]) -> dict[str, Any]:
    """The ``explain`` action's results: ``verdict``, ``reason``, ``policy``, ``explanation``.

    Raises:
        ActionError: a parameter that cannot be a request (port, method, level).
    """
    source = str(params.get("source") or "")
    target = str(params.get("target") or "")
    if not source or not target:
        raise ActionError("give source=<app>[/<model>] and target=<app>")
    port = params.get("port")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise ActionError(f"port must be a port number 1-65535, not {safe_text(port, 40)}")
    method = params.get("method") or None
    if method is not None:
        # HTTP methods are case-sensitive on the wire, but every one in use is upper case and
        # Istio matches them so: ``get`` means GET.
        method = str(method).upper()
        if not (set(method) <= _METHOD_CHARS):
            raise ActionError(
                f"method must be an HTTP method such as GET, not {safe_text(method, 40)}"
            )
    level = str(params.get("level") or "app")
    if level not in ("app", "unit"):
        raise ActionError(f"level must be app or unit, not {safe_text(level, 40)}")
    explanation = explain(
        model,
        source,
        target,
        port,
        method=str(method) if method else None,
        path=str(params["path"]) if params.get("path") else None,
        host=str(params["host"]) if params.get("host") else None,
        level=Level(level),
    )
    return explanation_results(explanation)
