"""Paper-level methods, one module each. Distillation, run through `distill`: Multistep
Consistency Models (`consistency`), Moment Matching (`moment_matching`), EM Distillation
(`em_distill`) and Discrete Moment Matching (`discrete_mmd`). Training methods, registered with
`difflab.train.methods` on import: masked/uniform discrete diffusion (`discrete_diffusion`),
Unified Latents (`unified_latents`), Rolling Diffusion (`rolling`), Dual-Rate Diffusion
(`dual_rate`)."""

from . import (  # noqa: F401  (each registers its training methods)
    discrete_diffusion,
    dual_rate,
    rolling,
    unified_latents,
)
from .consistency import MCMConfig, inv_ddim, mcm_loss, mcm_target, sample_mcm
from .discrete_mmd import DMMDConfig, dmmd_alternating_loss, sample_dmmd
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
    "DMMDConfig",
    "EMDConfig",
    "MCMConfig",
    "MMDConfig",
    "OracleTeacher",
    "Teacher",
    "distill",
    "dmmd_alternating_loss",
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
    "sample_dmmd",
    "sample_emd",
    "sample_mcm",
    "sample_mmd",
    "student_sampling",
    "teacher_from_checkpoint",
]
