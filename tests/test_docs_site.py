"""The documentation site builds with `mkdocs build --strict`: a broken link, a missing anchor or a
page left out of the navigation fails here, before a reader finds it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


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
