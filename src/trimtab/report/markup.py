"""Small HTML helpers for report.html: escaping, number cells, tables, notes.

Every string that can come from a model, a data set or a saved file goes through `esc` (or a
helper that calls it); the helpers take plain text, never HTML, except where a parameter is
named `*_html`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from html import escape
from typing import Any

DASH = "\u2013"  # shown for a missing or non-finite number


def esc(value: Any) -> str:
    """`value` as text, HTML-escaped (quotes too, so it is safe in attributes)."""
    return escape("" if value is None else str(value), quote=True)


def num(value: Any, fmt: str = ".4g", suffix: str = "") -> str:
    """A number formatted with `fmt`, or a dash when it is missing or not a finite number
    (summary.json writes NaN/inf as null; other files write them as strings)."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return DASH
    if not math.isfinite(value):
        return DASH if math.isnan(value) else ("inf" if value > 0 else "-inf")
    return f"{value:{fmt}}{suffix}"


def interval(values: Any, fmt: str = "+.2f") -> str:
    """`[lo, hi]` from a two-element list, dashes where missing."""
    if not isinstance(values, (list, tuple)) or len(values) != 2:
        return DASH
    return f"[{num(values[0], fmt)}, {num(values[1], fmt)}]"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, row_classes: Sequence[str] | None = None,
          caption: str | None = None, cls: str = "") -> str:
    """A table. `headers` are plain text; each row's cells are already HTML (build them with
    `esc`/`num`)."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for index, cells in enumerate(rows):
        row_cls = row_classes[index] if row_classes and index < len(row_classes) else ""
        attr = f' class="{esc(row_cls)}"' if row_cls else ""
        body.append(f"<tr{attr}>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    cap = f"<caption>{esc(caption)}</caption>" if caption else ""
    table_cls = f' class="{esc(cls)}"' if cls else ""
    return (f'<div class="scroll"><table{table_cls}>{cap}<thead><tr>{head}</tr></thead><tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")


def note(text: str, kind: str = "muted") -> str:
    """A short paragraph of plain text (e.g. why a section is missing)."""
    return f'<p class="{esc(kind)}">{esc(text)}</p>'


def bullet_list(items: Iterable[Any]) -> str:
    lines = "".join(f"<li>{esc(item)}</li>" for item in items)
    return f"<ul>{lines}</ul>" if lines else ""


def section(anchor: str, title: str, body_html: str) -> str:
    return f'<section id="{esc(anchor)}">\n<h2>{esc(title)}</h2>\n{body_html}\n</section>'


def names_cell(names: Sequence[Any], shown: int = 3) -> str:
    """The first `shown` names, then '+N more' with the full list as a tooltip."""
    names = [str(n) for n in names]
    head = ", ".join(f"<code>{esc(n)}</code>" for n in names[:shown])
    if len(names) <= shown:
        return head
    return f'{head} <span title="{esc(", ".join(names))}">+{len(names) - shown} more</span>'
