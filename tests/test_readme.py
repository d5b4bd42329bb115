"""The README's commands, as written: every `difflab` command parses, every file it names
exists, and the quick ones run (the Python example, sampling the shipped model, plotting)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BIN = Path(sys.executable).parent
# run as written, in a scratch folder that sees the repository's files
QUICK = (
    re.compile(r"^difflab sample src/difflab/assets/\S+\.safetensors( |$)"),
    re.compile(r"^difflab eval plot "),
)
# where the README's own paths live (checked to exist)
REPO_PATHS = re.compile(r"^(benchmarks/\S+\.py|configs/\S+\.ya?ml|src/\S+)$")


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def commands() -> list[str]:
    """The README's shell commands, one per line, comments and continuations resolved."""
    out = []
    for block in code_blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line and not line.startswith("#"):
                out.append(" ".join(line.split()))
    return out


def difflab_argv(command: str) -> list[str] | None:
    words = shlex.split(command)
    return words[1:] if words and words[0] == "difflab" else None


def test_the_readme_has_commands_to_check():
    assert any(difflab_argv(c) for c in commands())
    assert any(p.search(c) for c in commands() for p in QUICK)
    assert code_blocks("python")


@pytest.mark.parametrize("command", [c for c in commands() if difflab_argv(c)])
def test_every_difflab_command_parses(command):
    from difflab.cli import build_parser

    try:
        build_parser().parse_args(difflab_argv(command))
    except SystemExit as exit_:
        pytest.fail(f"`{command}` does not parse (exit {exit_.code})")


@pytest.mark.parametrize("command", commands())
def test_every_file_a_command_names_exists(command):
    named = [w for w in shlex.split(command) if REPO_PATHS.match(w)]
    missing = [w for w in named if not (ROOT / w).exists()]
    assert not missing, f"`{command}` names missing files {missing}"


def test_the_python_example_runs():
    """The example ends with samples `x` of the noise `z`'s shape: finite, and no longer noise
    (the oracle's data have a variance well below the unit variance of `z`)."""
    for block in code_blocks("python"):
        if "from_diffusers" in block:
            continue  # the diffusers example needs a model folder: tests/test_interop.py runs it
        names: dict = {}
        exec(compile(block, str(README), "exec"), names)
        x, z = names["x"], names["z"]
        assert x.shape == z.shape and bool(x.isfinite().all())
        assert float(x.var()) < 0.9 * float(z.var())


@pytest.fixture
def scratch(tmp_path):
    """A working folder in which the README's relative repository paths resolve."""
    for name in ("src", "configs", "benchmarks"):
        (tmp_path / name).symlink_to(ROOT / name)
    (tmp_path / "results").mkdir()  # what the examples write stays out of the repository
    return tmp_path


@pytest.mark.parametrize("command", [c for c in commands() if any(p.search(c) for p in QUICK)])
def test_quick_commands_run_as_written(command, scratch):
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    words = shlex.split(command)
    if words[1:3] == ["eval", "plot"] and not (scratch / words[3]).exists():
        # the README plots the file that its `difflab eval` example writes: make a small one
        eval_cmd = next(c for c in commands() if c.startswith("difflab eval src/"))
        small = shlex.split(eval_cmd)
        small[small.index("--num") + 1] = "64"
        small[small.index("--metric") + 1] = "fd-lenet"
        subprocess.run(small, cwd=scratch, env=env, check=True, capture_output=True)
    done = subprocess.run(words, cwd=scratch, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"`{command}` failed:\n{done.stderr[-2000:]}"


def test_every_repository_path_the_readme_cites_exists():
    cited = set(
        re.findall(r"`((?:benchmarks|configs|docs|results|src)/[^`\s*]+)`", README.read_text())
    )
    missing = sorted(p for p in cited if not (ROOT / p).exists())
    assert cited and not missing, f"README.md cites missing files {missing}"
