"""Training: the loop (`Trainer`, `train_step`, `run_training`), EMA, checkpoints, DDP helpers."""

from .allocator import apply_malloc_fix, malloc_fix_applied
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    export_model,
    list_checkpoints,
    load_denoiser,
    load_model,
    newest_valid_checkpoint,
)
from .distributed import DistInfo, ShardedBatchSampler, derive_seed, init_distributed
from .ema import EMA
from .monitor import plot_loss_curve, read_metrics, save_image_grid
from .trainer import (
    StepResult,
    Trainer,
    TrainingDiverged,
    cpu_has_native_bf16,
    diffusion_loss_fn,
    run_training,
    train_step,
)

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "DistInfo",
    "ShardedBatchSampler",
    "StepResult",
    "Trainer",
    "TrainingDiverged",
    "apply_malloc_fix",
    "cpu_has_native_bf16",
    "derive_seed",
    "diffusion_loss_fn",
    "export_model",
    "init_distributed",
    "list_checkpoints",
    "load_denoiser",
    "load_model",
    "malloc_fix_applied",
    "newest_valid_checkpoint",
    "plot_loss_curve",
    "read_metrics",
    "run_training",
    "save_image_grid",
    "train_step",
]
