"""The beacon's typed configuration."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BeaconConfig:
    """The charm config, validated once (see ``charmcraft.yaml`` for what each option does).

    Attributes:
        model_on_mesh: put the whole namespace on the mesh instead of each related app.
        manage_authorization_policies: turn the related apps' requests into AuthorizationPolicies.

    Raises:
        ValueError: from the constructor, naming the option, when a value is invalid.
    """

    model_on_mesh: bool = False
    manage_authorization_policies: bool = True

    def __post_init__(self) -> None:
        """Check the types: Juju checks them too, but a wrong type must never pass silently."""
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, bool):
                option = field.name.replace("_", "-")
                raise ValueError(f"{option} must be true or false, not {value!r}")
