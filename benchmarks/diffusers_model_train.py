"""Train a diffusers `UNet2DModel` on MNIST with diffusers' own recipe, for the study "difflab's
samplers on a diffusers model" (`benchmarks/diffusers_model_samplers.py` samples it).

The recipe is diffusers' unconditional training example (`train_unconditional.py`) cut to a CPU
budget: `DDPMScheduler` (1000 steps, linear betas, `epsilon` prediction), the plain eps-MSE at a
uniformly drawn integer timestep, AdamW (betas 0.95/0.999, weight decay 1e-6), a cosine learning
rate with linear warm-up (`diffusers.optimization.get_cosine_schedule_with_warmup`) and an EMA of
the weights (`diffusers.training_utils.EMAModel`, warm-up power 3/4). Two changes for a short run:
a larger learning rate (5e-4 instead of 1e-4), a batch of 64 and a cosine decay over the
steps the budget allows; the net is small (0.65M parameters, 28x28 with two downsamplings).
Nothing of difflab is used in training except the MNIST loader. The EMA weights and the
scheduler are written with `save_pretrained` (safetensors) every `--save-every` steps and at
the end, so a stopped run loses at most that much:

    <out>/unet/{config.json,diffusion_pytorch_model.safetensors}   the EMA weights
    <out>/scheduler/scheduler_config.json
    <out>/train_state.json                                          step, loss curve, seconds

    OMP_NUM_THREADS=1 python benchmarks/diffusers_model_train.py \\
        --minutes 23 --out runs/diffusers_mnist
    OMP_NUM_THREADS=1 python benchmarks/diffusers_model_train.py --minutes 20 --max-steps 1000 \\
        --warmup 100 --init runs/diffusers_mnist --out runs/diffusers_mnist2   # a second phase
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

UNET_CONFIG = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    block_out_channels=(16, 32, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    layers_per_block=1,
    norm_num_groups=8,
    attention_head_dim=16,
)


def save(out: Path, ema, unet, scheduler, state: dict) -> None:
    ema.store(unet.parameters())
    ema.copy_to(unet.parameters())
    unet.save_pretrained(out / "unet", safe_serialization=True)
    ema.restore(unet.parameters())
    scheduler.save_pretrained(out / "scheduler")
    tmp = out / "train_state.json.tmp"
    tmp.write_text(json.dumps(state, indent=1))
    tmp.replace(out / "train_state.json")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget")
    p.add_argument("--max-steps", type=int, default=2200, help="cosine schedule length")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/diffusers_mnist")
    p.add_argument(
        "--init",
        default=None,
        help="continue from the EMA weights of an earlier --out (a fresh optimizer and EMA)",
    )
    args = p.parse_args(argv)
    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    from difflab.data.mnist import load_mnist

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    images, _ = load_mnist("train")
    data = torch.from_numpy(images).float().div(127.5).sub(1.0).unsqueeze(1)  # [N, 1, 28, 28]
    unet = UNet2DModel(**UNET_CONFIG)
    earlier: dict = {}
    if args.init:
        from safetensors.torch import load_file

        init = Path(args.init)
        unet.load_state_dict(load_file(init / "unet" / "diffusion_pytorch_model.safetensors"))
        earlier = json.loads((init / "train_state.json").read_text())
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    opt = torch.optim.AdamW(unet.parameters(), lr=args.lr, betas=(0.95, 0.999), weight_decay=1e-6)
    lr_sched = get_cosine_schedule_with_warmup(opt, args.warmup, args.max_steps)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    params = sum(p.numel() for p in unet.parameters())
    print(f"UNet2DModel: {params / 1e6:.2f}M parameters; {len(data)} images", flush=True)

    gen = torch.Generator().manual_seed(args.seed)
    start, step, losses = time.perf_counter(), 0, []
    state: dict = {"config": UNET_CONFIG, "args": vars(args), "parameters": params}
    if earlier:  # the phases so far: steps and seconds add up
        state["earlier_phases"] = [*earlier.get("earlier_phases", []), {
            k: earlier.get(k) for k in ("args", "step", "seconds", "loss_per_100")
        }]  # fmt: skip
    unet.train()
    while step < args.max_steps and time.perf_counter() - start < 60 * args.minutes:
        idx = torch.randint(0, len(data), (args.batch,), generator=gen)
        x = data[idx]
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (args.batch,), generator=gen)
        noisy = scheduler.add_noise(x, noise, t)
        loss = torch.nn.functional.mse_loss(unet(noisy, t).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        ema.step(unet.parameters())
        step += 1
        losses.append(float(loss.detach()))
        if step % 100 == 0:
            seconds = time.perf_counter() - start
            mean = sum(losses[-100:]) / 100
            print(
                f"step {step} loss {mean:.4f} {step * args.batch / seconds:.0f} img/s", flush=True
            )
        if step % args.save_every == 0:
            seconds = time.perf_counter() - start
            state.update(step=step, seconds=round(seconds, 1), ema_decay=ema.cur_decay_value)
            state["loss_per_100"] = [
                round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 5)
                for i in range(0, len(losses), 100)
            ]
            save(out, ema, unet, scheduler, state)
    seconds = time.perf_counter() - start
    state.update(step=step, seconds=round(seconds, 1), ema_decay=ema.cur_decay_value)
    state["loss_per_100"] = [
        round(sum(losses[i : i + 100]) / len(losses[i : i + 100]), 5)
        for i in range(0, len(losses), 100)
    ]
    save(out, ema, unet, scheduler, state)
    print(f"done: {step} steps in {seconds:.0f} s -> {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
