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


def status_code(error: ApiError) -> int:
    """The HTTP status code of an API error (0 when the server sent none)."""
    return int(error.status.code or 0)


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
