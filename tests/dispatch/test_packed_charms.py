"""What the packed charms are made of: what Juju will execute, and what their venv holds.

Every check of a ``.charm`` runs for each charm and base (ubuntu@22.04 and ubuntu@24.04): each
base has its own ``.charm``, whose venv is built for that base's Python.
"""

from __future__ import annotations

import ast
import itertools
import re
import stat
import subprocess
import tempfile
import zipfile
from pathlib import Path

import pytest
import yaml
from conftest import BASES, REPO, packed_charm
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from support.juju_unit_agent import BASE_PYTHONS, find_python, unpack_charm

CHARMS = ("beacon", "tester")
CHARMS_AND_BASES = pytest.mark.parametrize(
    ("charm", "base"), list(itertools.product(CHARMS, BASES))
)
# What the charms import that is compiled: built for one CPython each, so a venv packed for the
# wrong Python fails to import them.
COMPILED = ("msgspec._core", "yaml._yaml")


def pins(path: Path, python: str) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by canonical name, as pip reads them.

    On ``python`` (a base's: 3.10 or 3.12): a pin whose marker excludes that Python is left out.
    """
    environment = {"python_version": python, "python_full_version": f"{python}.0"}
    result: dict[str, str] = {}
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if "==" not in line:
            continue
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate(environment):
            continue
        (specifier,) = requirement.specifier
        name = canonicalize_name(requirement.name)
        assert result.get(name, specifier.version) == specifier.version, (
            f"{path}: two pins of {name} for Python {python}"
        )
        result[name] = specifier.version
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


@CHARMS_AND_BASES
def test_packed_entry_points_are_executable(charm: str, base: str):
    with zipfile.ZipFile(packed_charm(charm, base)) as archive:
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
        dispatch = archive.read("dispatch").decode()
    for name in ("dispatch", "src/charm.py"):
        assert name in modes, f"{name} is not in the packed {charm} charm"
        assert modes[name] & stat.S_IXUSR, (
            f"{name} is mode {oct(modes[name])} in the {charm} charm"
        )
    assert "./src/charm.py" in dispatch


@pytest.mark.parametrize("charm", CHARMS)
def test_both_bases_are_platforms(charm: str):
    # The deployed istio-beacon-k8s is ubuntu@22.04: `juju refresh --path` from it needs a charm
    # that supports 22.04 (docs/beacon.md, "Bases"); 24.04 is what new deployments get.
    project = yaml.safe_load((REPO / "charms" / charm / "charmcraft.yaml").read_text())
    assert "base" not in project, "a multi-base charm names its bases in platforms only"
    assert project["platforms"] == {
        f"ubuntu-{base}-amd64": {
            "build-on": [f"ubuntu@{base}:amd64"],
            "build-for": [f"ubuntu@{base}:amd64"],
        }
        for base in BASES
    }


@pytest.mark.parametrize("python", sorted(set(BASE_PYTHONS.values())))
@pytest.mark.parametrize("charm", CHARMS)
def test_pins_agree_with_the_constraints(charm: str, python: str):
    constraints = pins(REPO / "requirements" / "constraints.txt", python)
    wanted = pins(REPO / "charms" / charm / "requirements.txt", python)
    assert wanted, f"charms/{charm}/requirements.txt pins nothing"
    for name, version in wanted.items():
        assert constraints.get(name) == version, (
            f"{name}: {charm} pins {version} for Python {python}, "
            f"constraints {constraints.get(name)}"
        )
    part = yaml.safe_load((REPO / "charms" / charm / "charmcraft.yaml").read_text())["parts"][
        "charm"
    ]
    assert part["charm-strict-dependencies"] is True
    binary = {canonicalize_name(name) for name in part["charm-binary-python-packages"]}
    every_pin = set().union(
        *(pins(REPO / "charms" / charm / "requirements.txt", p) for p in BASE_PYTHONS.values())
    )
    assert binary == every_pin, "every pinned package, and only those, may come as a wheel"


@CHARMS_AND_BASES
def test_packed_for_its_base(charm: str, base: str):
    # Juju reads the bases a charm supports from its manifest: one base per .charm.
    with zipfile.ZipFile(packed_charm(charm, base)) as archive:
        manifest = yaml.safe_load(archive.read("manifest.yaml"))
    assert manifest["bases"] == [{"name": "ubuntu", "channel": base, "architectures": ["amd64"]}]


@CHARMS_AND_BASES
def test_packed_venv_imports_on_its_bases_python_only(charm: str, base: str):
    python = BASE_PYTHONS[base]
    (other,) = set(BASE_PYTHONS.values()) - {python}
    with tempfile.TemporaryDirectory() as folder:
        unpack_charm(packed_charm(charm, base), Path(folder))
        environment = {"PYTHONPATH": f"{folder}/venv:{folder}/lib", "PATH": "/usr/bin:/bin"}

        def run(version: str, *modules: str) -> subprocess.CompletedProcess[str]:
            script = "; ".join(f"import {module}" for module in modules)
            return subprocess.run(
                [find_python(version), "-s", "-c", script],
                capture_output=True,
                text=True,
                env=environment,
                check=False,
            )

        library = "charms.istio_beacon_k8s.v0.service_mesh"
        on_its_python = run(python, "ops", "lightkube", library, *COMPILED)
        on_the_other = {module: run(other, module) for module in COMPILED}
    assert on_its_python.returncode == 0, on_its_python.stderr
    # The compiled modules are built for the base's Python: the other base's cannot load them.
    for module, ran in on_the_other.items():
        assert f"No module named '{module}'" in ran.stderr, (module, other, ran.stderr)


@CHARMS_AND_BASES
def test_packed_venv_is_what_was_pinned_for_its_python(charm: str, base: str):
    python = BASE_PYTHONS[base]
    with zipfile.ZipFile(packed_charm(charm, base)) as archive:
        names = archive.namelist()
        libraries = {
            n: archive.read(n).decode() for n in names if re.fullmatch(r"lib/charms/.+\.py", n)
        }
    installed: dict[str, str] = {}
    for name in names:
        match = re.fullmatch(r"venv/([^/]+)-([^/-]+)\.dist-info/METADATA", name)
        if match:
            installed[canonicalize_name(match.group(1))] = match.group(2)
    # Besides the pins, only what `python3 -m venv` seeded in charmcraft's staging venv: pip, and
    # below Python 3.12 setuptools too (ubuntu@22.04's venv seeds it; 3.12's no longer does).
    assert installed.pop("pip", None) is not None
    seeded_setuptools = installed.pop("setuptools", None)
    below_312 = tuple(int(part) for part in python.split(".")) < (3, 12)
    assert (seeded_setuptools is not None) == below_312, seeded_setuptools
    assert installed == pins(REPO / "charms" / charm / "requirements.txt", python)
    extensions = [n for n in names if n.endswith(".so")]
    assert extensions, "expected compiled wheels (msgspec, pyyaml) in the venv"
    tag = f"cpython-{python.replace('.', '')}"
    assert all(tag in n for n in extensions), extensions

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
