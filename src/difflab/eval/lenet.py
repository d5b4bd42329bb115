"""The small feature networks behind `fd-lenet`, and the function that (re)trains them.

A LeNet-style classifier (LeCun et al. 1998): two 3x3 conv + max-pool stages and a 128-unit hidden
layer. Its 128-d hidden pre-activations are the features of `fd-lenet` (trained on MNIST) and
`fd-lenet-fashion` (Fashion-MNIST): Frechet distances for fast iteration. They are *not* FID:
numbers are comparable only with numbers of the same metric.

Reproduce the shipped weights (`src/difflab/assets/lenet_<dataset>.safetensors` + `.json`) with
`python -m difflab.eval.lenet --dataset mnist` (the exact command is recorded in the `.json`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor, nn
from tqdm import tqdm

from difflab.fileio import write_json_atomic

ASSETS = Path(__file__).resolve().parent.parent / "assets"
FEATURE_NETS = {"mnist": "lenet_mnist", "fashion_mnist": "lenet_fashion_mnist"}
"""dataset -> file stem of its shipped feature net in `difflab/assets/`."""


class LeNet(nn.Module):
    """28x28 grayscale in [-1, 1] -> 10 logits; `features` returns the 128-d hidden layer."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.hidden = nn.Linear(64 * 7 * 7, self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """Hidden pre-activations: continuous, no dead (always-zero) dims, closer to Gaussian."""
        return self.hidden(self.conv(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.relu(self.features(x)))


def _to_unit_range(images: Tensor) -> Tensor:
    """uint8 `[N, 28, 28]` -> float `[N, 1, 28, 28]` in [-1, 1]."""
    return images[:, None].float() / 127.5 - 1


def _accuracy(net: LeNet, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    net.eval()
    with torch.inference_mode():
        correct = sum(
            int((net(_to_unit_range(x)).argmax(1) == y).sum())
            for x, y in zip(images.split(batch_size), labels.split(batch_size))
        )
    return correct / len(labels)


def load_dataset(dataset: str, split: str) -> tuple[Tensor, Tensor]:
    """uint8 images `[N, 28, 28]` and int64 labels through `difflab.data`."""
    from difflab.data import load_fashion_mnist, load_mnist

    loaders = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist}
    if dataset not in loaders:
        raise ValueError(f"no feature-net training data for {dataset!r}; known: {sorted(loaders)}")
    images, labels = loaders[dataset](split)
    return torch.as_tensor(np.asarray(images)), torch.as_tensor(np.asarray(labels)).long()


def train_feature_net(
    dataset: str = "mnist",
    *,
    epochs: int = 2,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    out_dir: Path | str = ASSETS,
) -> dict:
    """Train the `fd-lenet` classifier (Adam, cosine decay, +-2 px random shifts) and save it.

    Writes `<out_dir>/<stem>.safetensors` and `<stem>.json` (command, seed, test accuracy,
    training time, sha256 of the weights) and returns that JSON as a dict.
    """
    if dataset not in FEATURE_NETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(FEATURE_NETS)}")
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = load_dataset(dataset, "train")
    test_x, test_y = load_dataset(dataset, "test")
    net = LeNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    steps = epochs * (len(train_x) // batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    start = time.perf_counter()
    with tqdm(total=steps, desc=f"train fd-lenet ({dataset})") as bar:
        for _ in range(epochs):
            net.train()
            order = torch.randperm(len(train_x), generator=generator)
            for idx in order[: steps // epochs * batch_size].split(batch_size):
                x = _to_unit_range(train_x[idx])
                # Small random shifts make the features robust to the jitter of generated digits.
                dy, dx = torch.randint(-2, 3, (2,), generator=generator).tolist()
                x = torch.roll(x, (dy, dx), dims=(2, 3))
                loss = nn.functional.cross_entropy(net(x), train_y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.perf_counter() - start
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = FEATURE_NETS[dataset]
    weights = out_dir / f"{stem}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, weights)
    record = {
        "dataset": dataset,
        "architecture": "LeNet(conv3x3 32 -> pool -> conv3x3 64 -> pool -> fc 128 -> fc 10)",
        "features": "128-d hidden pre-activations",
        "test_accuracy": _accuracy(net, test_x, test_y),
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "train_seconds": round(seconds, 1),
        "command": f"python -m difflab.eval.lenet --dataset {dataset} --epochs {epochs} "
        f"--seed {seed} --threads {torch.get_num_threads()}",
        "machine": f"{platform.machine()}, threads={torch.get_num_threads()}, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} (shared machine)",
        "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }
    write_json_atomic(out_dir / f"{stem}.json", record)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=train_feature_net.__doc__)
    parser.add_argument("--dataset", default="mnist", choices=sorted(FEATURE_NETS))
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--out-dir", default=str(ASSETS))
    args = parser.parse_args(argv)
    from difflab.allocator import apply_malloc_fix

    apply_malloc_fix()
    if args.threads:
        # On a busy 2-core machine one thread is ~3x faster than two spinning OpenMP threads.
        torch.set_num_threads(args.threads)
    record = train_feature_net(
        args.dataset, epochs=args.epochs, seed=args.seed, out_dir=args.out_dir
    )
    json.dump(record, sys.stdout, indent=2)


if __name__ == "__main__":
    main()
