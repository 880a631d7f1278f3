"""The beacon's own escaping of shown text (display.py): safe, and the same as the library's.

The library keeps its copy private (consumer charms vendor it alone); the beacon's statuses, logs
and action results must escape exactly as the library's messages do.
"""

from __future__ import annotations

from charms.istio_beacon_k8s.v0.service_mesh import _display_text as library_display_text
from display import MAX_DISPLAY_LENGTH, display_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

TEXT = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["\ud800", "x\udfff", "\x1b[31m", "a\nb", "\u202e", '"q"\\', ""]),
    st.integers(0, 3000).map(lambda n: "v" * n),
)
VALUES = st.one_of(
    TEXT, st.none(), st.booleans(), st.integers(), st.floats(), st.lists(st.integers())
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(VALUES, st.integers(-5, 250), st.booleans())
def test_the_beacon_shows_text_as_the_library_does(value: object, limit: int, quote: bool):
    shown = display_text(value, limit, quote=quote)
    assert shown == library_display_text(value, limit, quote=quote)
    assert shown.isprintable()
    assert len(shown) <= max(limit, 40)


def test_escapes_quotes_and_cuts():
    assert display_text("plain") == '"plain"'
    assert display_text('say "hi"\n', quote=True) == '"say \\"hi\\"\\n"'
    assert display_text("a\x1b[31m\u202e", quote=False) == "a\\x1b[31m\\u202e"
    long = display_text("x" * 1000)
    assert len(long) <= MAX_DISPLAY_LENGTH
    assert long.endswith("more)")
    assert display_text(2**70) == '"an integer of 71 bits"'
    assert display_text([1]) == '"list"'
