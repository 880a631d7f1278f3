"""Fixtures of the Envoy tier: the istio-check tool (built once, cached by version)."""

from __future__ import annotations

import pytest
from support.istio_check import IstioCheck


@pytest.fixture(scope="session")
def istio() -> IstioCheck:
    """The built istio-check; building it is part of the tier (a failure fails, never skips)."""
    return IstioCheck.build()
