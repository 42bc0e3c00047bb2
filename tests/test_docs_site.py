"""The documentation site builds with `mkdocs build --strict`: a broken link, a missing anchor or a
page left out of the navigation fails here, before a reader finds it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
MERMAID_BLOCK = re.compile(r"^```mermaid\n(?P<source>.*?)^```", re.MULTILINE | re.DOTALL)
# Mermaid and jsdom from npm, installed next to the virtualenv's packages by scripts/test.sh.
MERMAID_DIR = Path(os.environ.get("PGQ_MERMAID_DIR", Path(sys.prefix) / "mermaid"))


def build(site: Path, config: Path = REPO_ROOT / "mkdocs.yml") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
         "--site-dir", str(site)],
        cwd=REPO_ROOT, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip


def test_the_site_builds_strictly_with_every_page(tmp_path: Path) -> None:
    done = build(tmp_path)
    assert done.returncode == 0, done.stderr
    pages = {p.relative_to(REPO_ROOT / "docs") for p in (REPO_ROOT / "docs").rglob("*.md")}
    for page in pages:
        html = tmp_path / page.with_suffix("") / "index.html"
        if page.name == "index.md":
            html = tmp_path / page.parent / "index.html"
        assert html.is_file(), f"docs/{page} is not on the site"
    assert (tmp_path / "search" / "search_index.json").is_file()


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\nSee [the missing page](missing.md).\n")
    config = tmp_path / "mkdocs.yml"
    config.write_text(
        (REPO_ROOT / "mkdocs.yml")
        .read_text()
        .split("\nnav:")[0]
        .replace("docs_dir: docs", f"docs_dir: {docs}")
    )
    done = build(tmp_path / "site", config)
    assert done.returncode != 0
    assert "missing.md" in done.stderr


def parse_with_mermaid(diagrams: list[tuple[str, str]]) -> list[str]:
    assert (MERMAID_DIR / "node_modules" / "mermaid").is_dir(), (
        f"no Mermaid in {MERMAID_DIR}: run scripts/test.sh, which installs it with npm"
    )
    done = subprocess.run(
        ["node", str(Path(__file__).with_name("mermaid_parse.mjs"))], input=json.dumps(diagrams),
        env={**os.environ, "MERMAID_DIR": str(MERMAID_DIR)}, capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    errors: list[str] = json.loads(done.stdout)
    return errors


def test_every_diagram_parses_as_the_browser_will_parse_it() -> None:
    """mkdocs passes a diagram through as text: only Mermaid itself can say it is broken."""
    diagrams = [
        (f"docs/{page.relative_to(REPO_ROOT / 'docs')}", match["source"])
        for page in sorted((REPO_ROOT / "docs").rglob("*.md"))
        for match in MERMAID_BLOCK.finditer(page.read_text())
    ]
    assert len(diagrams) >= 3
    # A semicolon ends a statement in Mermaid, even inside a message: this one must fail.
    control = ("control", "sequenceDiagram\n    A->>B: BEGIN; INSERT\n")

    errors = parse_with_mermaid([*diagrams, control])

    assert [error.split(":")[0] for error in errors] == ["control"], errors
