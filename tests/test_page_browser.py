"""The page in a real headless browser (Debian's Chromium): it renders without script
errors, its tables sort when a header is clicked, and its images load. Skipped, with the
reason, where no Chromium is installed (``apt-get install chromium``)."""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bench.page import write_page
from bench.vnncomp.cactus import cactus_plot

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium installed "
                                "(apt-get install chromium) to open the page in")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

# runs first in <head>: records every script error and console.error in the DOM
WATCH = """<script>
window.__errors = [];
window.addEventListener("error", function (e) { window.__errors.push(String(e.message)); });
var __console_error = console.error;
console.error = function () { window.__errors.push(Array.from(arguments).join(" "));
                              __console_error.apply(console, arguments); };
</script>"""
# runs last: clicks the leaderboard's 'error' header twice, checks the images, reports
PROBE = """<script>
window.addEventListener("load", function () {
  var table = document.querySelector('table[data-source="leaderboard.csv"]');
  var headers = Array.from(table.tHead.rows[0].cells);
  var column = headers.findIndex(function (h) { return h.textContent === "error"; });
  function order() { return Array.from(table.tBodies[0].rows).map(function (r) {
    return r.cells[column].textContent; }).join("|"); }
  headers[column].click(); var up = order();
  headers[column].click(); var down = order();
  var images = Array.from(document.images).map(function (i) {
    return i.complete && i.naturalWidth > 0; });
  var out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({up: up, down: down, images: images,
                                    errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def probe(page: Path, folder: Path) -> dict:
    """Open a copy of ``page`` with the watch and probe scripts in Chromium and return
    what the probe recorded."""
    import json

    text = page.read_text().replace("<head>", "<head>\n" + WATCH, 1)
    text = text.replace("</body>", PROBE + "\n</body>", 1)
    copy = folder / "probed.html"
    copy.write_text(text)
    done = subprocess.run([BROWSER, *FLAGS, "--virtual-time-budget=10000", "--dump-dom",
                           copy.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stderr[-2000:]
    import html

    return json.loads(html.unescape(found.group(1)))


def test_the_page_renders_sorts_and_shows_its_images(tmp_path):
    rows = [["model", "method", "error"], ["a", "x", "0.5"], ["b", "y", "0.125"],
            ["c", "z", "1"], ["d", "w", "0.25"]]
    with open(tmp_path / "leaderboard.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    cactus_plot({"ours": [{"result": "sat", "run_time": "0.5"},
                          {"result": "unsat", "run_time": "2"}]},
                tmp_path / "cactus.png")
    found = probe(write_page(tmp_path, title="probe"), tmp_path)
    assert found["errors"] == []
    assert found["up"] == "0.125|0.25|0.5|1" and found["down"] == "1|0.5|0.25|0.125"
    assert found["images"] == [True]


def test_the_committed_report_page_renders(tmp_path):
    """``results/index.html`` (the committed report's page) opens without errors, its
    leaderboard sorts, every figure loads."""
    page = Path(__file__).resolve().parents[1] / "results" / "index.html"
    found = probe(page, tmp_path)
    assert found["errors"] == []
    values = [float(v) for v in found["up"].split("|")]
    assert values == sorted(values) and len(values) > 10
    assert found["images"] and all(found["images"])
