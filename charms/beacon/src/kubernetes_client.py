"""The Kubernetes client and the few helpers every module that writes objects shares."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from lightkube import ApiError, Client


def make_client(app_name: str, model_name: str) -> Client:
    """A client for the model's namespace, found by lightkube's default config discovery.

    In a pod that is the service account; elsewhere ``KUBECONFIG`` (tests point it at a fake or a
    real test API server). Server-side applies are made as ``<app>-<model>``.
    """
    return Client(namespace=model_name, field_manager=f"{app_name}-{model_name}")


def status_code(error: BaseException) -> int:
    """The HTTP status of a failed Kubernetes request (0 when ``error`` is not an HTTP error).

    lightkube raises ``lightkube.ApiError`` when the API server answers with a JSON ``Status``,
    but its HTTP library's own error (httpx in lightkube 0.x, httpx2 in 1.x) for any other answer,
    as for a resource type the server does not serve at all (a CRD that is not installed answers
    ``404 page not found`` in plain text). Both are read here without importing either library.
    """
    code = getattr(getattr(error, "status", None), "code", None)
    if not isinstance(code, int):
        code = getattr(getattr(error, "response", None), "status_code", None)
    return code if isinstance(code, int) else 0


def error_message(error: BaseException) -> str:
    """What Kubernetes said about a failed request, for a status message or a log line."""
    if isinstance(error, ApiError):
        return str(error.status.message or "")
    try:
        text = getattr(getattr(error, "response", None), "text", None)
    except Exception:  # a streamed response that was never read: nothing more to say
        text = None
    if isinstance(text, str) and text.strip():
        return text.strip()
    return str(error)


def refuses_the_object(code: int, error: BaseException) -> bool:
    """Whether a failed write says Kubernetes will not take that object, whoever writes it.

    Admission, the object's size or schema (4xx other than those below), or a ResourceQuota of
    the namespace: a 403 whose message says ``exceeded quota``, unlike RBAC's 403, which says
    the writer may not write at all. Not: 401, 404, 409 (someone else's object), 429, 5xx.

    Args:
        code: the HTTP status (:func:`status_code` of ``error``).
        error: the failed request's error.
    """
    if code == 403:
        return "exceeded quota" in error_message(error)
    return bool(code) and code not in (401, 404, 409, 429) and code < 500


def is_unserved_kind(error: BaseException) -> bool:
    """Whether a failed request says the API server does not serve that resource type at all.

    For a custom resource whose CRD is not installed, a real API server answers a plain-text
    ``404 page not found``, which lightkube raises as its HTTP library's error, not as
    ``lightkube.ApiError``. A built-in group or version it does not serve gets a JSON 404 that
    names no object. A 404 that names an object only says that object does not exist.
    """
    if status_code(error) != 404:
        return False
    if not isinstance(error, ApiError):
        return True
    details = error.status.details
    return not (details and details.name)


def contains(current: object, wanted: object) -> bool:
    """Whether ``current`` has everything ``wanted`` has.

    Maps may hold more keys (the server adds defaults); lists must have the same length and
    match item by item; anything else must be equal.
    """
    if isinstance(wanted, Mapping):
        if not isinstance(current, Mapping):
            return False
        have = cast("Mapping[str, Any]", current)
        want = cast("Mapping[str, Any]", wanted)
        return all(key in have and contains(have[key], value) for key, value in want.items())
    if isinstance(wanted, list):
        if not isinstance(current, list):
            return False
        have_items = cast("list[Any]", current)
        want_items = cast("list[Any]", wanted)
        return len(have_items) == len(want_items) and all(
            contains(have, want) for have, want in zip(have_items, want_items, strict=True)
        )
    return current == wanted


def is_applied(wanted: Mapping[str, Any], current: Mapping[str, Any]) -> bool:
    """Whether the object ``current`` already carries the spec, labels and annotations wanted."""
    want_meta = cast("Mapping[str, Any]", wanted.get("metadata") or {})
    have_meta = cast("Mapping[str, Any]", current.get("metadata") or {})
    return contains(current.get("spec"), wanted.get("spec")) and all(
        contains(have_meta.get(key) or {}, want_meta.get(key) or {})
        for key in ("labels", "annotations")
    )
