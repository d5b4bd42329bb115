"""Trainer, checkpoints, resume, DDP and configs on the 8x8 digits with a tiny U-ViT."""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

# a smaller batch and no sampling/plots unless a test asks: every test stays around a second
from tiny_run import ROOT, TINY, fast_overrides

from difflab.config import OptimConfig, load_config
from difflab.data import make_dataset
from difflab.diffusion.parameterization import as_denoiser
from difflab.nets import build_net
from difflab.sampling import sample_ddim, uniform_t_grid
from difflab.train import (
    EMA,
    Checkpoint,
    CheckpointError,
    ShardedBatchSampler,
    Trainer,
    TrainingDiverged,
    apply_malloc_fix,
    diffusion_loss_fn,
    export_model,
    list_checkpoints,
    load_denoiser,
    load_model,
    newest_valid_checkpoint,
    read_metrics,
    run_training,
    train_step,
)
from difflab.train.trainer import learning_rate, make_optimizer

FAST = fast_overrides(16)
# one thread: on 2 shared cores OpenMP's spinning threads make tiny steps ~20x slower, and the
# subprocess runs must use the same thread count to agree bit for bit
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_config(out_dir: Path, *overrides: str):
    return load_config(TINY, [*FAST, f"train.out_dir={out_dir}", *overrides])


def losses(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def events(run_dir: Path, name: str) -> list[dict]:
    return [r for r in read_metrics(run_dir / "metrics.jsonl") if r.get("event") == name]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """6 steps with checkpoints at 3 and 6 (shared by the checkpoint tests; they copy it)."""
    out = tmp_path_factory.mktemp("run") / "run"
    torch.set_num_threads(1)
    run_training(tiny_config(out, "train.steps=6", "train.ckpt_every=3", "train.keep_last=5"))
    return out


# --------------------------------------------------------------------------- configs


def test_config_loads_and_override_wins(tmp_path):
    cfg = load_config(TINY, ["optim.lr=0.5", "model.kwargs.transformer_depth=2", "train.steps=7"])
    assert cfg.optim.lr == 0.5 and cfg.train.steps == 7
    assert cfg.model.kwargs["transformer_depth"] == 2
    assert cfg.model.kwargs["channels"] == [16]  # untouched keys come from the file
    assert cfg.train.compile == "auto"
    assert load_config(TINY, ["train.compile=false"]).train.compile is False


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.stpes=3", "train.stpes"),
        ("bogus=1", "bogus"),
        ("model.kwargs.dpeth=4", "model.kwargs.dpeth"),
        ("diffusion.schedule_kwargs.logsnr_mn=-10", "diffusion.schedule_kwargs.logsnr_mn"),
        ("data.kwargs.pad_too=32", "data.kwargs.pad_too"),
    ],
)
def test_config_rejects_unknown_keys_by_name(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(TINY, [override])


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.steps=many", "train.steps"),
        ("optim.lr=fast", "optim.lr"),
        ("diffusion.prediction=score", "diffusion.prediction"),
        ("train.precision=fp8", "train.precision"),
        ("optim.ema_decays=[1.5]", "optim.ema_decays"),
        ("optim.decay=step", "optim.decay"),
        ("optim.min_lr=1.0", "optim.min_lr"),
        ("optim.decay_steps=0", "optim.decay_steps"),
        ("optim.decay_steps=10", "optim.decay_steps"),  # not past the 20 warmup steps
        ("model.kwargs.heads=3", "model.kwargs"),  # 32 is not divisible by 3: the net says so
    ],
)
def test_config_rejects_wrong_types_and_values_by_name(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        load_config(TINY, [override])


def test_config_file_with_unknown_key_is_rejected(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.read_text() + "\noptim_typo:\n  lr: 1.0\n")
    with pytest.raises(ValueError, match="optim_typo"):
        load_config(bad)


def test_shipped_configs_load_and_build_their_nets():
    """Every recipe loads and builds its net; `mnist_uvit.yaml` is the shipped model's recipe
    (model, data and diffusion sections equal to the config stored in the model file)."""
    import difflab.methods  # noqa: F401  (registers the paper-level training methods)
    from difflab import api
    from difflab.train import method_options
    from difflab.train.checkpoint import build_net_from_config

    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        net = build_net_from_config(cfg)
        method_options(cfg)  # a known method with valid options
        if cfg.method.name != "diffusion":
            continue  # sequences, tokens, latents: the method checks its data against its net
        sizes = {"digits": 8, "mnist": 28, "fashion_mnist": 28}
        sizes["folder"] = cfg.data.kwargs.get("resolution")
        stored = cfg.data.kwargs.get("resolution") or sizes[cfg.data.name]  # upsampled data
        resolution = cfg.data.kwargs.get("pad_to", stored)
        assert net.config.resolution == resolution, path
    shipped = api.load(api.shipped_model_path()).config
    recipe = load_config(ROOT / "configs" / "mnist_uvit.yaml")
    assert (shipped.model, shipped.data, shipped.diffusion) == (
        recipe.model,
        recipe.data,
        recipe.diffusion,
    )


# --------------------------------------------------------------------------- pieces


def test_ema_update_is_the_convex_combination():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, [0.9, 0.5])
    old = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    ema.update(net)
    for d in (0.9, 0.5):
        avg = ema.average(d).state_dict()
        for k, new in net.state_dict().items():
            torch.testing.assert_close(avg[k], d * old[k] + (1 - d) * new, rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="0.7"):
        ema.average(0.7)


def test_ema_warmup_follows_the_schedule_and_forgets_the_initial_weights():
    net = torch.nn.Linear(3, 2)
    ema = EMA(net, [0.999], warmup=True)
    assert ema.decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema.decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema.decay_at(0.999, 10**6) == 0.999
    init = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    for step in range(600):
        ema.update(net, step)
    # the weight left on the initial net is the product of the decays, prod (1+n)/(10+n) =
    # 9! 600! / 609! (about 1e-20) with warm-up, against 0.999^600 = 0.55 without
    left = math.factorial(9) * math.factorial(600) / math.factorial(609)
    assert left < 1e-15
    for k, v in ema.average().state_dict().items():
        torch.testing.assert_close(v - init[k], torch.full_like(v, 1 - left), rtol=1e-5, atol=1e-6)
    plain = EMA(torch.nn.Linear(3, 2), [0.999])
    assert plain.decay_at(0.999, 0) == 0.999
    with pytest.raises(ValueError, match="step"):
        ema.update(net)


def test_sharded_batches_split_the_global_batch_and_depend_only_on_seed_and_epoch():
    one = ShardedBatchSampler(100, 8, seed=3)
    ranks = [ShardedBatchSampler(100, 8, seed=3, rank=r, world_size=2) for r in range(2)]
    for k in (0, 1, 12, 13, 40):  # 12 batches per epoch: crosses epoch boundaries
        halves = [s.indices(k) for s in ranks]
        assert len(halves[0]) == len(halves[1]) == 4
        assert halves[0] + halves[1] == one.indices(k)
    assert one.indices(0) != one.indices(12)  # a new permutation each epoch
    resumed = iter(ShardedBatchSampler(100, 8, seed=3, start=13))
    assert next(resumed) == one.indices(13)
    with pytest.raises(ValueError, match="divisible"):
        ShardedBatchSampler(100, 9, seed=0, world_size=2)


def test_nonfinite_loss_skips_the_update():
    net = torch.nn.Linear(4, 1)
    opt = make_optimizer([net], load_config(TINY).optim)
    ema = EMA(net, [0.9])
    before = {k: v.clone() for k, v in net.state_dict().items()}
    ema_before = {k: v.clone() for k, v in ema.average().state_dict().items()}
    batch = (torch.randn(5, 4), None)

    def nan_loss(models, batch, generator):
        return models["net"](batch[0]).squeeze(1) * math.nan

    result = train_step(nan_loss, {"net": net}, batch, opt, generator=torch.Generator(), ema=ema)
    assert result.skipped and math.isnan(result.loss)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in ema.average().state_dict().items())
    assert not opt.state  # AdamW never stepped

    def fine_loss(models, batch, generator):
        return models["net"](batch[0]).squeeze(1) ** 2

    # the reported gradient norm is that of the mean loss, computed here on a copy of the net
    copy = torch.nn.Linear(4, 1)
    copy.load_state_dict(net.state_dict())
    fine_loss({"net": copy}, batch, None).mean().backward()
    grad_norm = math.sqrt(sum(float(p.grad.square().sum()) for p in copy.parameters()))
    result = train_step(fine_loss, {"net": net}, batch, opt, generator=torch.Generator(), ema=ema)
    assert not result.skipped and result.grad_norm == pytest.approx(grad_norm, rel=1e-5)
    with torch.no_grad():
        assert result.loss == pytest.approx(float(fine_loss({"net": copy}, batch, None).mean()))
    assert not torch.equal(before["weight"], net.weight)


# --------------------------------------------------------------------------- end to end


def test_train_checkpoint_resume_sample(tmp_path):
    out = tmp_path / "run"
    run = run_training(
        tiny_config(
            out,
            "train.steps=4",
            "train.ckpt_every=2",
            "train.sample_every=4",
            "train.sample_num=10",
            "train.sample_steps=3",
        )
    )
    assert run == out
    assert [p.name for p in list_checkpoints(out)] == ["step_0000002", "step_0000004"]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_0000004"
    assert (out / "samples" / "step_0000004.png").is_file() and (out / "loss.png").is_file()

    with pytest.warns(UserWarning, match="changed config.*train.sample_every"):
        run_training(tiny_config(out, "train.steps=6", "train.ckpt_every=2"), resume=True)
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5, 6]
    assert events(out, "resume")[0]["checkpoint"].endswith("step_0000004")
    ckpt = newest_valid_checkpoint(out)
    assert ckpt.step == 6 and ckpt.state["data"] == {
        "batches_consumed": 6,
        "epoch": 0,
        "batch_in_epoch": 6,
        "permutation_seed": 0,
        "global_batch": 16,
    }

    net, cfg = load_model(out, ema=0.999)
    stored = ckpt.tensors("ema_0.999")
    assert all(torch.equal(stored[k], v) for k, v in net.state_dict().items())
    raw, _ = load_model(out, ema=False)
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in raw.state_dict().items())

    # the loaded denoiser is the EMA net's `x_hat` in its parameterization, clipped to [-1, 1]
    make_denoise, cfg = load_denoiser(out, ema=0.999)
    labels = torch.arange(10)
    z, level = torch.randn(10, 1, 8, 8), torch.linspace(-10.0, 10.0, 10)
    raw_x = as_denoiser(net, cfg.diffusion.prediction, labels=labels)(z, level)
    assert raw_x.abs().max() > 1.0  # (so the clipping is exercised)
    torch.testing.assert_close(make_denoise(labels=labels)(z, level), raw_x.clamp(-1, 1))
    grid = uniform_t_grid(cfg.diffusion.build_schedule(), 4)
    x = sample_ddim(make_denoise(labels=labels), z, grid)
    assert float(x.abs().max()) <= 1.0  # the last DDIM step returns the clipped x_hat

    exported = export_model(out, tmp_path / "tiny.safetensors", ema=0.999)
    net2, cfg2 = load_model(exported)
    assert cfg2 == cfg
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in net2.state_dict().items())
    assert exported.stat().st_size < ckpt.path.joinpath("optimizer.safetensors").stat().st_size


def test_init_from_starts_a_fresh_run_at_the_models_ema_weights(trained_run, tmp_path):
    start, _ = load_model(trained_run, ema=True)
    # lr 1e-30 (below float32 resolution): the fine-tuned net, its EMA and the source EMA agree
    tuned = run_training(
        tiny_config(tmp_path / "ft", "train.steps=2", f"train.init_from={trained_run}",
                    "optim.lr=1e-30", "diffusion.weighting_kwargs={bias: 1.0}")
    )  # fmt: skip
    start_event = events(tuned, "start")[0]
    assert start_event["checkpoint"] is None and start_event["init_from"] == str(trained_run)
    assert newest_valid_checkpoint(tuned).step == 2
    for ema in (False, True):
        net, cfg = load_model(tuned, ema=ema)
        assert all(torch.equal(v, start.state_dict()[k]) for k, v in net.state_dict().items())
    assert cfg.diffusion.weighting_kwargs == {"bias": 1.0}
    fresh, _ = load_model(run_training(tiny_config(tmp_path / "new", "train.steps=1")), ema=False)
    assert any(not torch.equal(v, start.state_dict()[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(ValueError, match="train.init_from .* holds model .*not this config's"):
        run_training(tiny_config(tmp_path / "bad", f"train.init_from={trained_run}",
                                 "model.kwargs.transformer_depth=2"))  # fmt: skip


def test_fresh_run_refuses_to_overwrite_checkpoints(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    with pytest.raises(ValueError, match="--resume"):
        run_training(tiny_config(run, "train.steps=6"))


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory) -> list[str]:
    """The digits as an `.npz` for the subprocess runs: the `array` dataset spares each child
    process the scikit-learn import (seconds on a loaded 2-core machine)."""
    data = make_dataset("digits")
    images = torch.stack([data[i][0] for i in range(len(data))]).numpy()
    labels = [data[i][1] for i in range(len(data))]
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(path, images=images, labels=np.asarray(labels))
    return [
        "data.name=array",
        f"data.kwargs.path={path}",
        "data.kwargs.value_range=[-1,1]",
        "data.kwargs.num_classes=10",
    ]


def _cli(out: Path, data: list[str], *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "difflab.train",
        str(TINY),
        *FAST,
        *data,
        f"train.out_dir={out}",
        *overrides,
    ]


def test_time_limit_stops_with_a_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    # a limit already used up after the first step: the run stops there, with a checkpoint
    run_training(tiny_config(out, "train.steps=5", "train.ckpt_every=0", "train.max_minutes=1e-9"))
    assert [p.name for p in list_checkpoints(out)] == ["step_0000001"]
    assert events(out, "time_limit")[0]["step"] == 1
    run_training(tiny_config(out, "train.steps=5", "train.ckpt_every=0"), resume=True)
    assert newest_valid_checkpoint(out).step == 5
    assert [s for s, _ in losses(out)] == [1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match="train.max_minutes"):
        tiny_config(out, "train.max_minutes=-1")


# runs `python -m difflab.train ARGS` with `train_step` wrapped to SIGKILL the process in the
# middle of step KILL_AT (0-based): deterministic, whatever the machine's speed
KILL_AT = 10
KILLER = f"""
import os, signal, sys
from difflab.train import trainer
from difflab.train.__main__ import main
real, calls = trainer.train_step, []
def train_step(*args, **kwargs):
    if len(calls) == {KILL_AT}:
        os.kill(os.getpid(), signal.SIGKILL)
    calls.append(1)
    return real(*args, **kwargs)
trainer.train_step = train_step
sys.exit(main(sys.argv[1:]))
"""


def test_resume_after_sigkill_repeats_the_uninterrupted_run_exactly(tmp_path, digits_npz):
    # a cosine decay as well: the learning rate is a function of the step, so a resume repeats it
    # and the EMA warm-up: its counter is the step, so the resumed average is the same too
    common = ["train.steps=24", "train.ckpt_every=4", "train.keep_last=2", "optim.decay=cosine",
              "optim.ema_warmup=true"]  # fmt: skip
    full, killed = tmp_path / "full", tmp_path / "killed"
    reference = subprocess.Popen(
        _cli(full, digits_npz, *common),
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    proc = subprocess.run(
        [sys.executable, "-c", KILLER, *_cli(killed, digits_npz, *common)[3:]],
        env=ENV,
        capture_output=True,
        timeout=300,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    killed_at = newest_valid_checkpoint(killed).step
    assert killed_at == 8  # killed in step 10 (0-based), after the checkpoint at step 8

    subprocess.run(
        [*_cli(killed, digits_npz, *common), "--resume"],
        env=ENV,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert reference.wait(timeout=300) == 0
    assert events(killed, "resume")[0]["step"] == killed_at
    assert len(losses(full)) == 24
    assert losses(killed) == losses(full)  # bitwise: JSON floats round-trip exactly
    assert events(killed, "end")[0]["replica_hashes"] == events(full, "end")[0]["replica_hashes"]
    ends = [newest_valid_checkpoint(run) for run in (killed, full)]
    names = [n.removesuffix(".safetensors") for n in ends[1].state["manifest"]]
    emas = [{n: c.tensors(n) for n in names if n.startswith("ema_")} for c in ends]
    assert emas[0].keys() == emas[1].keys() and emas[0]
    assert all(torch.equal(emas[0][k][n], v) for k in emas[1] for n, v in emas[1][k].items())


def _optim(**kw) -> OptimConfig:
    return OptimConfig(**{"lr": 1.0, "warmup_steps": 4, **kw})


@pytest.mark.parametrize("decay", ["constant", "cosine", "linear"])
def test_learning_rate_warms_up_then_decays_to_min_lr(decay):
    optim = _optim(decay=decay, min_lr=0.1)
    lrs = [learning_rate(step, optim, total_steps=24) for step in range(30)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]  # linear warmup reaches lr at the last warmup step
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # then never increases
    if decay == "constant":
        assert set(lrs[3:]) == {1.0}
    else:
        # halfway through the decay (step 4 + 20 / 2) both shapes are at the midpoint
        assert lrs[14] == pytest.approx(0.55, abs=1e-12)
        assert lrs[24:] == [pytest.approx(0.1, abs=1e-12)] * 6  # reached at the end, then held
    if decay == "cosine":  # cos: flat at both ends, linear: constant slope
        assert lrs[4] - lrs[5] < lrs[13] - lrs[14]


def test_learning_rate_decay_steps_override_the_run_length():
    optim = _optim(decay="linear", decay_steps=12)
    assert learning_rate(8, optim, total_steps=1000) == pytest.approx(0.5)
    assert learning_rate(12, optim, total_steps=1000) == 0.0


def test_trainer_uses_and_logs_the_scheduled_learning_rate(tmp_path):
    schedule = ["optim.lr=1e-3", "optim.decay=linear", "optim.warmup_steps=2", "optim.min_lr=1e-4"]
    cfg = tiny_config(tmp_path / "run", "train.steps=6", "train.log_every=1", *schedule)
    run_training(cfg)
    logged = [r["lr"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "lr" in r]
    assert logged == [learning_rate(step, cfg.optim, 6) for step in range(6)]
    assert logged[1] == pytest.approx(1e-3) and logged[-1] == pytest.approx(1e-4 + 9e-4 / 4)


def test_ddp_two_processes_keep_identical_replicas(tmp_path, digits_npz):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "difflab.train",
        str(TINY),
        *FAST,
        *digits_npz,
        f"train.out_dir={out}",
        "train.steps=4",
        "train.ckpt_every=2",
        "data.batch_size=16",
    ]
    done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    start, end = events(out, "start")[0], events(out, "end")[0]
    assert (start["world_size"], start["global_batch"], start["local_batch"]) == (2, 16, 8)
    hashes = end["replica_hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    ckpt = newest_valid_checkpoint(out)
    assert ckpt.step == 4 and ckpt.tensors("rng").keys() == {"rank0.torch", "rank1.torch"}


# --------------------------------------------------------------------------- failures


def test_corrupt_checkpoint_is_named_and_the_previous_one_still_loads(trained_run, tmp_path):
    run = shutil.copytree(trained_run, tmp_path / "run")
    newest = run / "checkpoints" / "step_0000006"
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    with pytest.raises(CheckpointError, match=str(weights)):
        Checkpoint(newest).verify()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_model(newest, ema=False)
    with pytest.warns(UserWarning, match="step_0000006"):
        assert newest_valid_checkpoint(run).step == 3
    with pytest.warns(UserWarning, match="unusable"):
        net, _ = load_model(run)  # falls back to step 3
    assert all(
        torch.equal(v, net.state_dict()[k])
        for k, v in Checkpoint(run / "checkpoints" / "step_0000003").tensors("ema_0.99").items()
    )

    flipped = newest / "ema_0.99.safetensors"
    data = bytearray(flipped.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    flipped.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        Checkpoint(newest).tensors("ema_0.99")

    with pytest.warns(UserWarning, match="step_0000006"):
        resumed = tiny_config(run, "train.steps=6", "train.ckpt_every=3", "train.keep_last=5")
        run_training(resumed, resume=True)  # from step 3
    assert events(run, "resume")[0]["step"] == 3
    assert Checkpoint(newest).verify().step == 6  # rewritten, valid again


@pytest.mark.parametrize("failure", ["raises", "returns_nan"])
def test_nonfinite_sample_grid_is_skipped_with_a_warning_and_training_goes_on(tmp_path, failure):
    def sample_fn(net, noise, labels):
        if failure == "raises":  # what the registered samplers do on non-finite output
            raise FloatingPointError("sampler ddim returned non-finite values")
        return torch.full_like(noise, math.nan)

    cfg = tiny_config(tmp_path / "run", "train.steps=2", "train.sample_every=1")
    trainer = Trainer(cfg, build_net(cfg.model.name, **cfg.model.kwargs), make_dataset("digits"),
                      sample_fn=sample_fn)  # fmt: skip
    with pytest.warns(UserWarning, match="step 1: no sample grid"):
        trainer.fit()
    assert trainer.step == 2 and not (tmp_path / "run" / "samples").exists()


def test_nan_losses_are_skipped_counted_and_repeated_ones_stop_the_run(tmp_path):
    cfg = tiny_config(
        tmp_path / "nan", "train.steps=12", "train.ckpt_every=4", "train.max_nan_steps=3"
    )
    base = diffusion_loss_fn(cfg.diffusion)
    calls = []

    def loss_fn(models, batch, generator):
        calls.append(1)
        loss = base(models, batch, generator)
        return loss * math.nan if len(calls) in (2, 6, 7, 8) else loss

    torch.manual_seed(0)
    net = build_net(cfg.model.name, **cfg.model.kwargs)
    trainer = Trainer(cfg, net, make_dataset("digits"), loss_fn=loss_fn)
    with (
        pytest.warns(UserWarning, match="non-finite"),
        pytest.raises(TrainingDiverged, match=r"3 consecutive non-finite loss.*step_0000004"),
    ):
        trainer.fit()
    assert trainer.step == 8 and trainer.nan_skipped == 4
    logged = losses(tmp_path / "nan")
    assert [s for s, v in logged if math.isnan(v)] == [2, 6, 7]  # step 8 stopped the run
    assert [r["step"] for r in events(tmp_path / "nan", "nonfinite")] == [2, 6, 7, 8]
    last = Checkpoint(tmp_path / "nan" / "checkpoints" / "step_0000004").verify()
    assert [p.name for p in list_checkpoints(tmp_path / "nan")] == ["step_0000004"]
    assert last.state["nan"] == {"skipped": 1, "consecutive": 0}
    assert load_model(last.path)[1] == cfg


def test_malloc_fix_applies_and_honours_the_opt_out(monkeypatch):
    monkeypatch.setenv("DIFFLAB_NO_MALLOC_FIX", "1")
    assert apply_malloc_fix() is False
    monkeypatch.delenv("DIFFLAB_NO_MALLOC_FIX")
    supported = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"
    assert apply_malloc_fix() is supported and apply_malloc_fix() is supported


def test_run_metrics_are_json_lines(trained_run):
    for line in (trained_run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)
    assert [s for s, _ in losses(trained_run)] == [1, 2, 3, 4, 5, 6]
