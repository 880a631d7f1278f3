"""Load the charm-tracing machinery only in units related to a tracing backend.

When ``ops-tracing`` is installed, ``import ops`` imports it, and with it OpenTelemetry's SDK,
pydantic and the vendored charm libraries: nearly as much CPU as ops itself, at the start of every
hook, traced or not. A unit remembers whether it is related over ``charm-tracing`` in a marker file
in its charm folder (next to ops' own state); when the marker is absent, :func:`gate` makes
``import ops_tracing`` fail before ops is imported, and ops runs without tracing (as it does when
the package is not installed).

The marker follows the relation: the charm writes it when the relation is created or changes, and
on ``start`` and ``upgrade-charm`` when the relation exists (so a lost marker heals, e.g. a new
pod); it removes it when the relation is broken. The hook that creates the relation is not traced;
the hooks after it are.

This module must be imported before ``ops``, and imports nothing but the standard library.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: The marker's name, in the charm folder (``JUJU_CHARM_DIR``).
MARKER_NAME = ".charm-tracing-related"
#: The module ops imports for tracing.
TRACING_MODULE = "ops_tracing"


def charm_folder(environ: Mapping[str, str] | None = None) -> Path:
    """The unit's charm folder: ``JUJU_CHARM_DIR``, else the folder above ``src/`` (as ops)."""
    env = os.environ if environ is None else environ
    return Path(env.get("JUJU_CHARM_DIR") or Path(__file__).resolve().parent.parent)


def gate(environ: Mapping[str, str] | None = None) -> bool:
    """Block ``import ops_tracing`` unless the unit is related over charm-tracing.

    Acts only in a hook's process (``JUJU_UNIT_NAME`` is set), and does nothing once ops or
    ops_tracing is imported: a test run or a tool that imports the charm keeps ops as installed.

    Returns:
        whether tracing may load.
    """
    env = os.environ if environ is None else environ
    if "JUJU_UNIT_NAME" not in env or "ops" in sys.modules or TRACING_MODULE in sys.modules:
        return sys.modules.get(TRACING_MODULE, True) is not None
    if (charm_folder(environ) / MARKER_NAME).exists():
        return True
    # A None entry makes `import ops_tracing` raise ImportError: ops then sets ops.tracing = None.
    sys.modules[TRACING_MODULE] = None  # type: ignore[assignment]
    return False


def remember(related: bool, folder: Path) -> bool:
    """Write (``related``) or remove the marker in charm folder ``folder``; no-op if it says so.

    A charm folder the unit cannot write to (a read-only or vanished folder) costs tracing, never
    the hook: the failure is logged, and the next ``start`` or ``upgrade-charm`` tries again.

    Returns:
        whether the marker now says what ``related`` says.
    """
    path = folder / MARKER_NAME
    try:
        if related == path.exists():
            return True
        if related:
            path.write_text("related over charm-tracing: ops_tracing loads at hook start\n")
        else:
            path.unlink(missing_ok=True)
    except OSError as error:
        logging.getLogger(__name__).warning(
            "cannot %s %s (%s): charm tracing %s until it can",
            "write" if related else "remove",
            path,
            error.strerror or error,
            "stays off" if related else "stays on",
        )
        return False
    return True


gate()
