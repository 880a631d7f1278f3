"""The tester's typed configuration."""

from __future__ import annotations

import dataclasses
import re

# Juju application names: lower-case letters, digits and hyphens; no segment made only of digits.
_APP_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]*[a-z][a-z0-9]*)*$")


@dataclasses.dataclass(frozen=True)
class TesterConfig:
    """The charm config, validated once (see ``charmcraft.yaml`` for what each option does).

    Raises:
        ValueError: from the constructor, naming the option, when a value is invalid.
    """

    auto_join_mesh: bool = True
    peer_communication: bool = True
    debug_impersonate_app: str = ""

    def __post_init__(self) -> None:
        """Check the values Juju's type checks do not cover."""
        name = self.debug_impersonate_app
        if name and not _APP_NAME.match(name):
            raise ValueError(
                f"debug-impersonate-app {name!r} is not a Juju application name;"
                " set it to one or to ''"
            )
