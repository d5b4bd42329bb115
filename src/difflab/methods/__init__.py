"""Paper-level methods, one module each: Multistep Consistency Models (`consistency`), Moment
Matching distillation (`moment_matching`) and EM Distillation (`em_distill`), run through
`distill`."""

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
from .em_distill import EMDConfig, emd_loss, langevin_e_step, sample_emd
from .moment_matching import MMDConfig, mmd_alternating_loss, mmd_parameter_loss, sample_mmd

__all__ = [
    "EMDConfig",
    "MCMConfig",
    "MMDConfig",
    "OracleTeacher",
    "Teacher",
    "distill",
    "emd_loss",
    "export_student",
    "inv_ddim",
    "langevin_e_step",
    "mcm_loss",
    "mcm_target",
    "mmd_alternating_loss",
    "mmd_parameter_loss",
    "read_student_spec",
    "run_distillation",
    "sample_emd",
    "sample_mcm",
    "sample_mmd",
    "student_sampling",
    "teacher_from_checkpoint",
]
