"""The beacon's typed configuration."""

from __future__ import annotations

import dataclasses
import enum


class AuthorizationMode(str, enum.Enum):
    """What Istio does with the app-level policies the beacon makes for related apps.

    Attributes:
        enforce: the waypoint enforces them (denied requests get 403).
        dry_run: the waypoint only evaluates them (``istio.io/dry-run: "true"``): every request
            passes, and Envoy counts and logs what the policies would have denied.
    """

    enforce = "enforce"
    dry_run = "dry-run"


@dataclasses.dataclass(frozen=True)
class BeaconConfig:
    """The charm config, validated once (see ``charmcraft.yaml`` for what each option does).

    Attributes:
        model_on_mesh: put the whole namespace on the mesh instead of each related app.
        manage_authorization_policies: turn the related apps' requests into AuthorizationPolicies.
        authorization_mode: ``enforce`` or ``dry-run`` (see :class:`AuthorizationMode`).

    Raises:
        ValueError: from the constructor, naming the option, when a value is invalid.
    """

    model_on_mesh: bool = False
    manage_authorization_policies: bool = True
    authorization_mode: str = AuthorizationMode.enforce.value

    def __post_init__(self) -> None:
        """Check the types and values: Juju checks types too, never the values."""
        for name in ("model_on_mesh", "manage_authorization_policies"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name.replace('_', '-')} must be true or false, not {value!r}")
        modes = [mode.value for mode in AuthorizationMode]
        if not isinstance(self.authorization_mode, str) or self.authorization_mode not in modes:
            shown = repr(self.authorization_mode)
            if len(shown) > 40:
                shown = shown[:37] + "..."
            raise ValueError(f"authorization-mode must be {' or '.join(modes)}, not {shown}")

    @property
    def dry_run(self) -> bool:
        """Whether the app-level policies run in dry-run (observed, not enforced)."""
        return self.authorization_mode == AuthorizationMode.dry_run.value
