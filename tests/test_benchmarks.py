"""The benchmarks: every script starts (`--help`), every committed study report re-renders from
its stored raw numbers to the same bytes, and the shared result store merges and records runs
as documented (`benchmarks/common.py`)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if '__name__ == "__main__"' in p.read_text())

sys.path.insert(0, str(BENCH))
import common  # noqa: E402
import reports  # noqa: E402

HELP_RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, runpy, sys
    out = {}
    for path in sys.argv[1:]:
        sys.argv, buf, code = [path, "--help"], io.StringIO(), 0
        try:
            with contextlib.redirect_stdout(buf):
                runpy.run_path(path, run_name="__main__")
        except SystemExit as stop:
            code = stop.code or 0
        except BaseException as err:
            code, buf = 1, io.StringIO(f"{type(err).__name__}: {err}")
        out[path] = [code, buf.getvalue()[:2000]]
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def helps() -> dict[str, list]:
    """`python <script> --help` for every benchmark script, in one interpreter (runpy runs each
    as `__main__`, so the import of torch is paid once)."""
    paths = [str(BENCH / s) for s in SCRIPTS]
    done = subprocess.run(
        [sys.executable, "-c", HELP_RUNNER, *paths],
        capture_output=True, text=True, cwd=BENCH, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return {Path(k).name: v for k, v in json.loads(done.stdout.splitlines()[-1]).items()}


def test_every_split_script_is_there():
    expected = {
        "samplers_nfe.py", "samplers_grids.py", "samplers_cov_ablation.py",
        "samplers_agreement.py", "samplers_overhead.py", "samplers_report.py",
        "distill_oracle.py", "distill_mnist.py", "mnist_10k_sample.py", "mnist_10k_score.py",
        "mnist_10k_report.py", "reports.py",
    }  # fmt: skip
    assert expected <= set(SCRIPTS)


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_runs(helps, script):
    code, text = helps[script]
    assert code == 0, f"{script} --help failed: {text}"
    assert text.startswith("usage:"), text


@pytest.mark.parametrize("study", sorted(reports.RENDERERS))
def test_report_rerenders_from_its_json(study):
    committed = (common.RESULTS / study / common.REPORT).read_text()
    assert reports.render(study) == committed, (
        f"results/{study}/README.md differs from its re-rendering: "
        f"run `python benchmarks/reports.py results/{study}` (or fix the renderer)"
    )


def test_every_study_folder_has_a_renderer_and_a_manifest():
    folders = {str(p.parent.relative_to(common.RESULTS)) for p in common.RESULTS.rglob(common.RAW)}
    assert folders == set(reports.RENDERERS)
    for study in folders:
        manifest = json.loads((common.RESULTS / study / common.MANIFEST).read_text())
        for run in manifest["runs"]:
            assert {"command", "commit", "machine", "date"} <= set(run), (study, run)


def test_reports_check_flags_a_stale_report(tmp_path, monkeypatch, capsys):
    study = tmp_path / "mnist_model"
    study.mkdir()
    data = json.loads((common.RESULTS / "mnist_model" / common.RAW).read_text())
    (study / common.RAW).write_text(json.dumps(data))
    monkeypatch.setattr(reports, "RESULTS", tmp_path)
    (study / common.REPORT).write_text(reports.render("mnist_model"))
    assert reports.main(["--check", "mnist_model"]) == 0
    data["records"][0]["fd-lenet"] = 1.0
    (study / common.RAW).write_text(json.dumps(data))
    assert reports.main(["--check", "mnist_model"]) == 1
    assert "| ddim | 8 | 8 | 137.6 | 1 |" in capsys.readouterr().out


def test_distill_report_constant_is_the_library_default():
    import distill_reports

    from difflab.methods.consistency import MCMConfig

    assert distill_reports.N_TEACHER_END == MCMConfig.n_teacher_end


def test_locked_update_merges_what_another_process_wrote(tmp_path):
    path = tmp_path / "store.json"
    common.locked_update(path, {"rows": {"a": 1}, "commands": ["one"]})
    mine = {"rows": {"b": 2}, "commands": ["two"], "machine": "m"}
    merged = common.locked_update(path, mine)
    assert merged is mine  # merged in place: a running stage's dicts stay part of the store
    assert [p.name for p in tmp_path.iterdir()] == ["store.json"]  # no lock file to commit
    assert json.loads(path.read_text()) == {
        "rows": {"b": 2, "a": 1},
        "commands": ["one", "two"],
        "machine": "m",
    }


def test_update_results_replaces_only_its_own_keys(tmp_path):
    common.update_results(tmp_path, {"rows": [1], "overhead": {"x": 1}})
    common.update_results(tmp_path, {"overhead": {"y": 2}})
    assert json.loads((tmp_path / common.RAW).read_text()) == {"rows": [1], "overhead": {"y": 2}}


def test_record_run_replaces_the_entry_of_the_same_command(tmp_path, monkeypatch):
    monkeypatch.setattr(common, "machine", lambda device=None: {"cpu": "test"})
    common.record_run(tmp_path, "python benchmarks/a.py --x 1")
    common.record_run(tmp_path, "python benchmarks/b.py")
    common.record_run(tmp_path, "python benchmarks/a.py --x 1")
    runs = json.loads((tmp_path / common.MANIFEST).read_text())["runs"]
    assert [r["command"] for r in runs] == [
        "python benchmarks/b.py",
        "python benchmarks/a.py --x 1",
    ]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    assert runs[0]["commit"] == head.stdout.strip()
    assert runs[0]["machine"] == {"cpu": "test"} and runs[0]["date"].endswith("UTC")


def test_named_value_and_markdown_table():
    assert common.named_value(["mcm-cd=1e-3", "mmd=2e-4"], "mmd", "x") == "2e-4"
    assert common.named_value(["mcm-cd=1e-3"], "mmd", "x") == "x"
    assert common.markdown_table(["a", "b"], [[1, 2.5]], "lr") == [
        "| a | b |",
        "|---|---:|",
        "| 1 | 2.5 |",
    ]


def test_samplers_store_keeps_one_command_per_script(tmp_path, monkeypatch):
    import sampler_bench

    monkeypatch.setattr(sampler_bench, "record_run", lambda *a, **k: None)
    monkeypatch.setattr(sampler_bench, "render_folder", lambda folder: None)
    (tmp_path / common.RAW).write_text(
        json.dumps({"commands": ["python benchmarks/x.py"], "seconds": 60.0})
    )

    def run(command, part):
        args = type("Args", (), {"out": str(tmp_path), "command": command, "started": 0.0})
        monkeypatch.setattr(sampler_bench.time, "time", lambda: 10.0)
        sampler_bench.store(args, part)
        return json.loads((tmp_path / common.RAW).read_text())

    run("python benchmarks/samplers_overhead.py --reps 3", {"overhead": 1})
    data = run("python benchmarks/samplers_overhead.py --reps 5", {"overhead": 2, "rows": None})
    assert data["commands"] == [
        "python benchmarks/x.py",
        "python benchmarks/samplers_overhead.py --reps 5",
    ]
    assert data["overhead"] == 2 and "rows" not in data
    assert data["seconds"] == {"earlier runs": 60.0, "benchmarks/samplers_overhead.py": 10.0}


SMOKE = {
    "samplers_nfe": [
        "samplers_nfe.py", "--num", "64", "--batch", "64", "--nfe", "4", "--methods", "ddim",
        "cov_ddim_table", "diffusers_ddim", "--table-num", "64", "--table-levels", "5",
        "--jvp-reps", "1",
    ],
    "distill_oracle": [
        "distill_oracle.py", "--samples", "64", "--stages", "teacher", "report", "--threads", "1",
    ],
    "mnist_model": [
        "mnist_model.py", "--num", "8", "--settings", "ddim:2", "--metrics", "fd-lenet",
        "--ref-num", "64",
    ],
}  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SMOKE))
def test_a_tiny_run_writes_a_study_folder(name, tmp_path):
    """A tiny run of a measuring script writes its report, raw numbers and manifest, and the
    report re-renders from the raw numbers."""
    script, *args = SMOKE[name]
    extra = ["--work-dir", str(tmp_path / "work")] if name == "distill_oracle" else []
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args, *extra, "--out", str(tmp_path / name)],
        capture_output=True, text=True, cwd=ROOT, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    folder = tmp_path / name
    runs = json.loads((folder / common.MANIFEST).read_text())["runs"]
    assert runs[-1]["command"].startswith(f"python benchmarks/{script}")
    module = {"samplers_nfe": "samplers_report", "distill_oracle": "distill_reports"}
    import importlib

    renderer = importlib.import_module(module.get(name, name))
    assert renderer.report_text(folder) == (folder / common.REPORT).read_text()


def report_commands() -> list[str]:
    """Every `python benchmarks/...` command the committed reports list."""
    found = set()
    for report in common.RESULTS.rglob(common.REPORT):
        for line in report.read_text().splitlines():  # indented, or a whole `code` line
            if line.startswith("    python benchmarks/"):
                found.add(line.strip())
            elif line.startswith("`python benchmarks/") and line.endswith("`"):
                found.add(line.strip("`"))
    return sorted(found)


class Parsed(Exception):
    """Raised instead of running a script once its flags have parsed."""


@pytest.mark.parametrize("command", report_commands())
def test_every_command_a_report_lists_parses(command, monkeypatch):
    import argparse
    import runpy
    import shlex

    _, script, *args = shlex.split(command)
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, argv=None, namespace=None):
        parse(self, argv, namespace)
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
    with pytest.raises(Parsed):
        runpy.run_path(str(ROOT / script), run_name="__main__")


def difflab_imports() -> list[tuple[str, str, str]]:
    """(script, module, name) of every `from difflab... import name` in the benchmarks, the
    imports inside functions included (they run only when a benchmark does)."""
    import ast

    found = []
    for path in sorted(BENCH.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("difflab"):
                found += [(path.name, node.module, alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [
                    (path.name, a.name, "") for a in node.names if a.name.startswith("difflab")
                ]
    return found


@pytest.mark.parametrize("script,module,name", difflab_imports())
def test_every_difflab_name_a_benchmark_imports_exists(script, module, name):
    import importlib
    import importlib.util

    imported = importlib.import_module(module)
    assert not name or hasattr(imported, name) or importlib.util.find_spec(f"{module}.{name}"), (
        f"benchmarks/{script} imports {name} from {module}, which has no such name"
    )
