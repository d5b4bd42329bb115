"""Build the documentation site offline: `make docs` (or `python docs/site/build.py`).

Stages the pages into `build/docs_src/` with the repository's layout, so every relative link
that works on the repository works on the site:

- `README.md` (the home page and quick start), `docs/**` (design, decisions, one page per method
  in `docs/methods/`), `results/**` (reports, notes, plots and the raw JSON they link to);
- `reference/<package>.md`: one API-reference page per subpackage of `src/difflab`, rendered from
  the docstrings by mkdocstrings (`::: difflab.<package>`);

then writes `build/mkdocs.yml` (inheriting `mkdocs.yml`) with a nav generated from the files
found (new `docs/methods/*.md` pages and new result studies appear without an edit here) and runs
`mkdocs build --strict`: a link to a missing page or anchor, or an unresolved cross-reference,
fails the build. The site lands in `build/site/` (`index.html`).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
STAGE = BUILD / "docs_src"
# subpackages and top-level modules of src/difflab with a reference page, in layer order
REFERENCE_ORDER = (
    "diffusion", "sampling", "interop", "nets", "data", "discrete", "config", "train", "eval",
    "methods", "api", "cli", "fileio", "devices", "images",
)  # fmt: skip


def title_of(path: Path) -> str:
    """The page's first `# ` heading, else its file name."""
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return path.stem


def copy_tree(src: Path, dst: Path) -> list[Path]:
    """Copy the files under `src` to `dst` (pages, plots and the raw JSON the reports link to;
    not this builder); returns the copied files (in `dst`)."""
    out = []
    for f in sorted(src.rglob("*")):
        if f.is_file() and "__pycache__" not in f.parts:
            if f.is_relative_to(ROOT / "docs" / "site"):
                continue
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            out.append(target)
    return out


def reference_modules() -> list[str]:
    """The documented modules: every subpackage / top-level module of `difflab` (new ones are
    appended after the known order)."""
    src = ROOT / "src" / "difflab"
    found = {p.name for p in src.iterdir() if (p / "__init__.py").is_file()}
    found |= {p.stem for p in src.glob("*.py") if p.stem not in ("__init__", "__main__")}
    found -= {"allocator"}
    return [m for m in REFERENCE_ORDER if m in found] + sorted(found - set(REFERENCE_ORDER))


def write_reference(stage: Path) -> list[tuple[str, str]]:
    ref = stage / "reference"
    ref.mkdir(parents=True, exist_ok=True)
    pages = []
    index = [
        "# API reference",
        "",
        "Rendered from the docstrings, one page per part of the package:",
        "",
    ]
    for name in ["difflab", *reference_modules()]:
        dotted = name if name == "difflab" else f"difflab.{name}"
        file = f"{name}.md"
        submodules = "false" if name == "difflab" else "true"
        (ref / file).write_text(
            f"# {dotted}\n\n::: {dotted}\n    options:\n      show_submodules: {submodules}\n"
            "      show_root_heading: false\n",
            encoding="utf-8",
        )
        pages.append((dotted, f"reference/{file}"))
        index.append(f"- [{dotted}]({file})")
    (ref / "index.md").write_text("\n".join(index) + "\n", encoding="utf-8")
    return [("Overview", "reference/index.md"), *pages]


def yaml_nav(nav: list, indent: int = 0) -> list[str]:
    lines = []
    for title, item in nav:
        key = '"' + title.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(item, list):
            lines.append(" " * indent + f"- {key}:")
            lines += yaml_nav(item, indent + 4)
        else:
            lines.append(" " * indent + f"- {key}: {item}")
    return lines


def stage_pages(stage: Path = STAGE) -> list:
    """Copy the pages into `stage` and return the nav: a list of `(title, page or sub-nav)`."""
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    shutil.copy2(ROOT / "README.md", stage / "README.md")
    copy_tree(ROOT / "docs", stage / "docs")
    copy_tree(ROOT / "results", stage / "results")
    docs = stage / "docs"
    top = [p for p in sorted(docs.glob("*.md")) if p.name != "README.md"]
    methods = sorted((docs / "methods").glob("*.md"))
    studies = sorted(p for p in (stage / "results").glob("*/README.md"))

    def page(p: Path) -> tuple[str, str]:
        return title_of(p), p.relative_to(stage).as_posix()

    results_nav = (
        [page(stage / "results" / "README.md")]
        if (stage / "results" / "README.md").exists()
        else []
    )

    def with_notes(report: Path) -> list[str]:  # a study's report, then its other pages
        extra = sorted(p for p in report.parent.rglob("*.md") if p != report)
        return [page(report), *map(page, extra)]

    for study in studies:
        results_nav.append((study.parent.name, with_notes(study)))
    nested = sorted(p for p in (stage / "results").glob("*/*/README.md"))
    for p in nested:
        if not (p.parent.parent / "README.md").exists():
            results_nav.append((p.parent.relative_to(stage / "results").as_posix(), with_notes(p)))
    return [
        ("Home", "README.md"),
        ("Documentation", [("Overview", "docs/README.md"), *map(page, top)]),
        ("Methods", list(map(page, methods))),
        ("Results", results_nav),
        ("API reference", write_reference(stage)),
    ]


def write_config(nav: list, build: Path = BUILD) -> Path:
    """`build/mkdocs.yml`: inherits the repository's `mkdocs.yml`, stages from `build/docs_src`."""
    config = build / "mkdocs.yml"
    parent = os.path.relpath(ROOT / "mkdocs.yml", build)
    source = os.path.relpath(ROOT / "src", build)
    lines = [
        "# generated by docs/site/build.py: the nav of the staged pages; settings in ../mkdocs.yml",
        f"INHERIT: {parent}",
        "docs_dir: docs_src",
        "site_dir: site",
        "plugins:",
        "  mkdocstrings:",
        "    handlers:",
        "      python:",
        f"        paths: [{source}]",
        "nav:",
        *yaml_nav(nav, 4),
    ]
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stage-only", action="store_true", help="stage the pages, do not build")
    args = p.parse_args(argv)
    config = write_config(stage_pages())
    if args.stage_only:
        print(f"staged {STAGE} and {config}")
        return 0
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-f", str(config)]
    done = subprocess.run(cmd, cwd=ROOT)
    if done.returncode == 0:
        print(f"site: {BUILD / 'site' / 'index.html'}")
    return done.returncode


if __name__ == "__main__":
    raise SystemExit(main())
