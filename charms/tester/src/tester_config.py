"""The tester's typed configuration."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

# Juju application names: lower-case letters, digits and hyphens; no segment made only of digits.
_APP_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]*[a-z][a-z0-9]*)*$")
# Kubernetes Service names: DNS-1035 labels.
_SERVICE_NAME = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclasses.dataclass(frozen=True)
class TesterConfig:
    """The charm config, validated once (see ``charmcraft.yaml`` for what each option does).

    Raises:
        ValueError: from the constructor, naming the option, when a value is invalid.
    """

    auto_join_mesh: bool = True
    peer_communication: bool = True
    debug_impersonate_app: str = ""
    inbound_extra_service: str = ""

    def __post_init__(self) -> None:
        """Check the values Juju's type checks do not cover."""
        name = self.debug_impersonate_app
        if name and not _APP_NAME.match(name):
            raise ValueError(
                f"debug-impersonate-app {name!r} is not a Juju application name;"
                " set it to one or to ''"
            )
        service = self.inbound_extra_service
        if service and not _SERVICE_NAME.match(service):
            raise ValueError(
                f"inbound-extra-service {service!r} is not a Kubernetes Service name"
                " (lower-case letters, digits and '-', at most 63); set it to one or to ''"
            )

    @classmethod
    def valid_part(cls, config: Mapping[str, object]) -> TesterConfig:
        """The options of ``config`` (the charm's raw config) that are valid, the others default.

        Juju type-checks the booleans; each string option is kept only when it is valid alone
        (the charm still publishes no lie while any option is invalid).
        """
        kept = cls(
            auto_join_mesh=bool(config.get("auto-join-mesh", True)),
            peer_communication=bool(config.get("peer-communication", True)),
        )
        for option in ("debug-impersonate-app", "inbound-extra-service"):
            try:
                value = str(config.get(option, ""))
                kept = dataclasses.replace(kept, **{option.replace("-", "_"): value})
            except ValueError:
                continue
        return kept
