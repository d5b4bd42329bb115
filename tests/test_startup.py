"""Start-up cost: the command-line and training modules import nothing heavy until it is used
(scikit-learn, matplotlib and `torch._dynamo` each cost one to two seconds to import)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

TINY = Path(__file__).resolve().parents[1] / "configs" / "digits_tiny.yaml"
HEAVY = ["sklearn", "matplotlib", "torch._dynamo"]
MODULES = ["difflab.cli", "difflab.train", "difflab.config", "difflab.data", "difflab.api"]


def _heavy_after(code: str) -> list[str]:
    """Run `code` in a fresh interpreter (other tests' imports do not count) and list the
    heavy modules it left imported."""
    probe = (
        f"{code}\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_importing_the_entry_points_imports_nothing_heavy():
    code = (
        "import importlib\n"
        f"for name in {MODULES!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ModuleNotFoundError as err:\n"  # a module another change has not made yet
        "        assert err.name == name, err\n"
    )
    assert _heavy_after(code) == []


def test_a_training_step_on_the_digits_imports_nothing_heavy(tmp_path):
    """Loading the 8x8 digits and taking training steps (the things every `difflab train` does
    first) import neither scikit-learn nor matplotlib; `torch.optim` itself imports
    `torch._dynamo`, a cost training pays on use."""
    code = f"""
import torch
from difflab.config import load_config
from difflab.data import make_dataset
from difflab.nets import build_net
from difflab.train import Trainer
cfg = load_config("{TINY}", ["train.steps=2", "data.batch_size=4",
    "train.out_dir={tmp_path / "run"}", "train.progress=false", "train.tensorboard=false",
    "train.ckpt_every=0", "train.sample_every=0"])
trainer = Trainer(cfg, build_net(cfg.model.name, **cfg.model.kwargs), make_dataset("digits"))
trainer._plot = lambda: None  # the loss plot at the end is matplotlib's one use
trainer.fit()
"""
    assert _heavy_after(code) == ["torch._dynamo"]
