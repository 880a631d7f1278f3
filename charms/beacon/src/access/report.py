"""Lay out the access map and explanations: table, JSON, Mermaid, Graphviz dot, and words.

Names and reasons come from relation data and from objects anybody may create: every string is
escaped (control and invisible characters shown as escapes) and bounded before it is shown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from typing import Any

from display import display_text

from access.map import AccessMap, Explanation, Grant
from access.model import Decision, Level, Point

FORMATS = ("table", "json", "mermaid", "dot")
#: The longest text shown for one value (an app name, a reason, a path list).
MAX_TEXT = 200


def safe_text(value: object, limit: int = MAX_TEXT) -> str:
    """``value`` as one printable line of at most ``limit`` characters (unquoted).

    :func:`display.display_text` (control, format and invisible characters escaped, long text
    cut with the count of the rest): relation data and foreign objects reach the operator's
    terminal through it.
    """
    return display_text(value, limit, quote=False)


def _join(values: Sequence[str], empty: str = "*") -> str:
    return safe_text(",".join(values)) if values else empty


def _node(grant: Grant, model: str) -> str:
    """A grant's source as a graph node: ``app`` in this model, ``app/model`` in another."""
    if grant.source_model and grant.source_model != model:
        return safe_text(f"{grant.source}/{grant.source_model}")
    return safe_text(grant.source)


def _granted_by(grant: Grant) -> str:
    if grant.foreign:
        return "not made by the beacon"
    if grant.waypoint_access:
        return safe_text(f"the beacon, for {grant.requested_by}'s Service")
    if grant.requested_by is None:
        return "the beacon"
    relation = "?" if grant.relation_id is None else str(grant.relation_id)
    return safe_text(
        f"{grant.requested_by} over relation {relation} ({grant.endpoint or 'service-mesh'})"
    )


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    rows = [list(row) for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines


def format_table(access: AccessMap) -> str:
    """The access map as text tables, for a terminal."""
    lines = [f"model {safe_text(access.model)}, waypoint {safe_text(access.waypoint)}", ""]
    lines.append("Granted access")
    if access.grants:
        rows: list[list[str]] = []
        for index, grant in enumerate(access.grants, 1):
            rows.append(
                [
                    str(index),
                    safe_text(grant.source),
                    safe_text(grant.source_model or "-"),
                    safe_text(grant.target),
                    grant.level,
                    _join(grant.ports),
                    _join(grant.methods),
                    _join(grant.paths),
                    _join(grant.hosts),
                    safe_text(grant.policy, 80),
                    _granted_by(grant),
                ]
            )
        headers = ["#", "SOURCE", "MODEL", "TARGET", "LEVEL", "PORTS", "METHODS", "PATHS", "HOSTS"]
        lines += _table([*headers, "POLICY", "GRANTED BY"], rows)
        notes = [
            f"  #{index}: {safe_text(text)}"
            for index, grant in enumerate(access.grants, 1)
            for text in (*grant.excluded, *grant.caveats)
        ]
        if notes:
            lines += ["", "Notes on granted access", *notes]
    else:
        lines.append("  (none)")
    lines += ["", "Refused requests"]
    if access.refused:
        lines += _table(
            ["APP", "RELATION", "REASON"],
            [[safe_text(r.app), str(r.relation_id), safe_text(r.reason)] for r in access.refused],
        )
        # What holds meanwhile: the last accepted policies, or nothing (the app is open).
        lines += [f"  {safe_text(r.app)}: {safe_text(r.in_force)}" for r in access.refused]
    else:
        lines.append("  (none)")
    if access.pending:
        lines += ["", "Accepted but not applied", *(f"  {safe_text(p)}" for p in access.pending)]
    lines += ["", "Apps"]
    lines += _table(
        ["APP", "MESH", "SERVICE"],
        [[safe_text(a.app), "on" if a.on_mesh else "off", a.waypoint] for a in access.apps],
    )
    lines += ["", "Policies the beacon did not make"]
    if access.foreign:
        lines += _table(
            ["NAME", "ACTION", "EFFECT", "APPLIES TO", "DETAIL"],
            [
                [
                    safe_text(f.name, 80),
                    f.action,
                    f.effect,
                    _join(f.targets, "-") + (f" ({f.level})" if f.level else ""),
                    safe_text(f.detail),
                ]
                for f in access.foreign
            ],
        )
    else:
        lines.append("  (none)")
    return "\n".join(lines)


def _bounded(value: object) -> object:
    if isinstance(value, str):
        return value if len(value) <= MAX_TEXT else f"{value[: MAX_TEXT - 12]}...(+{len(value)})"
    if isinstance(value, (list, tuple)):
        return [_bounded(item) for item in value]
    if isinstance(value, dict):
        return {k: _bounded(v) for k, v in value.items()}
    return value


def format_json(access: AccessMap) -> str:
    """The access map as JSON (strings bounded; JSON escapes the rest)."""
    return json.dumps(_bounded(asdict(access)), sort_keys=True)


def _mermaid_text(value: object) -> str:
    text = safe_text(value, 120)
    for char, entity in (("#", "#35;"), ('"', "#quot;"), ("<", "#lt;"), (">", "#gt;")):
        text = text.replace(char, entity)
    return text


def _edge_label(grant: Grant) -> str:
    parts = [grant.level]
    if grant.ports:
        parts.append(",".join(grant.ports))
    parts += [",".join(values) for values in (grant.methods, grant.paths, grant.hosts) if values]
    return " ".join(parts)


def _edges(access: AccessMap) -> dict[tuple[str, str, bool], list[str]]:
    """Grants merged per (source, target, foreign): the labels of each edge."""
    edges: dict[tuple[str, str, bool], list[str]] = {}
    for grant in access.grants:
        key = (_node(grant, access.model), safe_text(grant.target), grant.foreign)
        label = _edge_label(grant)
        if grant.foreign:
            label += f" ({grant.policy}, not made by the beacon)"
        labels = edges.setdefault(key, [])
        if label not in labels:
            labels.append(label)
    return edges


def format_mermaid(access: AccessMap) -> str:
    """The access map as a Mermaid flowchart (GitHub renders it in a ```mermaid block).

    Solid arrows: access the beacon granted; dotted: granted by a policy it did not make.
    Grey boxes: apps off the mesh (nothing enforced there).
    """
    ids: dict[str, str] = {}

    def node(name: str) -> str:
        if name not in ids:
            ids[name] = f"n{len(ids)}"
        return ids[name]

    off = {safe_text(a.app) for a in access.apps if not a.on_mesh}
    for app in access.apps:
        node(safe_text(app.app))
    edges = _edges(access)
    body: list[str] = []
    for (source, target, foreign), labels in edges.items():
        arrow = "-.->" if foreign else "-->"
        text = _mermaid_text("; ".join(labels))
        body.append(f'    {node(source)} {arrow}|"{text}"| {node(target)}')
    lines = ["flowchart LR"]
    lines += [f'    {ident}["{_mermaid_text(name)}"]' for name, ident in ids.items()]
    lines += body
    lines.append("    classDef offmesh fill:#eee,stroke:#999,stroke-dasharray:3 3")
    lines += [f"    class {ids[name]} offmesh" for name in sorted(off) if name in ids]
    return "\n".join(lines)


def _dot_text(value: object) -> str:
    return safe_text(value, 120).replace("\\", "\\\\").replace('"', '\\"')


def format_dot(access: AccessMap) -> str:
    """The access map as a Graphviz digraph (dashed: policies the beacon did not make)."""
    lines = ["digraph access {", "    rankdir=LR;", "    node [shape=box];"]
    for app in access.apps:
        style = "" if app.on_mesh else ", style=dashed, color=grey"
        lines.append(f'    "{_dot_text(app.app)}" [label="{_dot_text(app.app)}"{style}];')
    for (source, target, foreign), labels in _edges(access).items():
        style = ", style=dashed" if foreign else ""
        lines.append(
            f'    "{_dot_text(source)}" -> "{_dot_text(target)}" '
            f'[label="{_dot_text("; ".join(labels))}"{style}];'
        )
    lines.append("}")
    return "\n".join(lines)


def format_map(access: AccessMap, fmt: str) -> str:
    """The access map in ``fmt`` (one of :data:`FORMATS`)."""
    formatters = {
        "table": format_table,
        "json": format_json,
        "mermaid": format_mermaid,
        "dot": format_dot,
    }
    if fmt not in formatters:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {safe_text(fmt, 40)}")
    return formatters[fmt](access)


_POINTS = {
    Point.mesh: "enrolment",
    Point.waypoint: "waypoint (L7, the Service's policies)",
    Point.ztunnel: "ztunnel (L4, in front of the pods)",
}


def format_explanation(explanation: Explanation) -> str:
    """The verdict and the chain behind it, in words."""
    request = explanation.request
    how = "through its Service" if request.level is Level.app else "straight to its pods"
    asked = [f"port {request.port}"]
    asked += [
        f"{name} {safe_text(value, 80)}"
        for name, value in (("method", request.method), ("path", request.path),
                            ("host", request.host))
        if value is not None
    ]  # fmt: skip
    verdict = explanation.verdict
    lines = [
        f"{safe_text(explanation.source, 80)} -> {safe_text(request.target, 80)} {how}, "
        f"{', '.join(asked)}: {verdict.decision.value.upper()}",
    ]
    deciding = verdict.deciding_step
    for index, step in enumerate(verdict.steps, 1):
        reason = safe_text(step.reason, 400)
        mark = "*" if len(verdict.steps) > 1 and step is deciding else ""
        lines.append(f"  {index}.{mark} {_POINTS[step.point]}: {step.decision.value}: {reason}")
    if len(verdict.steps) > 1:
        lines.append("  *: the step that decides for this caller; the others support it")
    for note in (*explanation.notes, *verdict.notes):
        lines.append(f"  note: {safe_text(note, 400)}")
    if verdict.decision is Decision.unknown:
        lines.append("  the beacon cannot tell: the reason above says what it cannot evaluate")
    return "\n".join(lines)


def explanation_results(explanation: Explanation) -> dict[str, Any]:
    """The ``explain`` action's results: verdict, the deciding reason, and the whole text."""
    verdict = explanation.verdict
    return {
        "verdict": verdict.decision.value,
        "reason": safe_text(verdict.reason, 400),
        "policy": safe_text(verdict.policy.name, 80) if verdict.policy else "",
        "explanation": format_explanation(explanation),
    }
