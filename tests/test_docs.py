"""The documentation holds together: every relative link in README.md, docs/ and results/ points
to a file that exists, every docs/ page cited in the code exists, and nothing cites design or
paper notes that live outside the repository (the design is docs/design.md)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("src", "tests", "benchmarks", "docs", "results", "configs")
TEXT_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".toml", ".txt", ".cfg"}
# Spelled in pieces so that this file does not cite them itself.
EXTERNAL_NOTES = re.compile(r"\b(?:" + "DESIGN" + "|" + "PAPERS" + r")\.md\b|\.\./" + "shared")

INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.MULTILINE)
CODE_PATH = re.compile(r"`((?:benchmarks|configs|docs|results|src|tests)/[^`\s<>*{}|:]+)`")
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.MULTILINE | re.DOTALL)
CODE_DOCS_CITATION = re.compile(r"\bdocs/[\w./-]+\.md\b")


def markdown_files() -> list[Path]:
    files = [ROOT / "README.md"]
    for folder in ("docs", "results"):
        files += sorted((ROOT / folder).rglob("*.md"))
    return [f for f in files if f.is_file()]


def repo_text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "Makefile", ROOT / "pyproject.toml"]
    for folder in SCANNED:
        files += [f for f in sorted((ROOT / folder).rglob("*")) if f.suffix in TEXT_SUFFIXES]
    return [f for f in files if f.is_file() and "__pycache__" not in f.parts]


def is_external(target: str) -> bool:
    return bool(re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target)) or target.startswith("#")


def relative_targets(text: str) -> list[str]:
    """Relative link targets of a markdown text (fenced code blocks excluded), anchors removed."""
    prose = FENCE.sub("", text)
    targets = INLINE_LINK.findall(prose) + REFERENCE_LINK.findall(prose)
    out = []
    for target in targets:
        if is_external(target):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if path:
            out.append(path)
    return out


def cited_paths(text: str) -> list[str]:
    """Repository paths quoted alone in inline code (`docs/x.md`, `results/y/README.md`): a
    reader takes them for references too. Paths with placeholders are skipped."""
    return CODE_PATH.findall(FENCE.sub("", text))


def broken_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in relative_targets(text):
        if not (path.parent / target).exists():
            broken.append(f"{path.relative_to(ROOT)}: link to {target} (no such file)")
    for cited in cited_paths(text):
        if not (ROOT / cited.rstrip("/")).exists():
            broken.append(f"{path.relative_to(ROOT)}: cites `{cited}` (no such file)")
    return broken


def test_link_extraction_sees_links_and_skips_code_and_urls() -> None:
    text = (
        "See [the design](design.md#layers), ![plot](../results/x/plot.png) and\n"
        "[ref]: methods/a.md\n"
        "[web](https://example.org/a.md), [here](#notation).\n"
        "```\n[not a link](missing.md)\n```\n"
        "Quoted `docs/methods/b.md`, not `results/<study>/notes.md` nor `python x.py`.\n"
    )
    assert relative_targets(text) == ["design.md", "../results/x/plot.png", "methods/a.md"]
    assert cited_paths(text) == ["docs/methods/b.md"]


def test_a_broken_link_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "ok.md").write_text("x")
    page = tmp_path / "page.md"
    page.write_text("[ok](ok.md) [gone](gone.md#a) `docs/none.md`")
    assert broken_links(page) == [
        "page.md: link to gone.md (no such file)",
        "page.md: cites `docs/none.md` (no such file)",
    ]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(path: Path) -> None:
    assert broken_links(path) == []


def test_docs_pages_cited_in_code_exist() -> None:
    missing = []
    for path in repo_text_files():
        if path.suffix != ".py" or path == Path(__file__).resolve():
            continue
        for cited in CODE_DOCS_CITATION.findall(path.read_text(encoding="utf-8")):
            if not (ROOT / cited).exists():
                missing.append(f"{path.relative_to(ROOT)}: {cited}")
    assert missing == []


def test_nothing_cites_notes_outside_the_repository() -> None:
    hits = []
    for path in repo_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if EXTERNAL_NOTES.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert hits == []


def test_the_external_notes_pattern_matches_what_it_must() -> None:
    assert EXTERNAL_NOTES.search("see " + "DESIGN" + ".md, sec. 2")
    assert EXTERNAL_NOTES.search("(" + "PAPERS" + ".md sec. 3)")
    assert EXTERNAL_NOTES.search("read ../" + "shared" + "/STYLE.md")
    assert not EXTERNAL_NOTES.search("docs/design.md and docs/methods/moment_matching.md")


def test_the_docs_index_lists_every_page() -> None:
    index = (ROOT / "docs" / "README.md").read_text(encoding="utf-8")
    linked = {(ROOT / "docs" / t).resolve() for t in relative_targets(index)}
    pages = {p.resolve() for p in (ROOT / "docs").rglob("*.md") if p.name != "README.md"}
    assert sorted(str(p.relative_to(ROOT)) for p in pages - linked) == []
