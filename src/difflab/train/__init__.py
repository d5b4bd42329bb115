"""Training: the loop (`Trainer`, `train_step`, `run_training`), EMA, checkpoints, DDP helpers."""

from ..allocator import apply_malloc_fix, malloc_fix_applied
from ..images import save_image_grid
from .checkpoint import (
    Checkpoint,
    CheckpointError,
    CheckpointWriteError,
    export_model,
    find_resume_checkpoint,
    list_checkpoints,
    load_denoiser,
    load_model,
    newest_valid_checkpoint,
)
from .distributed import DistInfo, ShardedBatchSampler, derive_seed, init_distributed
from .ema import EMA
from .methods import (
    MethodParts,
    TrainingMethod,
    build_method,
    method_options,
    register_training_method,
    run_training,
    training_method,
)
from .monitor import plot_loss_curve, read_metrics
from .runs import launch_training, load_training_config, resume_run, run_config
from .trainer import (
    StepResult,
    Trainer,
    TrainingDiverged,
    cpu_has_native_bf16,
    diffusion_loss_fn,
    train_step,
)

__all__ = [
    "EMA",
    "Checkpoint",
    "CheckpointError",
    "CheckpointWriteError",
    "DistInfo",
    "ShardedBatchSampler",
    "MethodParts",
    "StepResult",
    "Trainer",
    "TrainingMethod",
    "TrainingDiverged",
    "apply_malloc_fix",
    "build_method",
    "cpu_has_native_bf16",
    "derive_seed",
    "diffusion_loss_fn",
    "export_model",
    "find_resume_checkpoint",
    "init_distributed",
    "launch_training",
    "load_training_config",
    "list_checkpoints",
    "load_denoiser",
    "load_model",
    "malloc_fix_applied",
    "method_options",
    "newest_valid_checkpoint",
    "plot_loss_curve",
    "read_metrics",
    "register_training_method",
    "resume_run",
    "run_config",
    "run_training",
    "save_image_grid",
    "train_step",
    "training_method",
]
