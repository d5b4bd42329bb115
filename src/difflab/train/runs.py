"""Starting and resuming runs from the command line: which config, which run directory.

`difflab train CONFIG [key=value ...]` starts a run in the config's `train.out_dir`;
`difflab train --resume RUN_DIR [key=value ...]` continues the run in `RUN_DIR` with the config
stored in it, wherever the folder now is (moved, copied, or named by a relative path): the
recorded `train.out_dir` is replaced by `RUN_DIR`. `difflab train CONFIG --resume` continues the
config's own `train.out_dir`, and refuses a config copied out of another run directory, which
would otherwise silently continue the original run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from ..config import TrainConfig, config_from_dict, config_to_dict, load_config
from .checkpoint import CHECKPOINTS, Checkpoint, CheckpointError, list_checkpoints
from .methods import run_training
from .monitor import METRICS_FILE

RUN_CONFIG = "config.yaml"  # written into the run directory at every start


def is_run_dir(path: str | Path) -> bool:
    """A folder a run has written to (it has `checkpoints/` or `metrics.jsonl`)."""
    path = Path(path)
    return (path / CHECKPOINTS).is_dir() or (path / METRICS_FILE).is_file()


def _override_keys(overrides: Sequence[str]) -> set[str]:
    return {item.split("=", 1)[0].strip() for item in overrides}


def run_config(run_dir: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """The config stored in a run directory (`config.yaml`, else the newest readable
    checkpoint's `config.json`) with `overrides`, writing to `run_dir` itself."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"--resume {run_dir}: no such run directory")
    if "train.out_dir" in _override_keys(overrides):
        raise ValueError(
            f"--resume {run_dir}: train.out_dir cannot be overridden; the run continues in "
            f"{run_dir} (to branch it, copy the folder and resume the copy)"
        )
    if (run_dir / RUN_CONFIG).is_file():
        cfg = load_config(run_dir / RUN_CONFIG, overrides, stored=True)
    else:
        for path in reversed(list_checkpoints(run_dir)):
            try:
                stored = Checkpoint(path).config
            except (CheckpointError, ValueError):
                continue
            cfg = config_from_dict(config_to_dict(stored), overrides)
            break
        else:
            raise ValueError(
                f"--resume {run_dir}: not a run directory (no {RUN_CONFIG} and no readable "
                f"checkpoint in {run_dir / CHECKPOINTS})"
            )
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, out_dir=str(run_dir)))


def resume_run(run_dir: str | Path, overrides: Sequence[str] = ()) -> Path:
    """`difflab train --resume RUN_DIR [key=value ...]`: continue the run in `run_dir` with its
    own config (`run_config`); returns the run directory."""
    return run_training(run_config(run_dir, overrides), resume=True)


def load_training_config(
    config: str | Path, overrides: Sequence[str] = (), resume: bool = False
) -> TrainConfig:
    """`load_config`, and with `resume`, refuse a config file that lies in one run directory
    but names another as `train.out_dir` (a copied run's `config.yaml`): resuming it would
    continue the other run."""
    cfg = load_config(config, overrides)
    home = Path(config).parent
    if (
        resume
        and "train.out_dir" not in _override_keys(overrides)
        and is_run_dir(home)
        and Path(cfg.train.out_dir).resolve() != home.resolve()
    ):
        raise ValueError(
            f"config {config} lies in run directory {home}, but its train.out_dir is "
            f"{cfg.train.out_dir}: --resume would continue that run, not {home}. To continue "
            f"{home}, use `--resume {home}`; to continue {cfg.train.out_dir}, pass "
            f"train.out_dir={cfg.train.out_dir} explicitly"
        )
    return cfg


def launch_training(
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    resume: bool | str | Path = False,
) -> Path:
    """What `difflab train` runs: `resume` a run directory (a path; no `config`), or train
    `config` from scratch or (`resume=True`) from its `train.out_dir`'s newest checkpoint."""
    if resume is not True and resume is not False:
        if config is not None:
            raise ValueError(
                f"give either a config file ({config}) or --resume RUN_DIR ({resume}), not both: "
                "a run directory resumes with the config stored in it"
            )
        return resume_run(resume, overrides)
    if config is None:
        raise ValueError("a config file is required (or --resume RUN_DIR to continue a run)")
    return run_training(load_training_config(config, overrides, resume), resume=resume)
