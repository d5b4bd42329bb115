"""Paper-level methods, one module each: Multistep Consistency Models (`consistency`) and
Moment Matching distillation (`moment_matching`), run through `distill`."""

from .consistency import MCMConfig, inv_ddim, mcm_loss, mcm_target, sample_mcm
from .distill import (
    OracleTeacher,
    Teacher,
    distill,
    export_student,
    read_student_spec,
    run_distillation,
    student_sampling,
    teacher_from_checkpoint,
)
from .moment_matching import MMDConfig, mmd_alternating_loss, mmd_parameter_loss, sample_mmd

__all__ = [
    "MCMConfig",
    "MMDConfig",
    "OracleTeacher",
    "Teacher",
    "distill",
    "export_student",
    "inv_ddim",
    "mcm_loss",
    "mcm_target",
    "mmd_alternating_loss",
    "mmd_parameter_loss",
    "read_student_spec",
    "run_distillation",
    "sample_mcm",
    "sample_mmd",
    "student_sampling",
    "teacher_from_checkpoint",
]
