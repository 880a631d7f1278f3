"""The reference matrix is the same in the docs, in the integration tests and in the quick start.

docs/traffic-matrix.md is the reference; `mesh_deploy.reference_matrix` is what the integration
tests send; `scripts/quickstart.sh` sends a smaller cast (receiver, sender, stranger standing for
receiver1, sender1, sender3). Each is reduced to the same rows,
`(sender, method, Service or pod, port, path) -> expected`, and compared.
"""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import pytest
from mesh_deploy import (
    MESH_MEMBERS,
    RECEIVER,
    REFERENCE_APPS,
    STRANGER,
    pod_host,
    reference_matrix,
)
from mesh_probe import ALLOWED, FORBIDDEN, REFUSED

REPO = Path(__file__).resolve().parents[3]
MODEL = "m"
Row = tuple[str, str, str, int, str]
"""(sender app, method, "Service" or "pod", port, path)"""

LABELS = {"200": ALLOWED.label, "403": FORBIDDEN.label, "refused": REFUSED.label}


def _docs_matrix() -> dict[bool, dict[Row, str]]:
    """The table under `## The matrix` in docs/traffic-matrix.md, for model-on-mesh off and on."""
    text = (REPO / "docs" / "traffic-matrix.md").read_text()
    section = text.split("## The matrix", 1)[1].split("\n## ", 1)[0]
    rows: dict[bool, dict[Row, str]] = {False: {}, True: {}}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 4 or cells[0] in {"from", "---"} or set(cells[0]) <= {"-"}:
            continue
        sender, request, off, on = cells
        target = ""
        for segment in request.split(";"):
            methods = re.findall(r"\b(GET|HEAD|POST|PUT|PATCH|DELETE|OPTIONS|TRACE)\b", segment)
            target = (
                "pod"
                if "the pod" in segment
                else "Service"
                if "the Service" in segment
                else target
            )
            addresses = re.findall(r"`:(\d+)(/[^`]*)`", segment)
            assert methods, f"no method in {segment!r} ({line})"
            assert target, f"neither the Service nor the pod in {segment!r} ({line})"
            assert addresses, f"no `:port/path` in {segment!r} ({line})"
            for method in methods:
                for port, path in addresses:
                    row = (sender, method, target, int(port), path)
                    rows[False][row] = LABELS[off]
                    rows[True][row] = LABELS[on]
    return rows


def _target(url: str, receiver: str, model: str) -> tuple[str, int, str]:
    parsed = urllib.parse.urlsplit(url)
    assert parsed.port is not None
    if parsed.hostname == receiver:
        kind = "Service"
    else:
        assert parsed.hostname == pod_host(receiver, model), url
        kind = "pod"
    return kind, parsed.port, parsed.path


def _tests_matrix(model_on_mesh: bool) -> dict[Row, str]:
    rows: dict[Row, str] = {}
    for item in reference_matrix(MODEL, model_on_mesh=model_on_mesh):
        kind, port, path = _target(item.request.url, RECEIVER, MODEL)
        assert item.request.method is not None
        row = (item.source.split("/")[0], item.request.method, kind, port, path)
        assert row not in rows, f"{row} twice in reference_matrix()"
        rows[row] = item.expected.label
    return rows


@pytest.mark.parametrize("model_on_mesh", [False, True], ids=["model-off-mesh", "model-on-mesh"])
def test_the_integration_tests_send_exactly_the_documented_matrix(model_on_mesh: bool):
    assert _tests_matrix(model_on_mesh) == _docs_matrix()[model_on_mesh]


def test_every_reference_app_but_the_receiver_sends_something():
    senders = {row[0] for row in _docs_matrix()[False]}
    assert senders == set(REFERENCE_APPS) - {RECEIVER}
    assert STRANGER in senders
    # ... and the scenario relates all but the stranger to the beacon.
    assert set(MESH_MEMBERS) == set(REFERENCE_APPS) - {STRANGER}


QUICKSTART_CAST = {"receiver": "receiver1", "sender": "sender1", "stranger": "sender3"}
QUICKSTART_EXPECTED = {"200": ALLOWED, "403": FORBIDDEN, "denied": REFUSED}


def _quickstart() -> str:
    return (REPO / "scripts" / "quickstart.sh").read_text()


def _quickstart_rows() -> list[tuple[Row, str]]:
    """The quick start's CASES, in the reference cast's names; `?` for the stranger's Service."""
    script = _quickstart()
    cases = script.split("\nCASES=(", 1)[1].split("\n)", 1)[0]
    service = re.search(r'^SERVICE="([^"]+)"$', script, re.MULTILINE)
    pod = re.search(r'^POD="([^"]+)"$', script, re.MULTILINE)
    assert service
    assert pod
    rows: list[tuple[Row, str]] = []
    for line in cases.strip().splitlines():
        unit, method, url, expected = line.strip().strip('"').split("|")
        url = url.replace("$SERVICE", service.group(1)).replace("$POD", pod.group(1))
        kind, port, path = _target(url.replace("$MODEL", "demo"), "receiver", "demo")
        sender = QUICKSTART_CAST[unit.split("/")[0]]
        rows.append(((sender, method, kind, port, path), expected))
    return rows


@pytest.mark.parametrize("model_on_mesh", [False, True], ids=["model-off-mesh", "model-on-mesh"])
def test_the_quick_start_expects_what_the_matrix_says(model_on_mesh: bool):
    documented = _docs_matrix()[model_on_mesh]
    script = _quickstart()
    # The one expectation that follows model-on-mesh is chosen by the script itself.
    chosen = re.search(
        r'model-on-mesh\)" == true \]\]; then\s+STRANGER_TO_SERVICE=(\w+)\s+else\s+'
        r"STRANGER_TO_SERVICE=(\w+)\s+fi",
        script,
    )
    assert chosen, (
        "the quick start no longer chooses the stranger's expectation from model-on-mesh"
    )
    stranger_to_service = chosen.group(1) if model_on_mesh else chosen.group(2)
    rows = _quickstart_rows()
    assert rows
    for row, written in rows:
        expected = stranger_to_service if written == "$STRANGER_TO_SERVICE" else written
        assert row in documented, f"the quick start sends {row}, which the matrix does not have"
        assert QUICKSTART_EXPECTED[expected].label == documented[row], row


def test_the_quick_start_relates_the_stranger_to_nothing():
    script = _quickstart()
    members = re.search(r"^MESH_MEMBERS=\(([^)]*)\)", script, re.MULTILINE)
    assert members
    assert members.group(1).split() == ["receiver", "sender"]
    assert "stranger:" not in script, "the stranger must not be related to anything"
