"""Fixtures of the promtool tier: promtool (built once, cached by version), the published rules."""

from __future__ import annotations

from typing import Any

import pytest
from metrics import alert_rules
from support.promtool import Promtool, beacon_topology


@pytest.fixture(scope="session")
def promtool() -> Promtool:
    """The built promtool; building it is part of the tier (a failure fails, never skips)."""
    return Promtool.build()


@pytest.fixture(scope="session")
def published_rules() -> dict[str, Any]:
    """The alert rules exactly as the beacon publishes them (``alert_rules``), via cosl."""
    return alert_rules(beacon_topology())
