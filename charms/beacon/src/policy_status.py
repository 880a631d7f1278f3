"""What Istio says about each AuthorizationPolicy: whether it enforces it, and where.

istiod writes one condition into ``status.conditions`` of each AuthorizationPolicy it handles in
ambient mode: ``WaypointAccepted`` for a policy that targets a Service or a Gateway (``True``:
bound to a waypoint; ``False`` with a reason such as ``AncestorNotBound``, ``TargetNotFound``,
``Invalid`` or ``PartiallyInvalid``: not, or not wholly, enforced), and ``ZtunnelAccepted`` for a
policy that selects pods (``True``: attached to ztunnel; ``False``: ztunnel cannot enforce part of
it). A policy Istio has not looked at yet has no condition.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

from kube_names import REQUESTED_BY

#: The condition types istiod writes on AuthorizationPolicies in ambient mode.
ISTIO_CONDITION_TYPES = ("WaypointAccepted", "ZtunnelAccepted")
_MAX_TEXT = 120


def _display(text: object) -> str:
    """Cluster text for a status or a log line: one line, printable, cut short."""
    line = "".join(char if char.isprintable() else "?" for char in " ".join(str(text).split()))
    return line if len(line) <= _MAX_TEXT else f"{line[: _MAX_TEXT - 3]}..."


@dataclass(frozen=True)
class PolicyCondition:
    """One of Istio's conditions on one of the beacon's AuthorizationPolicies.

    Attributes:
        policy: ``<namespace>/<name>`` of the policy.
        requested_by: the app whose request it implements (``None`` for the beacon's own).
        type: ``WaypointAccepted`` or ``ZtunnelAccepted``.
        enforced: the condition's status (``True``: Istio enforces the policy there).
        reason: Istio's reason, e.g. ``Accepted`` or ``AncestorNotBound``.
        message: Istio's message (one printable line, at most 120 characters).
    """

    policy: str
    requested_by: str | None
    type: str
    enforced: bool
    reason: str
    message: str

    def describe(self) -> str:
        """``<name> (<app>): <reason>: <message>``, for statuses and logs."""
        name = self.policy.split("/", 1)[-1]
        who = f" ({self.requested_by})" if self.requested_by else ""
        message = f": {self.message}" if self.message else ""
        return f"{name}{who}: {self.reason}{message}"


def istio_conditions(
    policies: Iterable[Mapping[str, Any]], changed: Iterable[str] = ()
) -> list[PolicyCondition]:
    """Istio's conditions on each policy, where they describe the policy as it is now.

    Args:
        policies: the policies as listed (plain dicts, status included).
        changed: ``<namespace>/<name>`` of the policies written since they were listed: their
            status is about an older version, so it is left out.
    """
    skip = set(changed)
    found: list[PolicyCondition] = []
    for policy in policies:
        metadata = cast("Mapping[str, Any]", policy.get("metadata") or {})
        key = f"{metadata.get('namespace', '')}/{metadata.get('name', '')}"
        if key in skip:
            continue
        labels = cast("Mapping[str, str]", metadata.get("labels") or {})
        generation = metadata.get("generation")
        status = cast("Mapping[str, Any]", policy.get("status") or {})
        for condition in cast("list[Mapping[str, Any]]", status.get("conditions") or []):
            kind = condition.get("type")
            if kind not in ISTIO_CONDITION_TYPES:
                continue
            observed = condition.get("observedGeneration")
            if generation is not None and observed not in (None, 0, generation):
                continue  # about an older version of the policy
            found.append(
                PolicyCondition(
                    policy=key,
                    requested_by=labels.get(REQUESTED_BY),
                    type=str(kind),
                    enforced=condition.get("status") == "True",
                    reason=_display(condition.get("reason") or "no reason"),
                    message=_display(condition.get("message") or ""),
                )
            )
    return sorted(found, key=lambda item: (item.policy, item.type))


def not_enforced_message(conditions: Sequence[PolicyCondition]) -> str:
    """A status message naming the first policy Istio does not enforce and counting the rest."""
    unenforced = [condition for condition in conditions if not condition.enforced]
    first = unenforced[0]
    message = f"Istio does not enforce policy {first.describe()}"
    if len(unenforced) > 1:
        message += f" (and {len(unenforced) - 1} more; see juju debug-log)"
    return message
