"""The README and docs/ name only files that exist, link only pages that exist, and the
README stays short."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a path in the repository: a top-level folder, then path characters
PATH = re.compile(r"(?<![\w./-])((?:bench|verifiers|attacks|models|results|tests|benchmarks|docs"
                  r"|\.ci)/[\w./-]*)")


def named_paths(text: str) -> set[str]:
    """Every repository path a page names (a trailing dot or slash is punctuation)."""
    return {match.rstrip("./") for match in PATH.findall(text)}


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_path_a_page_names_exists(page):
    missing = sorted(path for path in named_paths(page.read_text())
                     if not (ROOT / path).exists() and not list(ROOT.glob(path)))
    assert not missing, f"{page.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_link_between_pages_resolves(page):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
        if "://" not in target:
            assert (page.parent / target).exists(), f"{page.name} links {target}"


def test_the_checker_sees_a_missing_path():
    assert named_paths("see `verifiers/bab.py`, and results/ or docs/sdp.md.") == {
        "verifiers/bab.py", "results", "docs/sdp.md"}
    assert not (ROOT / "verifiers/bab.py").exists()


def test_the_readme_is_short_and_every_topic_has_a_page():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in readme, f"the README does not link docs/{page.name}"
