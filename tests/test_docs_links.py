"""The documentation stays honest: every relative link of README.md and docs/ points to a file that
exists (and, for a link with an anchor into a markdown file, to a heading of that file), and the
pages speak of the project, not of how it came to be (the history of measurements belongs to
the dated notes under docs/results/; HISTORY lists the words that betray it)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOTES = sorted((ROOT / "docs" / "results").glob("*.md"))
# Words of the project's history: a page gives the current figure and the command behind it.
HISTORY = re.compile(r"\bsession [0-9]|\bissues?\b|superseded", re.IGNORECASE)

_markdown = MarkdownIt("commonmark").enable("table")


def _plain_text(inline: Token) -> str:
    """The text a heading renders to (code spans without their backticks, no markup)."""
    return "".join(child.content for child in inline.children or [] if child.type in ("text", "code_inline"))


def github_anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings of a page: lower case, punctuation dropped (but `-`
    and `_`), spaces as `-`; a repeated heading gets `-1`, `-2`, ..."""
    tokens = _markdown.parse(markdown)
    seen: Counter[str] = Counter()
    anchors = set()
    for opening, inline in zip(tokens, tokens[1:]):
        if opening.type != "heading_open":
            continue
        slug = re.sub(r"[^\w\- ]", "", _plain_text(inline).strip().lower()).replace(" ", "-")
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def relative_links(markdown: str) -> list[str]:
    """Every link and image target of a page that is neither absolute (a scheme) nor site-rooted;
    links inside code spans and code blocks are not links, so they are not returned."""
    targets = []
    stack = _markdown.parse(markdown)
    while stack:
        token = stack.pop()
        stack.extend(token.children or [])
        target = token.attrGet("href") if token.type == "link_open" else token.attrGet("src") if token.type == "image" else None
        if target and not urlsplit(str(target)).scheme and not str(target).startswith("/"):
            targets.append(str(target))
    return targets


def _problem(page: Path, target: str) -> str | None:
    """What is wrong with one relative link of `page`, or None."""
    name = page.relative_to(ROOT) if page.is_relative_to(ROOT) else page
    parts = urlsplit(target)
    path = (page.parent / unquote(parts.path)).resolve() if parts.path else page
    if not path.exists():
        return f"{name}: the link ({target}) points to {path}, which does not exist"
    if parts.fragment and path.suffix == ".md" and parts.fragment not in github_anchors(path.read_text()):
        return f"{name}: the link ({target}) names #{parts.fragment}, no heading of {path.name}"
    return None


@pytest.mark.parametrize("page", PAGES + NOTES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page: Path) -> None:
    problems = [p for target in relative_links(page.read_text()) if (p := _problem(page, target))]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_pages_do_not_narrate_history(page: Path) -> None:
    lines = page.read_text().splitlines()
    found = [f"{page.relative_to(ROOT)}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if HISTORY.search(line)]
    assert not found, "move history to a dated note under docs/results/:\n" + "\n".join(found)


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """The link check itself: a broken file, a broken anchor and a good anchor on a real page."""
    (tmp_path / "other.md").write_text("# Title\n\n## Run it: `sattn-tune` (CPU)\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](other.md#run-it-sattn-tune-cpu) [missing](nothere.md) [bad anchor](other.md#nope) "
        "[web](https://example.org/x.md) `[code](not-a-link.md)`\n"
    )
    targets = relative_links(page.read_text())
    assert sorted(targets) == ["nothere.md", "other.md#nope", "other.md#run-it-sattn-tune-cpu"]
    assert _problem(page, "other.md#run-it-sattn-tune-cpu") is None
    assert "does not exist" in (_problem(page, "nothere.md") or "")
    assert "no heading" in (_problem(page, "other.md#nope") or "")
    assert HISTORY.search("as measured in session 5") and not HISTORY.search("one session helper commits")


def test_readme_quick_start_runs() -> None:
    """The README's quick start, as written, in a fresh process on the plain-PyTorch path (what a
    CPU without Triton's interpreter runs; the interpreter would take minutes at this length)."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    found = re.search(r"density (\d\.\d+), relative error (\d\.\d+)", result.stdout)
    assert found, result.stdout
    density, error = map(float, found.groups())
    assert 0 < density <= 1 and error < 0.5
