"""Charm tracing loads only in a unit related over charm-tracing (tracing_gate.py).

A hook's start is a fresh process: the first tests import the charm in one, as ``dispatch`` does,
with and without the marker. The others run the charm with ops.testing and check that the marker
follows the relation, and that a related unit sets tracing up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from charm import IstioBeaconCharm
from conftest import APP, beacon_state
from ops import testing
from tracing_gate import MARKER_NAME, remember

SRC = Path(__file__).resolve().parents[3] / "charms" / "beacon" / "src"
PROBE = """\
import json, sys
import charm, ops
print(json.dumps({
    "ops_tracing": sys.modules.get("ops_tracing") is not None,
    "opentelemetry_sdk": "opentelemetry.sdk" in sys.modules,
    "pydantic": "pydantic" in sys.modules,
    "ops.tracing": ops.tracing is not None,
}))
"""


def start_hook_process(charm_dir: Path) -> dict[str, bool]:
    """Import the charm in a fresh process whose charm folder is ``charm_dir``."""
    env = {
        **os.environ,
        "JUJU_CHARM_DIR": str(charm_dir),
        "JUJU_UNIT_NAME": f"{APP}/0",
        "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout)


def test_an_unrelated_unit_does_not_import_tracing(tmp_path: Path) -> None:
    loaded = start_hook_process(tmp_path)

    assert loaded == {
        "ops_tracing": False,
        "opentelemetry_sdk": False,
        "pydantic": False,
        "ops.tracing": False,
    }


def test_outside_a_hook_ops_keeps_tracing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUJU_")}
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )

    assert json.loads(done.stdout)["ops.tracing"]


def test_a_related_unit_imports_tracing_for_ops(tmp_path: Path) -> None:
    (tmp_path / MARKER_NAME).write_text("related\n")

    loaded = start_hook_process(tmp_path)

    assert loaded["ops_tracing"]
    assert loaded["ops.tracing"]
    assert loaded["opentelemetry_sdk"]


def tracing_relation() -> testing.Relation:
    return testing.Relation(
        "charm-tracing",
        "tracing",
        remote_app_data={
            "receivers": json.dumps(
                [{"protocol": {"name": "otlp_http", "type": "http"}, "url": "http://tempo:4318"}]
            )
        },
    )


@pytest.fixture
def charm_ctx(tmp_path: Path) -> testing.Context[IstioBeaconCharm]:
    return testing.Context(IstioBeaconCharm, app_name=APP, charm_root=tmp_path)


def test_the_marker_follows_the_relation(
    charm_ctx: testing.Context[IstioBeaconCharm], tmp_path: Path
) -> None:
    tracing = tracing_relation()
    state = beacon_state(relations=[tracing])

    with charm_ctx(charm_ctx.on.relation_created(tracing), state) as manager:
        # A related unit sets tracing up: the Tracing object exists and asks for a receiver.
        assert manager.charm._tracing is not None
        out = manager.run()
    assert json.loads(out.get_relation(tracing.id).local_app_data["receivers"]) == ["otlp_http"]
    assert (tmp_path / MARKER_NAME).exists()

    charm_ctx.run(charm_ctx.on.relation_broken(out.get_relation(tracing.id)), out)
    assert not (tmp_path / MARKER_NAME).exists()


# ops_tracing's vendored tracing library reads the relation on start with a pydantic v1 idiom.
@pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20")
@pytest.mark.parametrize("related", [True, False])
def test_start_and_upgrade_heal_the_marker(
    charm_ctx: testing.Context[IstioBeaconCharm], tmp_path: Path, related: bool
) -> None:
    if not related:
        (tmp_path / MARKER_NAME).write_text("stale\n")
    state = beacon_state(relations=[tracing_relation()] if related else [])

    charm_ctx.run(charm_ctx.on.start(), state)
    assert (tmp_path / MARKER_NAME).exists() == related
    charm_ctx.run(charm_ctx.on.upgrade_charm(), state)
    assert (tmp_path / MARKER_NAME).exists() == related


@pytest.mark.parametrize("related", [True, False])
def test_a_charm_folder_that_cannot_be_written_costs_tracing_not_the_hook(
    tmp_path: Path, related: bool, caplog: pytest.LogCaptureFixture
):
    missing = tmp_path / "gone"  # writing into it fails with an OSError, even as root
    if not related:
        missing.mkdir()
        (missing / MARKER_NAME).mkdir()  # a folder where the marker should be: unlink fails
    assert remember(related, missing) is False
    assert "charm tracing" in caplog.text
    assert remember(related, tmp_path) is True
    assert (tmp_path / MARKER_NAME).exists() is related
