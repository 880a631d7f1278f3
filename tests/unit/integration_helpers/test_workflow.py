"""The CI workflow runs every integration module, once each, from the packed charms alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
WORKFLOW = REPO / ".github" / "workflows" / "ci.yaml"


def jobs() -> dict[str, Any]:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]


def test_the_integration_matrix_is_the_list_of_integration_modules():
    modules = jobs()["integration"]["strategy"]["matrix"]["module"]
    on_disk = sorted(path.name for path in (REPO / "tests" / "integration").glob("test_*.py"))

    assert len(modules) == len(set(modules)), f"a module twice in the matrix: {modules}"
    assert sorted(modules) == on_disk


def test_the_integration_jobs_wait_only_for_the_packed_charms():
    workflow = jobs()
    assert workflow["integration"]["needs"] == "pack"
    steps = workflow["pack"]["steps"]
    runs = [step.get("run") for step in steps]
    uploads = [step for step in steps if str(step.get("uses", "")).startswith("actions/upload")]
    # Packing and the upload of what it packed are the whole job: nothing can fail in between.
    assert [run for run in runs if run and run.startswith("tox")] == ["tox -e pack"]
    assert [step["with"]["name"] for step in uploads] == ["charms"]
    assert runs.index("tox -e pack") < steps.index(uploads[0])
