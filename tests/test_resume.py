"""Resuming runs: finished runs, run directories anywhere, copied configs, corrupt checkpoints,
`keep_last`, failed checkpoint writes and their temporaries."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_run import TINY, fast_overrides

from difflab.config import load_config
from difflab.train import (
    CheckpointError,
    list_checkpoints,
    load_training_config,
    newest_valid_checkpoint,
    read_metrics,
    resume_run,
    run_training,
)
from difflab.train import checkpoint as checkpoint_module
from difflab.train.__main__ import main as train_main

FAST = fast_overrides(8)


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(out_dir: Path, *overrides: str):
    return load_config(TINY, [*FAST, f"train.out_dir={out_dir}", *overrides])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def events(run_dir: Path) -> list[str]:
    return [r.get("event") for r in read_metrics(run_dir / "metrics.jsonl") if "event" in r]


def dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    return int(done.stdout)


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> Path:
    """4 steps, checkpoints at 2 and 4 (tests copy it)."""
    out = tmp_path_factory.mktemp("run4") / "run"
    torch.set_num_threads(1)
    run_training(tiny_config(out, "train.steps=4", "train.ckpt_every=2", "train.keep_last=5"))
    return out


def test_resuming_a_finished_run_says_so_and_touches_nothing(run4, tmp_path, capsys):
    run = shutil.copytree(run4, tmp_path / "run")
    before = snapshot(run)
    assert run_training(tiny_config(run, "train.steps=4"), resume=True) == run
    out = capsys.readouterr().out
    assert f"run {run} is already finished at step 4 of 4; raise train.steps to continue" in out
    assert snapshot(run) == before


def test_resume_prints_the_step_and_checkpoint(run4, tmp_path, capsys):
    run = shutil.copytree(run4, tmp_path / "run")
    run_training(tiny_config(run, "train.steps=5", "train.ckpt_every=2"), resume=True)
    out = capsys.readouterr().out
    assert f"resumed from step 4 of 5 (checkpoint {run / 'checkpoints' / 'step_0000004'})" in out
    assert newest_valid_checkpoint(run).step == 5


def test_resume_run_dir_uses_its_own_config_wherever_it_is(run4, tmp_path, monkeypatch, capsys):
    """A copied run directory, named by a relative path, resumes itself with its stored
    config: not the original run its `config.yaml` names as `train.out_dir`."""
    original = shutil.copytree(run4, tmp_path / "original")
    (original / "config.yaml").write_text(
        (run4 / "config.yaml").read_text().replace(str(run4), str(original))
    )
    copy = shutil.copytree(original, tmp_path / "copies" / "copy")
    untouched = snapshot(original)
    monkeypatch.chdir(tmp_path / "copies")
    assert resume_run("copy", ["train.steps=6"]) == Path("copy")
    assert "resumed from step 4 of 6 (checkpoint copy/checkpoints/step_0000004)" in (
        capsys.readouterr().out
    )
    assert newest_valid_checkpoint(copy).step == 6
    assert snapshot(original) == untouched
    assert load_config(copy / "config.yaml").train.out_dir == "copy"
    # moved, and with no config.yaml: the newest checkpoint's config is used
    moved = tmp_path / "moved"
    copy.rename(moved)
    (moved / "config.yaml").unlink()
    resume_run(moved, ["train.steps=7"])
    assert newest_valid_checkpoint(moved).step == 7
    with pytest.raises(ValueError, match="train.out_dir cannot be overridden"):
        resume_run(moved, [f"train.out_dir={original}"])
    with pytest.raises(ValueError, match="no such run directory"):
        resume_run(tmp_path / "nowhere")


def test_a_config_copied_from_another_run_is_refused(run4, tmp_path, capsys):
    copy = shutil.copytree(run4, tmp_path / "copy")
    untouched = snapshot(run4)
    with pytest.raises(ValueError, match=r"lies in run directory .*copy, but its train.out_dir"):
        load_training_config(copy / "config.yaml", ["train.steps=6"], resume=True)
    rc = train_main([str(copy / "config.yaml"), "train.steps=6", "--resume"])
    err = capsys.readouterr().err
    assert rc == 2 and f"--resume {copy}" in err and len(err.strip().splitlines()) == 1
    assert snapshot(run4) == untouched and newest_valid_checkpoint(copy).step == 4
    # the way out the message names works
    assert train_main(["--resume", str(copy), "train.steps=5"]) == 0
    assert newest_valid_checkpoint(copy).step == 5 and snapshot(run4) == untouched


def _corrupt(ckpt_dir: Path) -> None:
    weights = ckpt_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])


def test_every_checkpoint_corrupt_refuses_to_start_over(run4, tmp_path):
    run = shutil.copytree(run4, tmp_path / "run")
    for path in list_checkpoints(run):
        _corrupt(path)
    before = snapshot(run)
    with pytest.warns(UserWarning), pytest.raises(CheckpointError) as err:
        run_training(tiny_config(run, "train.steps=6"), resume=True)
    msg = str(err.value)
    assert "step_0000002" in msg and "step_0000004" in msg and "truncated" in msg
    assert "delete" in msg and "without --resume" in msg
    assert snapshot(run) == before  # the old metrics are not appended to


def test_corrupt_checkpoints_do_not_count_toward_keep_last(tmp_path):
    run = tmp_path / "run"
    run_training(tiny_config(run, "train.steps=6", "train.ckpt_every=2", "train.keep_last=5"))
    for step in ("step_0000004", "step_0000006"):
        _corrupt(run / "checkpoints" / step)
    # resume from 2 and stop after one step (a time limit already used up): with keep_last=2,
    # the two corrupt newer checkpoints must not push the good step 2 out
    with pytest.warns(UserWarning, match="unusable"):
        run_training(tiny_config(run, "train.steps=6", "train.ckpt_every=0", "train.keep_last=2",
                                 "train.max_minutes=1e-9"), resume=True)  # fmt: skip
    names = [p.name for p in list_checkpoints(run)]
    assert names == ["step_0000002", "step_0000003", "step_0000004", "step_0000006"]
    # once enough valid ones are newer, old and corrupt ones go
    with pytest.warns(UserWarning, match="unusable"):
        run_training(tiny_config(run, "train.steps=5", "train.ckpt_every=1", "train.keep_last=2"),
                     resume=True)  # fmt: skip
    names = [p.name for p in list_checkpoints(run)]
    assert names == ["step_0000004", "step_0000005", "step_0000006"]  # 6 is corrupt: kept


def test_failed_checkpoint_write_cleans_up_and_names_the_last_good_one(
    tmp_path, monkeypatch, capsys
):
    run = tmp_path / "run"
    real = checkpoint_module.write_synced

    def disk_full_at_step_4(path, data):
        if "step_0000004" in str(path) and path.name == "optimizer.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)

    monkeypatch.setattr(checkpoint_module, "write_synced", disk_full_at_step_4)
    argv = [str(TINY), *FAST, f"train.out_dir={run}", "train.steps=4", "train.ckpt_every=2"]
    assert train_main(argv) == 2
    err = capsys.readouterr().err.strip()
    good = run / "checkpoints" / "step_0000002"
    assert len(err.splitlines()) == 1 and "No space left on device" in err
    assert err.endswith(f"the last good checkpoint is {good}")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_0000002"]
    monkeypatch.undo()

    # temporaries of crashed processes are removed at start-up; a live process's stay
    pid = dead_pid()
    (run / "checkpoints" / f".tmp-step_0000004-{pid}").mkdir()
    (run / "checkpoints" / f".tmp-step_0000004-{pid}" / "model.safetensors").write_bytes(b"x")
    (run / "checkpoints" / f".latest.tmp-{pid}").write_text("step_0000004\n")
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]) as live:
        (run / "checkpoints" / f".latest.tmp-{live.pid}").write_text("step_0000004\n")
        assert train_main([*argv, "--resume"]) == 0
        live.kill()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        f".latest.tmp-{live.pid}", "latest", "step_0000002", "step_0000004",
    ]  # fmt: skip
    assert newest_valid_checkpoint(run).step == 4
