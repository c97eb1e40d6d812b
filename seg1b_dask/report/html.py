"""The page's HTML pieces: inline CSS, tables, images, sections and the page itself, so a
page opens from disk with no network."""

from __future__ import annotations

import html
import json
import re
from typing import Any

from seg1b_dask.core.text import MISSING, number

CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px auto; max-width: 1500px; color: #222; padding: 0 16px; }
h1 { font-size: 22px; } h2 { font-size: 17px; border-bottom: 1px solid #ccc; padding-bottom: 4px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; font-size: 13px; }
td, th { border: 1px solid #ddd; padding: 3px 8px; text-align: right; } th { background: #f4f4f4; }
td:first-child, th:first-child { text-align: left; }
.pass { background: #e3f4e1; } .fail { background: #f9dcdc; } .na { color: #888; }
.grade { font-size: 20px; font-weight: 600; } img { max-width: 100%; }
.note { color: #555; font-size: 13px; } code { background: #f4f4f4; padding: 0 3px; }
nav ol { margin: 4px 0; padding-left: 22px; columns: 2; max-width: 900px; }
"""

# Runs first: counts console errors and failed images, and says which sections exist (the
# browser test reads these from the rendered DOM).
GUARD = """<script>
window.seg1bErrors = 0;
window.addEventListener("error", function () { window.seg1bErrors += 1; }, true);
var seg1bError = console.error;
console.error = function () { window.seg1bErrors += 1; seg1bError.apply(console, arguments); };
</script>"""

CHECK = """<script>
(function () {
  var ids = %s;
  document.body.dataset.sectionsPresent = ids.filter(function (i) { return document.getElementById(i); }).join(",");
  var imgs = Array.prototype.slice.call(document.images);
  document.body.dataset.imagesBroken = imgs.filter(function (i) { return !(i.complete && i.naturalWidth > 0); }).length;
  document.body.dataset.consoleErrors = window.seg1bErrors;
  console.log("seg1b-report-ok");
})();
</script>"""


def cell(value: Any, digits: int = 4) -> str:
    text = number(value, digits)
    return '<span class="na">n/a</span>' if text == MISSING else html.escape(text)


def table(header: list[str] | None, rows: list[list[str]], classes: list[str] | None = None) -> str:
    """A table with a header row (none for a table of labelled values, ``header=None``)."""
    head = "<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>" if header else ""
    body = "".join(
        f'<tr class="{classes[i] if classes else ""}">' + "".join(f"<td>{c}</td>" for c in row) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table>{head}{body}</table>"


def img(data: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def section(section_id: str, title: str, body: str) -> str:
    return f'<section id="{section_id}"><h2>{html.escape(title)}</h2>{body}</section>'


SECTION = re.compile(r'<section id="([^"]+)"><h2>(.*?)</h2>')


def contents(sections: list[str]) -> str:
    """The page's table of contents: a link to every section made by ``section``, by its
    title up to any parenthesis."""
    heads = [SECTION.match(s) for s in sections]
    items = "".join(f'<li><a href="#{m[1]}">{m[2].split(" (")[0]}</a></li>' for m in heads if m)
    return f'<nav id="contents"><h2>Contents</h2><ol>{items}</ol></nav>'


def page(title: str, sections: list[str], ids: tuple[str, ...]) -> str:
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{CSS}</style>{GUARD}</head><body><h1>{html.escape(title)}</h1>{contents(sections)}"
        f"{''.join(sections)}{CHECK % json.dumps(list(ids))}</body></html>"
    )
