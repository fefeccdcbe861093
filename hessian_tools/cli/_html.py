"""The report's page: one self-contained HTML file (figures embedded as data
URIs, readable offline, nothing fetched) from a list of ``Section``."""

from __future__ import annotations

import base64
import dataclasses
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hessian_tools.cli._store import open_shared

__all__ = ["BAD_ROW", "Figure", "Raw", "Section", "Table", "render_html", "write_html"]


@dataclasses.dataclass(frozen=True)
class Raw:
    """HTML written by this library, inserted as it is (never user text)."""

    html: str


@dataclasses.dataclass(frozen=True)
class Table:
    """A table; cells are escaped (a ``Raw`` cell is not); rows whose index
    is in ``bad`` are highlighted."""

    header: Sequence[str]
    rows: Sequence[Sequence[Any]]
    bad: frozenset = frozenset()
    css_class: str = ""


@dataclasses.dataclass(frozen=True)
class Figure:
    """A PNG figure, embedded in the page; ``name`` is its file."""

    name: str
    png: bytes
    caption: str = ""

    @classmethod
    def read(cls, folder: Path, name: str, caption: str = "") -> Figure:
        return cls(name, (Path(folder) / name).read_bytes(), caption)


@dataclasses.dataclass(frozen=True)
class Section:
    """A titled section: paragraphs (str, escaped), ``Raw``, ``Table``, ``Figure``."""

    title: str
    items: Sequence[Any]
    level: int = 2


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em;color:#222}"
    "table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}"
    "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
    "th{background:#f3f3f3}td:first-child{text-align:left}"
    "figure{display:inline-block;margin:0.3em;vertical-align:top}"
    "img{max-width:100%;border:1px solid #ddd}figcaption{font-size:13px;color:#555}"
    ".bad{color:#b00;font-weight:bold}"
)


BAD_ROW = " class='bad'"


def _cell(value: Any) -> str:
    if isinstance(value, Raw):
        return value.html
    if isinstance(value, float):
        return html.escape(f"{value:.6g}")
    return html.escape(str(value))


def _item(item: Any) -> str:
    if isinstance(item, Raw):
        return item.html
    if isinstance(item, str):
        return f"<p>{html.escape(item)}</p>"
    if isinstance(item, Table):
        cls = f" class='{item.css_class}'" if item.css_class else ""
        head = "".join(f"<th>{html.escape(h)}</th>" for h in item.header)
        rows = [
            f"<tr{BAD_ROW if i in item.bad else ''}>"
            + "".join(f"<td>{_cell(c)}</td>" for c in row)
            + "</tr>"
            for i, row in enumerate(item.rows)
        ]
        return f"<table{cls}><tr>{head}</tr>" + "".join(rows) + "</table>"
    if isinstance(item, Figure):
        data = base64.b64encode(item.png).decode("ascii")
        name = html.escape(item.name)
        cap = f"<figcaption>{html.escape(item.caption)}</figcaption>" if item.caption else ""
        return (
            f"<figure><img src='data:image/png;base64,{data}' alt='{name}' "
            f"data-file='{name}'>{cap}</figure>"
        )
    raise TypeError(f"cannot render {type(item).__name__} in a report section.")


def render_html(title: str, sections: Sequence[Section]) -> str:
    """One self-contained page: no external files, scripts or fonts."""
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        # an empty icon: the browser asks for no favicon file, so nothing fails to load
        "<link rel='icon' href='data:,'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    for section in sections:
        tag = f"h{section.level}"
        parts.append(f"<{tag}>{html.escape(section.title)}</{tag}>")
        parts.extend(_item(item) for item in section.items)
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(path: Path, title: str, sections: Sequence[Section]) -> None:
    """``render_html`` written atomically to ``path``."""
    with open_shared(path, "w") as fh:
        fh.write(render_html(title, sections))
