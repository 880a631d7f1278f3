"""Property-based tests of the parsers: whatever the other side writes, only MeshDataError.

Bounded example counts (see ``SETTINGS``) keep the unit tier fast; hypothesis keeps no example
database in the repository.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from charms.istio_beacon_k8s.v0.service_mesh import (
    _JSON_STRING,
    _MAX_DISPLAY_LENGTH,
    CMRData,
    Endpoint,
    MeshDataError,
    MeshPolicy,
    ServiceMeshProviderAppData,
    _display_text,
    _load_json,
    _plain_endpoint,
    parse_policies,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SETTINGS = settings(
    max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
# What can be a Kubernetes service account (DNS-1123 subdomain) and namespace (DNS-1123 label),
# written here independently of the library's patterns.
_LABEL = r"[a-z0-9]([a-z0-9-]*[a-z0-9])?"
SERVICE_ACCOUNT = re.compile(rf"{_LABEL}(\.{_LABEL})*\Z")
NAMESPACE = re.compile(rf"{_LABEL}\Z")


def _is_service_account(name: str) -> bool:
    return (
        bool(SERVICE_ACCOUNT.match(name))
        and len(name) <= 253
        and all(len(part) <= 63 for part in name.split("."))
    )


def _is_namespace(name: str) -> bool:
    return bool(NAMESPACE.match(name)) and len(name) <= 63


HOSTILE_TEXT = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["*", "a*", "*/sa/*", "\ud800", "x\udfff", "\x1b[31m", "a\nb", "\u202e", "victim", ""]
    ),
    st.integers(0, 3000).map(lambda n: "v" * n),
)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | HOSTILE_TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(HOSTILE_TEXT, children, max_size=4)
    ),
    max_leaves=25,
)


def _valid_policy() -> dict[str, Any]:
    return {
        "source_namespace": "model-a",
        "source_app_name": "sender",
        "target_namespace": "model-a",
        "target_app_name": "receiver",
        "target_selector_labels": None,
        "target_service": None,
        "target_type": "app",
        "endpoints": [{"hosts": None, "ports": [8080], "methods": ["GET"], "paths": ["/a"]}],
    }


@st.composite
def mutated_policies(draw: st.DrawFn) -> str:
    """A list of valid policies, some of whose fields (or endpoint fields) are replaced."""
    policies: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(1, 3))):
        policy = _valid_policy()
        for key in draw(st.sets(st.sampled_from(sorted(policy)), max_size=3)):
            policy[key] = draw(JSON_VALUES)
        if draw(st.booleans()):
            endpoint = {"hosts": None, "ports": [80], "methods": None, "paths": None}
            for key in draw(st.sets(st.sampled_from(sorted(endpoint)), max_size=2)):
                endpoint[key] = draw(JSON_VALUES)
            policy["endpoints"] = [endpoint]
        if draw(st.booleans()):
            policy[draw(HOSTILE_TEXT)] = draw(JSON_VALUES)
        policies.append(policy)
    return json.dumps(policies)


RAW = st.one_of(
    mutated_policies(),
    JSON_VALUES.map(json.dumps),
    st.text(max_size=200),
    st.integers(0, 5000).map(lambda n: "[" * n + "]" * n),
    st.integers(0, 6000).map(lambda n: "[" + "9" * n + "]"),
)


@SETTINGS
@given(RAW)
def test_parse_policies_raises_only_mesh_data_error(raw: str):
    try:
        policies = parse_policies(raw)
    except MeshDataError as error:
        _display_text(str(error)).encode("utf-8")
        return
    for policy in policies:
        assert isinstance(policy, MeshPolicy)
        # Sources that reach a principal are Kubernetes names: never a pattern, a path, a space.
        assert _is_service_account(policy.source_app_name), policy.source_app_name
        assert _is_namespace(policy.source_namespace), policy.source_namespace
        json.dumps(policy.to_dict()).encode("utf-8")
        assert all(
            text.isprintable()
            for endpoint in policy.endpoints
            for text in (endpoint.paths or []) + (endpoint.hosts or [])
        )


@SETTINGS
@given(JSON_VALUES, st.booleans())
def test_cmr_data_raises_only_mesh_data_error(value: object, as_text: bool):
    try:
        claim = CMRData.from_dict(
            _load_json(json.dumps(value), "cmr_data", 16384) if as_text else value
        )
    except MeshDataError:
        return
    assert _is_service_account(claim.app_name)
    assert _is_namespace(claim.juju_model_name)


@SETTINGS
@given(st.dictionaries(st.sampled_from(["labels", "mesh_type", "x"]), RAW, max_size=3))
def test_provider_data_raises_only_mesh_data_error(databag: dict[str, str]):
    try:
        data = ServiceMeshProviderAppData.load(databag)
    except MeshDataError:
        return
    assert all(isinstance(v, str) and v.isprintable() for v in data.labels.values())


@SETTINGS
@given(JSON_VALUES, st.integers(0, 200), st.booleans())
def test_display_text_is_always_safe(value: object, limit: int, quote: bool):
    shown = _display_text(value, limit, quote=quote)
    shown.encode("utf-8")
    assert shown.isprintable()
    assert len(shown) <= max(limit, 40)
    assert len(_display_text(value)) <= _MAX_DISPLAY_LENGTH


# Paths near the edges of what Istio matches: dots, '%', '*', templates, '?', spaces, non-ASCII.
PATHS = st.text(alphabet="/a.%2e*{}?# ~-_é\x7f", max_size=12) | st.sampled_from(
    ["/", "*", "/a/*", "/a*", "*.js", "/.well-known", "/a/..", "//", "/%41", "/{*}/b", ""]
)
ENDPOINT_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "hosts": st.none() | st.lists(st.sampled_from(["a.example", "*", "a b", 1]), max_size=2),
        "ports": st.none()
        | st.lists(st.integers(-1, 70000) | st.booleans() | st.just("80"), max_size=3)
        | st.just({}),
        "methods": st.none()
        | st.lists(st.sampled_from(["GET", "get", "POST", "BREW", 1, None]), max_size=3)
        | st.just("GET"),
        "paths": st.none() | st.lists(PATHS, max_size=3) | st.lists(PATHS, min_size=65),
    },
)


@SETTINGS
@given(ENDPOINT_BODIES)
def test_the_quick_endpoint_parse_accepts_only_what_the_full_checks_accept(body: dict[str, Any]):
    # The constructor runs every check of the wire form, with its own wording of the field.
    try:
        expected: Endpoint | None = Endpoint(**body)
    except MeshDataError:
        expected = None
    quick = _plain_endpoint(body)
    if quick is not None:
        assert expected is not None, f"the quick parse accepted {body!r}"
        assert quick == expected
        assert quick.model_fields_set == {"hosts", "ports", "methods", "paths"}
    try:
        parsed = Endpoint.from_dict(body)
    except MeshDataError:
        assert expected is None
    else:
        assert parsed == expected


NUMBERS = st.integers() | st.floats(allow_nan=True, allow_infinity=True)


@SETTINGS
@given(st.lists(NUMBERS, max_size=4), st.sampled_from(["", "0" * 30, "-" + "1" * 24]))
def test_numbers_are_bounded_whichever_way_the_text_is_parsed(
    numbers: list[float], raw_number: str
):
    text = json.dumps({"n": numbers, "s": "NaN 1e99999999999999999999999"})
    if raw_number:
        text = text.replace('"n"', f'"m": {raw_number}, "n"')
    tokens = re.findall(r"[-+.0-9eE]+|NaN|Infinity", text.split('"s"')[0])
    refused = any(len(token) > 24 or token in ("NaN", "Infinity") for token in tokens)
    if refused:
        with pytest.raises(MeshDataError):
            _load_json(text, "policies", 10_000)
    else:
        assert _load_json(text, "policies", 10_000) == json.loads(text)


# Text made of what a string scan can trip on: quotes, backslashes, brackets and a letter.
STRING_SCAN_TEXT = st.text(alphabet='"\\[]{}a\n', max_size=60)


@settings(max_examples=300, deadline=None, database=None)
@given(STRING_SCAN_TEXT)
def test_the_string_scan_before_parsing_is_linear(text: str):
    """Every quote where a match starts ends a match, without backtracking past it.

    A match from an opening quote reads on to the closing quote or to the end of the text (a
    lone backslash there included), so the scan of a hostile value reads each character a
    bounded number of times. A pattern that fails from an opening quote instead (an
    unterminated string) is tried again from each escaped quote inside it: quadratic, minutes
    for a value at the size limit.
    """
    for start, char in enumerate(text):
        if char == '"':
            assert _JSON_STRING.match(text, start) is not None, (text, start)
    # And a complete string is still one match, ending at its closing quote.
    quoted = json.dumps(text)
    match = _JSON_STRING.match(quoted)
    assert match is not None
    assert match.end() == len(quoted)
