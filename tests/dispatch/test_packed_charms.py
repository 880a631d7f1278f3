"""What the packed charms are made of: what Juju will execute, and what their venv holds."""

from __future__ import annotations

import ast
import re
import stat
import subprocess
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import REPO, packed_charm
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

CHARMS = ("beacon", "tester")


def pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by canonical name, as on the charms' base.

    As pip reads them on Ubuntu 24.04 (Python 3.12): a pin whose marker excludes 3.12 is left out.
    """
    base = {"python_version": "3.12", "python_full_version": "3.12.3"}
    result: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(base):
            continue
        (specifier,) = requirement.specifier
        result[canonicalize_name(requirement.name)] = specifier.version
    return result


@pytest.mark.parametrize("charm", CHARMS)
def test_entry_point_is_executable_in_git(charm: str):
    # dispatch runs `exec ./src/charm.py`: without the bit every hook exits 126 on Juju.
    listing = subprocess.run(
        ["git", "ls-files", "-s", f"charms/{charm}/src/charm.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert listing, f"charms/{charm}/src/charm.py is not tracked by git"
    assert listing[0] == "100755", f"charms/{charm}/src/charm.py is mode {listing[0]} in git"


@pytest.mark.parametrize("charm", CHARMS)
def test_packed_entry_points_are_executable(charm: str):
    with zipfile.ZipFile(packed_charm(charm)) as archive:
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
        dispatch = archive.read("dispatch").decode()
    for name in ("dispatch", "src/charm.py"):
        assert name in modes, f"{name} is not in the packed {charm} charm"
        assert modes[name] & stat.S_IXUSR, (
            f"{name} is mode {oct(modes[name])} in the {charm} charm"
        )
    assert "./src/charm.py" in dispatch


@pytest.mark.parametrize("charm", CHARMS)
def test_pins_agree_with_the_constraints(charm: str):
    constraints = pins(REPO / "requirements" / "constraints.txt")
    wanted = pins(REPO / "charms" / charm / "requirements.txt")
    assert wanted, f"charms/{charm}/requirements.txt pins nothing"
    for name, version in wanted.items():
        assert constraints.get(name) == version, (
            f"{name}: {charm} pins {version}, constraints {constraints.get(name)}"
        )
    part = yaml.safe_load((REPO / "charms" / charm / "charmcraft.yaml").read_text())["parts"][
        "charm"
    ]
    assert part["charm-strict-dependencies"] is True
    binary = {canonicalize_name(name) for name in part["charm-binary-python-packages"]}
    assert binary == set(wanted), "every pinned package, and only those, may come as a wheel"


@pytest.mark.parametrize("charm", CHARMS)
def test_packed_venv_is_what_was_pinned_for_python_312(charm: str):
    with zipfile.ZipFile(packed_charm(charm)) as archive:
        names = archive.namelist()
        libraries = {
            n: archive.read(n).decode() for n in names if re.fullmatch(r"lib/charms/.+\.py", n)
        }
    installed: dict[str, str] = {}
    for name in names:
        match = re.fullmatch(r"venv/([^/]+)-([^/-]+)\.dist-info/METADATA", name)
        if match:
            installed[canonicalize_name(match.group(1))] = match.group(2)
    # Besides the pins, only the pip that charmcraft's charm builder put in its staging venv.
    assert installed.pop("pip", None) is not None
    assert installed == pins(REPO / "charms" / charm / "requirements.txt")
    extensions = [n for n in names if n.endswith(".so")]
    assert extensions, "expected compiled wheels (msgspec, pyyaml) in the venv"
    assert all("cpython-312" in n for n in extensions), extensions

    # What charmcraft's pydeps linter cannot check on this layout: every PYDEPS is satisfied.
    assert libraries, "the shared library is not in the packed charm"
    for path, source in libraries.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "PYDEPS" for t in node.targets
            ):
                for requirement in ast.literal_eval(node.value):
                    match = re.fullmatch(r"([A-Za-z0-9_.-]+)(.*)", requirement)
                    assert match is not None, f"{path}: PYDEPS entry {requirement!r}"
                    name, spec = match.groups()
                    version = installed.get(canonicalize_name(name))
                    assert version is not None, f"{path} needs {name}, not in the venv"
                    assert version in SpecifierSet(spec), (
                        f"{path} needs {requirement}, venv has {version}"
                    )
