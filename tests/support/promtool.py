"""Prometheus's own rule checker and rule unit tests, through promtool (built by tools/promtool).

``Promtool.build()`` builds promtool from the pinned ``github.com/prometheus/prometheus`` Go module
(cached by version; the first build takes about 5 minutes) and fails, never skips, when it
cannot. ``test_rules`` runs ``promtool test rules`` (Prometheus's rule evaluation, alert states
and templating, on the series a test declares); ``check_rules`` runs ``promtool check rules``
(parses every expression).

``series_from_exposition`` turns a scrape (Prometheus's text format, as Envoy's
``/stats/prometheus`` serves it) into promtool input series, so that rules are evaluated on the
names and labels a real process exported.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "tools" / "promtool" / "build.sh"


# ---------------------------------------------------------------------------------------------
# The beacon as Prometheus sees it
# ---------------------------------------------------------------------------------------------

MODEL = "mesh-model"
MODEL_UUID = "7a3c1e52-0c4f-4b6e-9d2a-3f5e8b1c0d9e"
APP = "istio-beacon-k8s"
CHARM = "istio-beacon-k8s"
#: The labels Prometheus gives every series it scrapes from a beacon unit (the prometheus_scrape
#: consumer's relabelling of the job, from the Juju topology the beacon published).
RULE_LABELS = {
    "juju_model": MODEL,
    "juju_model_uuid": MODEL_UUID,
    "juju_application": APP,
    "juju_charm": CHARM,
}


def target_labels(unit: int = 0) -> dict[str, str]:
    """What Prometheus adds to each series scraped from beacon unit ``unit``'s metrics proxy."""
    return {
        **RULE_LABELS,
        "juju_unit": f"{APP}/{unit}",
        "instance": f"{MODEL}_{MODEL_UUID[:8]}_{APP}_{APP}/{unit}",
        "job": f"juju_{MODEL}_{MODEL_UUID[:8]}_{APP}_prometheus_scrape",
    }


def beacon_topology() -> Any:
    """The beacon's Juju topology (a ``cosl.JujuTopology``), as its unit 0 computes it."""
    from cosl import JujuTopology

    return JujuTopology(MODEL, MODEL_UUID, APP, f"{APP}/0", CHARM)


class PromtoolError(RuntimeError):
    """promtool could not be built, or refused what it was given."""


@dataclass(frozen=True)
class Promtool:
    """A built promtool."""

    binary: Path

    @classmethod
    def build(cls) -> Promtool:
        """Build promtool, or find it in the cache; fails (never skips) when it cannot."""
        return _built()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run promtool with ``args``; the caller reads the exit code and the output."""
        return subprocess.run(
            [str(self.binary), *args], capture_output=True, text=True, timeout=300, check=False
        )

    def check_rules(self, rules: Mapping[str, Any]) -> None:
        """``promtool check rules`` on a rule file; raises with promtool's words if it fails."""
        with tempfile.TemporaryDirectory(prefix="promtool-") as tmp:
            path = Path(tmp) / "rules.yaml"
            path.write_text(yaml.safe_dump(dict(rules), sort_keys=False))
            done = self.run("check", "rules", str(path))
        if done.returncode != 0:
            raise PromtoolError(f"promtool check rules failed:\n{done.stdout}{done.stderr}")

    def test_rules(
        self, rules: Mapping[str, Any], tests: Sequence[Mapping[str, Any]], interval: str = "1m"
    ) -> str:
        """``promtool test rules`` of ``tests`` (promtool's test cases) against ``rules``.

        Returns promtool's output; raises with it when any test fails.
        """
        with tempfile.TemporaryDirectory(prefix="promtool-") as tmp:
            folder = Path(tmp)
            (folder / "rules.yaml").write_text(yaml.safe_dump(dict(rules), sort_keys=False))
            suite = {
                "rule_files": ["rules.yaml"],
                "evaluation_interval": interval,
                "tests": [dict(test) for test in tests],
            }
            (folder / "tests.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
            done = self.run("test", "rules", str(folder / "tests.yaml"))
        output = done.stdout + done.stderr
        if done.returncode != 0:
            raise PromtoolError(f"promtool test rules failed:\n{output}")
        return output


def without_annotations(rules: Mapping[str, Any]) -> dict[str, Any]:
    """The rules without annotations, for tests about when alerts fire and with which labels.

    promtool compares an alert's annotations too, with none when a test expects none.
    """
    stripped = copy.deepcopy(dict(rules))
    for group in stripped["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    return stripped


@functools.cache
def _built() -> Promtool:
    done = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=3600, check=False
    )
    if done.returncode != 0:
        raise PromtoolError(
            f"tools/promtool/build.sh failed ({done.returncode}):\n{done.stderr[-4000:]}"
        )
    folder = Path(done.stdout.strip().splitlines()[-1])
    tool = Promtool(folder / "promtool")
    if not tool.binary.is_file():
        raise PromtoolError(f"build.sh printed {folder}, which holds no promtool")
    return tool


# ---------------------------------------------------------------------------------------------
# From a scrape to promtool's input series
# ---------------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\d+)?$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


@dataclass(frozen=True)
class Sample:
    """One sample of a scrape: the metric's name, its labels, its value."""

    name: str
    labels: tuple[tuple[str, str], ...]
    value: float

    @property
    def key(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What identifies the series: the name and the sorted labels."""
        return self.name, self.labels


def parse_exposition(text: str) -> list[Sample]:
    """The samples of a scrape in Prometheus's text format (comments and blank lines skipped)."""
    samples: list[Sample] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            raise ValueError(f"not a sample line: {line!r}")
        name, braces, value = match.group(1), match.group(2), match.group(3)
        labels: dict[str, str] = {}
        if braces:
            inner = braces[1:-1]
            position = 0
            while position < len(inner):
                pair = _LABEL.match(inner, position)
                if pair is None:
                    raise ValueError(f"cannot read the labels of {line!r}")
                raw = pair.group(2)
                labels[pair.group(1)] = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m.group()], raw)
                position = pair.end()
        samples.append(Sample(name, tuple(sorted(labels.items())), float(value)))
    return samples


def selector(name: str, labels: Mapping[str, str]) -> str:
    """The series ``name{labels}`` as promtool's input series write it."""
    inner = ", ".join(f"{key}={json.dumps(value)}" for key, value in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def series_from_exposition(
    scrapes: Sequence[str], target_labels: Mapping[str, str], repeat_last: int = 0
) -> list[dict[str, str]]:
    """Promtool input series from successive scrapes of one target, one interval apart.

    Each series gets ``target_labels`` as Prometheus adds its target's labels; a series missing
    from a scrape is stale there (``_``). The last scrape's values are repeated ``repeat_last``
    more times (a process that saw nothing new).
    """
    parsed = [{sample.key: sample.value for sample in parse_exposition(text)} for text in scrapes]
    keys = sorted({key for scrape in parsed for key in scrape})
    series: list[dict[str, str]] = []
    for name, labels in keys:
        values = [
            _number(scrape[(name, labels)]) if (name, labels) in scrape else "_"
            for scrape in parsed
        ]
        values += [values[-1]] * repeat_last
        series.append(
            {
                "series": selector(name, {**dict(labels), **target_labels}),
                "values": " ".join(values),
            }
        )
    return series


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "_"  # promtool's series notation has no NaN; no rule reads those series
    return str(int(value)) if value == int(value) else repr(value)


# ---------------------------------------------------------------------------------------------
# Which metrics an expression reads
# ---------------------------------------------------------------------------------------------

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_SET_OPERATORS = {"and", "or", "unless"}


def metric_names(expr: str) -> set[str]:
    """The metric names an expression's selectors read (``up``, ``envoy_http_rbac``...).

    A reader for the expressions written here, not a PromQL parser: promtool parses them (the
    tests run ``check_rules`` on the same expressions, so one that this misreads does not parse).
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges
    grouping = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)"
    text = re.sub(grouping, " ", text)
    names: set[str] = set()
    for match in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group()
        following = text[match.end() :].lstrip()
        if following.startswith("("):
            continue  # a function or an aggregation
        if word in _KEYWORDS or word in _SET_OPERATORS:
            continue
        if re.fullmatch(r"\d+[smhdwy]", word) or word in {"e", "Inf", "NaN"}:
            continue
        names.add(word)
    return names
