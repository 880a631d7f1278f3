"""Text from relation data and from Kubernetes, made safe to show in a status, log or result.

The library escapes what it shows the same way, privately: a consumer charm vendors the library
alone, so the beacon keeps its own copy here rather than reaching into the library's internals.
"""

from __future__ import annotations

import json

#: Characters of one value shown to people when no other limit is given.
MAX_DISPLAY_LENGTH = 64


def display_text(value: object, limit: int = MAX_DISPLAY_LENGTH, *, quote: bool = True) -> str:
    """``value`` as at most ``limit`` printable characters, quoted unless ``quote`` is false.

    Control, format and unassigned characters (newlines, terminal escapes, bidirectional
    overrides, lone surrogates) are shown as escapes; a value too long is cut, followed by the
    count of the characters left out; with ``quote``, double quotes and backslashes are escaped
    and the whole put in double quotes, so that it cannot pass for the message around it. A value
    that is not a string shows as its JSON (scalars) or its type's name.
    """
    text = _as_text(value)
    limit = max(limit, 0)
    pieces = [_escaped(char, quote) for char in text[:limit]]
    room = limit - (2 if quote else 0)  # the quotes count towards the limit
    if len(text) <= limit and sum(map(len, pieces)) <= room:
        return _quoted("".join(pieces), quote)
    room -= len(f"... (+{len(text)} more)")
    kept = used = 0
    while kept < len(pieces) and used + len(pieces[kept]) <= room:
        used += len(pieces[kept])
        kept += 1
    return f"{_quoted(''.join(pieces[:kept]), quote)}... (+{len(text) - kept} more)"


def _as_text(value: object) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        bits = value.bit_length()
        return str(value) if bits < 64 else f"an integer of {bits} bits"
    if isinstance(value, float):
        return repr(value)
    return type(value).__name__


def _quoted(body: str, quote: bool) -> str:
    return f'"{body}"' if quote else body


def _escaped(char: str, quote: bool) -> str:
    if quote and char in '"\\':
        return "\\" + char
    if char.isprintable():
        return char
    if char == "\n":
        return "\\n"
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
