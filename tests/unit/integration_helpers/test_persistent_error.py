"""The integration tier's wait condition: an error that clears is tolerated, one that stays not."""

from __future__ import annotations

import jubilant
import pytest
from jubilant.statustypes import AppStatus, ModelStatus, StatusInfo, UnitStatus
from mesh_deploy import PersistentError

GRACE = 300.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def status(units: dict[str, str], app_status: str = "active") -> jubilant.Status:
    """A status of one model where each unit `<app>/<n>` has the given workload status."""
    apps: dict[str, AppStatus] = {}
    for unit, current in units.items():
        name = unit.split("/")[0]
        app = apps.setdefault(
            name,
            AppStatus(
                charm="local:x",
                charm_origin="local",
                charm_name="x",
                charm_rev=0,
                exposed=False,
                app_status=StatusInfo(current=app_status),
            ),
        )
        message = 'hook failed: "config-changed"' if current == "error" else ""
        app.units[unit] = UnitStatus(workload_status=StatusInfo(current=current, message=message))
    model = ModelStatus(name="m", type="caas", controller="c", cloud="k8s", version="3.6.0")
    return jubilant.Status(model=model, machines={}, apps=apps)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_an_error_that_clears_within_the_grace_never_fails(clock: Clock):
    condition = PersistentError("a", grace=GRACE, clock=clock)

    assert condition(status({"a/0": "error"})) is False
    clock.now += GRACE - 1
    assert condition(status({"a/0": "error"})) is False
    clock.now += 1
    assert condition(status({"a/0": "active"})) is False
    assert condition.persistent() == {}


def test_an_error_that_persists_for_the_grace_fails_and_says_who(clock: Clock):
    condition = PersistentError("a", grace=GRACE, clock=clock)

    assert condition(status({"a/0": "error", "a/1": "active"})) is False
    clock.now += GRACE
    assert condition(status({"a/0": "error", "a/1": "active"})) is True
    assert condition.persistent() == {"a/0": 'hook failed: "config-changed"'}
    assert "a/0" in repr(condition)
    assert 'hook failed: "config-changed"' in repr(condition)


def test_clearing_resets_the_clock(clock: Clock):
    condition = PersistentError("a", grace=GRACE, clock=clock)

    assert condition(status({"a/0": "error"})) is False
    clock.now += GRACE - 10
    assert condition(status({"a/0": "active"})) is False
    clock.now += 5
    assert condition(status({"a/0": "error"})) is False
    clock.now += GRACE - 1
    assert condition(status({"a/0": "error"})) is False
    clock.now += 1
    assert condition(status({"a/0": "error"})) is True


def test_the_grace_is_measured_on_the_clock_not_in_polls(clock: Clock):
    condition = PersistentError("a", grace=GRACE, clock=clock)

    for _ in range(100):
        assert condition(status({"a/0": "error"})) is False
    clock.now += GRACE
    assert condition(status({"a/0": "error"})) is True


def test_only_the_named_apps_count(clock: Clock):
    condition = PersistentError("a", grace=GRACE, clock=clock)

    condition(status({"a/0": "active", "b/0": "error"}))
    clock.now += GRACE
    assert condition(status({"a/0": "active", "b/0": "error"})) is False


def test_without_names_every_app_counts_and_an_app_status_too(clock: Clock):
    condition = PersistentError(grace=GRACE, clock=clock)

    condition(status({"b/0": "active"}, app_status="error"))
    clock.now += GRACE
    assert condition(status({"b/0": "active"}, app_status="error")) is True
    assert set(condition.persistent()) == {"b"}
