"""One self-contained HTML page per results folder: ``index.html``.

Written by ``bench run``, ``bench report`` and ``bench vnncomp`` beside their CSVs: every
table the folder holds (leaderboard, gaps, ground truth, Table 1, results, solver
statistics, violations), each sortable by a click on a column's header, its cells
exactly as in the CSV (read as text, nothing reformatted); every figure, embedded as a
data URI; the run's settings and versions; links to the CSV files. It needs no network
access to open: the styles and the sorting script are inline. Rendered with Jinja2
(autoescaped), not by string concatenation.
"""

from __future__ import annotations

import base64
import csv
import platform
import sys
from pathlib import Path

from jinja2 import Environment, select_autoescape

from models.files import atomic_write

PAGE_NAME = "index.html"
# the tables a results folder may hold, in the order the page shows them
TABLES = [("leaderboard.csv", "Leaderboard"), ("gaps.csv", "Gap table"),
          ("ground_truth.csv", "Ground truth"), ("table1.csv", "Table 1"),
          ("results.csv", "VNN-COMP results"),
          ("solvers.csv", "VNN-COMP solvers side by side"),
          ("violations.csv", "Soundness violations"),
          ("per_sample.csv", "Per sample: certified bound and attack margin"),
          ("solver_stats.csv", "Solver statistics")]

TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 2em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th.sorted-up::after { content: " \\25B2"; } th.sorted-down::after { content: " \\25BC"; }
td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0 1.5em; }
dl { display: grid; grid-template-columns: max-content auto; gap: 0.2em 1em; }
dt { font-weight: bold; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<dl>
{% for key, value in settings %}<dt>{{ key }}</dt><dd>{{ value }}</dd>
{% endfor %}</dl>
{% for table in tables %}
<h2 id="{{ table.name }}">{{ table.title }}</h2>
<p><a href="{{ table.name }}">{{ table.name }}</a>, {{ table.rows|length }} rows;
click a column's header to sort.</p>
<table class="sortable" data-source="{{ table.name }}">
<thead><tr>{% for cell in table.header %}<th>{{ cell }}</th>{% endfor %}</tr></thead>
<tbody>
{% for row in table.rows %}<tr>{% for cell in row %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</tbody>
</table>
{% endfor %}
{% for figure in figures %}
<h2>{{ figure.name }}</h2>
<img alt="{{ figure.name }}" src="data:image/png;base64,{{ figure.data }}">
{% endfor %}
<script>
document.querySelectorAll("table.sortable th").forEach(function (header) {
  header.addEventListener("click", function () {
    var table = header.closest("table"), body = table.tBodies[0];
    var column = Array.prototype.indexOf.call(header.parentNode.children, header);
    var down = header.classList.contains("sorted-up");
    table.querySelectorAll("th").forEach(function (h) {
      h.classList.remove("sorted-up", "sorted-down"); });
    header.classList.add(down ? "sorted-down" : "sorted-up");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[column].textContent, y = b.cells[column].textContent;
      var p = parseFloat(x), q = parseFloat(y);
      var order = (!isNaN(p) && !isNaN(q)) ? p - q : x.localeCompare(y);
      return down ? -order : order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  });
});
</script>
</body>
</html>
"""


def _table(path: Path) -> tuple[list[str], list[list[str]]]:
    """A CSV's header and rows, as text."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    return (rows[0], rows[1:]) if rows else ([], [])


def versions() -> list[tuple[str, str]]:
    """The versions a reader needs to reproduce the numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = [("python", platform.python_version())]
    for package in ("certbench", "torch", "numpy", "scipy", "highspy", "cvxpy", "onnxruntime"):
        try:
            out.append((package, version(package)))
        except PackageNotFoundError:
            continue
    return out


def write_page(folder: Path, *, title: str, settings: list[tuple[str, str]] | None = None,
               command: str | None = None) -> Path:
    """Write ``folder/index.html`` from the CSVs and PNGs in ``folder`` (see the module
    doc; a screenshot of the page itself, ``*screenshot*.png``, is not embedded);
    ``settings`` are shown first, then the command (default: this process's) and the
    versions."""
    folder = Path(folder)
    tables = []
    for name, caption in TABLES:
        if (folder / name).exists():
            header, rows = _table(folder / name)
            tables.append({"name": name, "title": caption, "header": header, "rows": rows})
    figures = [{"name": png.name, "data": base64.b64encode(png.read_bytes()).decode()}
               for png in sorted(folder.glob("*.png")) if "screenshot" not in png.name]
    shown = list(settings or []) + [
        ("command", command or " ".join(["python -m bench"] + sys.argv[1:]))]
    shown += versions()
    environment = Environment(autoescape=select_autoescape(default=True))
    text = environment.from_string(TEMPLATE).render(title=title, settings=shown,
                                                    tables=tables, figures=figures)
    data = text.encode()
    return atomic_write(folder / PAGE_NAME, lambda handle: handle.write(data))


def page_tables(text: str) -> dict[str, list[list[str]]]:
    """The tables of a page written by :func:`write_page`, by source CSV: header row
    first, cells as text (for tests and for anyone reading a page back)."""
    from html.parser import HTMLParser

    class Reader(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.tables: dict[str, list[list[str]]] = {}
            self.current: list[list[str]] | None = None
            self.cell: list[str] | None = None

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            if tag == "table":
                source = dict(attrs).get("data-source") or ""
                self.current = self.tables.setdefault(source, [])
            elif tag == "tr" and self.current is not None:
                self.current.append([])
            elif tag in ("td", "th") and self.current is not None:
                self.cell = []

        def handle_endtag(self, tag: str) -> None:
            if tag in ("td", "th") and self.cell is not None and self.current is not None:
                self.current[-1].append("".join(self.cell))
                self.cell = None
            elif tag == "table":
                self.current = None

        def handle_data(self, data: str) -> None:
            if self.cell is not None:
                self.cell.append(data)

    reader = Reader()
    reader.feed(text)
    return reader.tables
