"""Count the hook tools a charm would run under Juju, at ops.testing's model backend.

Under Juju every call of ``ops.model._ModelBackend`` that reaches Juju runs one hook tool (a
process started by the unit agent): ``relation-get``, ``relation-list``, ``juju-log``, ... Under
ops.testing the same calls go to ``scenario.mocking._MockModelBackend``. `count_hook_tools` wraps
its methods so that each call counts as the hook tool that the real backend would have run:

- only the outermost call counts (the mock calls its own methods internally, e.g. ``relation_list``
  asks ``relation_remote_app_name``);
- ``is-leader`` counts once per backend, i.e. once per hook: ops caches leadership for the 30 s
  lease, while the mock answers every call;
- ``relation_remote_app_name`` is ``relation-list --app`` except for the relation of the event,
  whose remote app ops reads from ``JUJU_REMOTE_APP``;
- ``juju_log`` counts one ``juju-log`` per chunk ops would send (``_ModelBackend.log_split``).
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ops.model import _ModelBackend
from scenario.mocking import _MockModelBackend

#: Backend method -> the hook tool the real backend runs for it.
HOOK_TOOLS: dict[str, str] = {
    "relation_ids": "relation-ids",
    "relation_list": "relation-list",
    "relation_remote_app_name": "relation-list",  # with --app
    "relation_get": "relation-get",
    "relation_set": "relation-set",
    "relation_model_get": "relation-model-get",
    "config_get": "config-get",
    "is_leader": "is-leader",
    "resource_get": "resource-get",
    "pod_spec_set": "pod-spec-set",
    "status_get": "status-get",
    "status_set": "status-set",
    "storage_list": "storage-list",
    "storage_get": "storage-get",
    "storage_add": "storage-add",
    "action_get": "action-get",
    "action_set": "action-set",
    "action_log": "action-log",
    "action_fail": "action-fail",
    "application_version_set": "application-version-set",
    "juju_log": "juju-log",
    "network_get": "network-get",
    "add_metrics": "add-metric",
    "planned_units": "goal-state",
    "secret_get": "secret-get",
    "secret_info_get": "secret-info-get",
    "secret_set": "secret-set",
    "secret_add": "secret-add",
    "secret_grant": "secret-grant",
    "secret_revoke": "secret-revoke",
    "secret_remove": "secret-remove",
    "open_port": "open-port",
    "close_port": "close-port",
    "opened_ports": "opened-ports",
    "reboot": "juju-reboot",
    "credential_get": "credential-get",
}

_LEADER_SEEN = "_bench_is_leader_counted"


class HookToolCounter:
    """Hook tool invocations counted while `count_hook_tools` is active."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._depth = 0

    def reset(self) -> None:
        """Forget the counts."""
        self.calls.clear()

    @property
    def total(self) -> int:
        """All hook tool invocations."""
        return sum(self.calls.values())

    def _wrap(self, method_name: str, tool: str, original: Callable[..., Any]) -> Any:
        counter = self

        @functools.wraps(original)
        def wrapper(backend: Any, *args: Any, **kwargs: Any) -> Any:
            if counter._depth == 0:
                counter._count(backend, method_name, tool, args, kwargs)
            counter._depth += 1
            try:
                return original(backend, *args, **kwargs)
            finally:
                counter._depth -= 1

        return wrapper

    def _count(
        self,
        backend: Any,
        method_name: str,
        tool: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        if method_name == "is_leader":
            if getattr(backend, _LEADER_SEEN, False):
                return
            setattr(backend, _LEADER_SEEN, True)
        elif method_name == "relation_remote_app_name":
            relation_id = args[0] if args else kwargs.get("relation_id")
            context = backend._juju_context  # what ops itself consults
            if context.relation_id == relation_id and context.remote_app_name is not None:
                return
        elif method_name == "juju_log":
            message = str(args[1] if len(args) > 1 else kwargs.get("message", ""))
            self.calls[tool] += sum(1 for _ in _ModelBackend.log_split(message))
            return
        self.calls[tool] += 1


@contextmanager
def count_hook_tools() -> Iterator[HookToolCounter]:
    """Patch the ops.testing backend to count hook tools; undo it on exit."""
    counter = HookToolCounter()
    originals: dict[str, Any] = {}
    for name, tool in HOOK_TOOLS.items():
        original = getattr(_MockModelBackend, name, None)
        if original is None:  # pragma: no cover - depends on the ops version
            continue
        originals[name] = _MockModelBackend.__dict__.get(name)
        setattr(_MockModelBackend, name, counter._wrap(name, tool, original))
    try:
        yield counter
    finally:
        for name, original in originals.items():
            if original is None:
                delattr(_MockModelBackend, name)
            else:
                setattr(_MockModelBackend, name, original)
