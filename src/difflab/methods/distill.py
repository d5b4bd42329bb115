"""Distillation runs: a many-step teacher -> a `k`-step student, through `difflab.train.Trainer`
(EMA, safetensors checkpoints, exact resume, DDP), for both methods:

- `mcm`: Multistep Consistency Models (`consistency.py`), variants `cd` and `ct`;
- `mmd`: Moment Matching distillation (`moment_matching.py`), variants `alternating` and `param`;
- `emd`: EM Distillation of a one-step generator (`em_distill.py`), variants `eps_z`, `x_z`, `eps`;
- `dmmd`: Discrete Moment Matching of a masked or uniform diffusion teacher (`discrete_mmd.py`).

The student starts as a copy of `init_net` (the teacher network itself when distilling a
checkpoint). A run directory holds the Trainer's checkpoints plus `student.json`: the method, its
config and the student's sampler (registry name, grid name, steps and the explicit logsnr levels),
which `difflab sample` reads through `student_sampling(path)`; `export_student` puts the same
record into the exported safetensors metadata (key `difflab_student`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import safetensors.torch
import torch
from safetensors import safe_open
from torch import Tensor, nn

from ..config import TrainConfig, config_from_dict, config_to_dict
from ..diffusion.guidance import guided_denoiser
from ..diffusion.losses import Weighting
from ..diffusion.oracle import GaussianMixtureOracle
from ..diffusion.parameterization import Denoise, as_denoiser, check_prediction
from ..diffusion.schedules import Schedule
from ..fileio import read_json, write_atomic, write_json_atomic
from .consistency import MCMConfig, mcm_grid, mcm_loss_fn, sample_mcm
from .discrete_mmd import (
    DiscreteTeacher,
    DMMDConfig,
    discrete_teacher_from_checkpoint,
    dmmd_grid,
    dmmd_parts,
    dmmd_student_config,
    load_teacher_weights,
)
from .em_distill import EMDConfig, emd_grid, emd_loss_fn, sample_emd
from .moment_matching import (
    MMDConfig,
    adam_preconditioner,
    mmd_grid,
    mmd_loss_fn,
    sample_mmd,
    teacher_gradient_second_moment,
)

METHODS = ("mcm", "mmd", "emd", "dmmd")
VARIANTS = {"mcm": ("cd", "ct"), "mmd": ("alternating", "param"), "emd": ("eps_z", "x_z", "eps"),
            "dmmd": ("alternating",)}  # fmt: skip
CONFIGS = {"mcm": MCMConfig, "mmd": MMDConfig, "emd": EMDConfig, "dmmd": DMMDConfig}
MethodConfig = MCMConfig | MMDConfig | EMDConfig | DMMDConfig
STUDENT_FILE = "student.json"
STUDENT_METADATA_KEY = "difflab_student"
PRECONDITIONER_FILE = "preconditioner.safetensors"
STUDENT_SAMPLERS = {"mcm": "ddim", "mmd": "ddpm", "emd": "ddim", "dmmd": "masked_ancestral"}

# Adam as in the moment matching paper (beta1 = 0, beta2 = 0.99); a short warmup.
DISTILL_OPTIM = {
    "lr": 1e-4,
    "betas": [0.0, 0.99],
    "eps": 1e-12,
    "weight_decay": 0.0,
    "warmup_steps": 100,
    "grad_clip": 1.0,
    "ema_warmup": True,  # students start from the teacher: forget it at the average too
    "ema_decays": [0.999],
}


# --------------------------------------------------------------------------- teachers


@dataclass
class Teacher:
    """A frozen teacher: a network `net(z, logsnr, labels=None)` predicting `prediction`, the
    schedule it was trained on, its training weighting (used by MMD) and optional classifier-free
    guidance `w` (distilled into the student: the student learns the guided teacher)."""

    net: nn.Module
    prediction: str
    schedule: Schedule | None
    weighting: Weighting | None = None
    guidance: float = 0.0
    interval: tuple[float, float] = (-math.inf, math.inf)

    def __post_init__(self) -> None:
        check_prediction(self.prediction)
        if self.schedule is None or not isinstance(self.schedule, Schedule):
            raise ValueError(
                "the teacher has no noise schedule (got "
                f"{type(self.schedule).__name__}): distillation needs the schedule the teacher "
                "was trained on to place the student's steps; pass schedule=..."
            )
        if self.guidance and not self.conditional:
            raise ValueError(
                f"guidance={self.guidance} needs a class-conditional teacher (num_classes > 0)"
            )
        self.net.eval().requires_grad_(False)

    @property
    def conditional(self) -> bool:
        return getattr(getattr(self.net, "config", None), "num_classes", 0) > 0

    def denoiser(self, labels: Tensor | None = None) -> Denoise:
        """The teacher's `Denoise` for a batch (guided when `guidance != 0`)."""
        cond = {} if labels is None else {"labels": labels}
        denoise = as_denoiser(self.net, self.prediction, **cond)
        if self.guidance == 0:
            return denoise
        if labels is None:
            raise ValueError("a guided teacher needs class labels in every batch")
        uncond = as_denoiser(self.net, self.prediction)
        return guided_denoiser(denoise, uncond, self.guidance, self.interval)


def teacher_from_checkpoint(
    path: str | Path, *, guidance: float = 0.0, ema: float | bool = True, device: str = "cpu"
) -> tuple[Teacher, TrainConfig]:
    """The teacher of a checkpoint, run directory or exported model, and its `TrainConfig`."""
    from ..train import load_model

    net, cfg = load_model(path, ema=ema, device=device)
    d = cfg.diffusion
    teacher = Teacher(net, d.prediction, d.build_schedule(), d.build_weighting(), guidance)
    return teacher, cfg


class OracleTeacher(nn.Module):
    """A `GaussianMixtureOracle` as a frozen teacher network predicting `x`: the exact posterior
    mean, `E[x | z, k]` for class labels `k` (mixture components) or `E[x | z]` without.

    Its means, log-variances and mixture logits are (frozen) parameters, so the oracle is a
    differentiable function of them: parameter-space moment matching can use it as a teacher
    whose parameters sit exactly at the optimum of its loss on the data."""

    def __init__(self, oracle: GaussianMixtureOracle):
        super().__init__()
        self.basis = oracle.basis
        self.means = nn.Parameter(oracle.means.clone(), requires_grad=False)
        self.log_variances = nn.Parameter(oracle.variances.log(), requires_grad=False)
        self.logits = nn.Parameter(oracle.weights.log(), requires_grad=False)
        self.config = SimpleNamespace(num_classes=int(oracle.weights.shape[0]))

    def oracle(self) -> GaussianMixtureOracle:
        weights = torch.softmax(self.logits, 0)
        return GaussianMixtureOracle(self.means, self.log_variances.exp(), weights, self.basis)

    def forward(self, z: Tensor, logsnr: Tensor, labels: Tensor | None = None) -> Tensor:
        oracle = self.oracle()
        resp, mean_k, _ = oracle.posterior(z, logsnr)
        if labels is None:
            coef = (resp[..., None] * mean_k).sum(1)
        else:
            coef = mean_k[torch.arange(z.shape[0], device=z.device), labels]
        return oracle.from_basis(coef.view(z.shape)).to(z.dtype)


# --------------------------------------------------------------------------- the student's sampler


def method_config(method: str, student_steps: int, **options) -> MethodConfig:
    """`MCMConfig` / `MMDConfig` / `EMDConfig` / `DMMDConfig` from keyword options; unknown
    keys are a `ValueError`."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation method {method!r}; known: {list(METHODS)}")
    cls = CONFIGS[method]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(
            f"unknown {method} option {unknown[0]!r}; known: {sorted(fields - {'student_steps'})}"
        )
    return cls(student_steps=student_steps, **options)


def method_name(cfg: MethodConfig) -> str:
    for name, cls in CONFIGS.items():
        if isinstance(cfg, cls):
            return name
    raise TypeError(f"expected an MCMConfig, MMDConfig or EMDConfig, got {type(cfg).__name__}")


def student_grid(cfg: MethodConfig, schedule: Schedule) -> Tensor:
    if isinstance(cfg, EMDConfig):
        return emd_grid(cfg.logsnr_star)
    if isinstance(cfg, DMMDConfig):
        return dmmd_grid(schedule, cfg.student_steps)
    return (mcm_grid if method_name(cfg) == "mcm" else mmd_grid)(schedule, cfg.student_steps)


def student_spec(cfg: MethodConfig, schedule: Schedule, **extra: Any) -> dict[str, Any]:
    """The JSON record of a student: method, config and sampler (name, grid, steps, levels);
    the grid is `uniform_t` on the schedule, or `explicit` (EMD's `[l*, +inf]`)."""
    method = method_name(cfg)
    levels = student_grid(cfg, schedule)
    return {
        "format": "difflab-student-1",
        "method": method,
        "config": dataclasses.asdict(cfg),
        "sampler": STUDENT_SAMPLERS[method],
        "grid": "explicit" if method == "emd" else "uniform_t",
        "steps": cfg.student_steps,
        "logsnrs": [float(v) for v in levels[:-1]],
        "final_logsnr": "inf",
        **extra,
    }


def spec_logsnrs(spec: Mapping[str, Any]) -> Tensor:
    """The explicit sampling grid of a student record (the levels, then +inf)."""
    levels = [float(v) for v in spec["logsnrs"]] + [float(spec.get("final_logsnr", "inf"))]
    return torch.tensor(levels, dtype=torch.float64)


def read_student_spec(path: str | Path) -> dict[str, Any] | None:
    """The student record of an exported model, checkpoint folder or run directory, or `None`
    when `path` is not a distilled student."""
    path = Path(path)
    if path.is_file() and path.suffix == ".safetensors":
        try:
            with safe_open(str(path), "pt") as f:
                meta = f.metadata() or {}
        except Exception as err:
            raise ValueError(
                f"model file {path} is not a readable safetensors file: {err}"
            ) from None
        return json.loads(meta[STUDENT_METADATA_KEY]) if STUDENT_METADATA_KEY in meta else None
    for folder in (path, path.parent.parent):  # a run directory, or a checkpoint folder in one
        file = folder / STUDENT_FILE
        if file.is_file():
            return read_json(file)  # a corrupt record: ValueError naming the file
    return None


def student_sampling(path: str | Path) -> dict[str, Any] | None:
    """What `difflab sample` should use for a student: `{"sampler", "grid", "steps",
    "logsnrs"}` (the registry sampler, the named grid and steps that rebuild the levels, or the
    levels themselves for an `explicit` grid, and the levels), or `None` for an ordinary
    diffusion model."""
    spec = read_student_spec(path)
    if spec is None:
        return None
    return {
        "sampler": spec["sampler"],
        "grid": spec_logsnrs(spec) if spec["grid"] == "explicit" else spec["grid"],
        "steps": int(spec["steps"]),
        "logsnrs": spec_logsnrs(spec),
    }


def export_student(path: str | Path, out_file: str | Path, ema: float | bool = True) -> Path:
    """`export_model` plus the student record in the metadata (`difflab_student`)."""
    from ..train.checkpoint import export_model, safetensors_bytes

    spec = read_student_spec(path)
    if spec is None:
        raise ValueError(f"{path} is not a distillation run (no {STUDENT_FILE})")
    out = export_model(path, out_file, ema=ema)
    with safe_open(str(out), "pt") as f:
        meta = dict(f.metadata() or {})
    tensors = safetensors.torch.load_file(str(out))
    meta[STUDENT_METADATA_KEY] = json.dumps(spec, sort_keys=True)
    write_atomic(out, safetensors_bytes(tensors, meta))
    return out


def sample_student(
    cfg: MethodConfig,
    student: Denoise,
    z: Tensor,
    schedule: Schedule,
    *,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample a student with its own sampler (MCM: DDIM; MMD: ancestral; EMD: one DDIM step from
    `l*`) and step count."""
    if isinstance(cfg, EMDConfig):
        return sample_emd(student, z, cfg.logsnr_star)
    if isinstance(cfg, DMMDConfig):
        raise ValueError("a D-MMD student samples tokens: use discrete_mmd.sample_dmmd")
    if method_name(cfg) == "mcm":
        return sample_mcm(student, z, cfg.student_steps, schedule)
    return sample_mmd(student, z, cfg.student_steps, schedule, generator=generator)


# --------------------------------------------------------------------------- the run


def _student_denoiser(
    prediction: str, frozen_encoder: Callable[[], bool] | None = None
) -> Callable[[nn.Module, Tensor | None], Denoise]:
    """`make(net, labels) -> Denoise`; with `frozen_encoder` (a dual-rate student) the net is
    called with `detach_features=frozen_encoder()`: no gradient into its encoder while frozen."""

    def make(net: nn.Module, labels: Tensor | None) -> Denoise:
        cond = {} if labels is None else {"labels": labels}
        if frozen_encoder is not None:
            cond["detach_features"] = frozen_encoder()
        return as_denoiser(net, prediction, **cond)

    return make


def _preconditioner(
    cfg: MMDConfig, teacher: Teacher, dataset, batch_size: int, seed: int, run_dir: Path, device
):
    """Adam's preconditioner at the teacher, measured once and kept in the run directory (so a
    resumed run uses the very same one)."""
    file = run_dir / PRECONDITIONER_FILE
    if file.is_file():
        second = safetensors.torch.load_file(str(file), device=str(device))
    else:
        gen = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(dataset), generator=gen)
        batches = []
        for i in range(cfg.preconditioner_batches):
            items = [dataset[int(j)] for j in index[i * batch_size : (i + 1) * batch_size]]
            if not items:
                break
            x = torch.stack([a for a, _ in items]).to(device)
            labels = torch.stack([b for _, b in items]).to(device) if teacher.conditional else None
            batches.append((x, labels))
        second = teacher_gradient_second_moment(
            teacher.net,
            teacher.prediction,
            batches,
            teacher.schedule,
            teacher.weighting,
            generator=torch.Generator(device).manual_seed(seed),
        )
        from ..train.checkpoint import safetensors_bytes, write_atomic

        run_dir.mkdir(parents=True, exist_ok=True)
        write_atomic(file, safetensors_bytes(second))
    return adam_preconditioner(second, cfg.preconditioner_eps)


def build_distillation(
    method_cfg: MethodConfig,
    teacher: Teacher,
    init_net: nn.Module,
    dataset,
    cfg: TrainConfig,
    *,
    dist_info=None,
):
    """The `Trainer` of a distillation run (not started): student = a copy of `init_net`
    predicting `cfg.diffusion.prediction`; for alternating MMD also an auxiliary denoiser copied
    from `init_net`. Returns the trainer; `trainer.fit(resume)` runs it."""
    from ..train import Trainer

    method = method_name(method_cfg)
    if not isinstance(teacher, DiscreteTeacher if method == "dmmd" else Teacher):
        raise TypeError(f"teacher must be a Teacher, got {type(teacher).__name__}")
    schedule = teacher.schedule
    prediction = check_prediction(cfg.diffusion.prediction)
    student = copy.deepcopy(init_net).requires_grad_(True).train()
    extras: dict[str, nn.Module] = {"teacher": teacher.net}
    run_dir = Path(cfg.train.out_dir)
    trainer_ref: list = []

    def step_fn() -> int:
        return trainer_ref[0].step

    make_student = _student_denoiser(prediction)
    if hasattr(init_net, "denoise_light"):  # a dual-rate student (DualRateNet)
        freeze = getattr(method_cfg, "freeze_encoder_steps", 0)
        make_student = _student_denoiser(prediction, lambda: step_fn() < freeze)

    record: dict[str, Any] = {}
    if method == "dmmd":  # tokens: the loss and the auxiliary come from discrete_mmd
        loss_fn, dmmd_extras, record = dmmd_parts(method_cfg, teacher, step_fn)
        extras.update(dmmd_extras)
    elif method == "mcm":
        teacher_fn = teacher.denoiser if method_cfg.variant == "cd" else None
        loss_fn = mcm_loss_fn(method_cfg, schedule, make_student, teacher_fn, step_fn)
    else:
        if teacher.weighting is None:
            raise ValueError(f"{method} needs the teacher's training weighting (weighting=)")
        if method == "emd":  # the student score network is the trainable extra, as MMD's aux
            extras["aux"] = copy.deepcopy(init_net).requires_grad_(True).train()
            loss_fn = emd_loss_fn(
                method_cfg, schedule, teacher.weighting, make_student, teacher.denoiser, step_fn
            )
        elif method_cfg.variant == "alternating":
            extras["aux"] = copy.deepcopy(init_net).requires_grad_(True).train()
            loss_fn = mmd_loss_fn(
                method_cfg,
                schedule,
                teacher.weighting,
                make_student,
                make_teacher=teacher.denoiser,
                make_auxiliary=_student_denoiser(prediction),
                step_fn=step_fn,
            )
        else:
            if teacher.guidance:
                raise ValueError(
                    "parameter-space MMD matches the gradient of the teacher's training loss, "
                    "which a guided teacher does not have: use variant='alternating' for guidance"
                )
            device = (
                torch.device(dist_info.device) if dist_info is not None else torch.device("cpu")
            )
            teacher.net.to(device)
            precond = None
            if method_cfg.preconditioner == "adam":
                precond = _preconditioner(
                    method_cfg, teacher, dataset, cfg.data.batch_size // 2, cfg.train.seed,
                    run_dir, device,
                )  # fmt: skip
            loss_fn = mmd_loss_fn(
                method_cfg,
                schedule,
                teacher.weighting,
                make_student,
                teacher_net=teacher.net,
                teacher_prediction=teacher.prediction,
                preconditioner=precond,
                step_fn=step_fn,
            )

    def sample_fn(net: nn.Module, noise: Tensor, labels: Tensor | None) -> Tensor:
        gen = torch.Generator(noise.device).manual_seed(cfg.train.seed)
        return sample_student(method_cfg, make_student(net, labels), noise, schedule, generator=gen)

    trainer = Trainer(
        cfg, student, dataset, loss_fn=loss_fn, extra_modules=extras,
        sample_fn=None if method == "dmmd" else sample_fn, dist_info=dist_info,
    )  # fmt: skip
    trainer_ref.append(trainer)
    if trainer.dist.is_main:
        _write_student_record(
            run_dir, student_spec(method_cfg, schedule, guidance=teacher.guidance, **record)
        )
    return trainer


def _write_student_record(run_dir: Path, spec: dict[str, Any]) -> None:
    """Write `student.json`; refuse to relabel checkpoints that were trained as another student."""
    from ..train import list_checkpoints

    file = run_dir / STUDENT_FILE
    if file.is_file() and list_checkpoints(run_dir):
        old = read_student_spec(run_dir)
        if old is not None and (old["method"], old["config"]) != (spec["method"], spec["config"]):
            raise ValueError(
                f"{run_dir} holds checkpoints of another student ({old['method']} "
                f"{old['config']}); choose another output directory"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(file, spec, indent=1)


def distill(
    method_cfg: MethodConfig,
    teacher: Teacher,
    init_net: nn.Module,
    dataset,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    dist_info=None,
) -> Path:
    """Distil `teacher` into a `method_cfg.student_steps`-step student; returns the run dir."""
    return build_distillation(method_cfg, teacher, init_net, dataset, cfg, dist_info=dist_info).fit(
        resume=resume
    )


def distill_config(
    teacher_cfg: TrainConfig, out_dir: str | Path, overrides: Sequence[str] = ()
) -> TrainConfig:
    """The student's `TrainConfig`: the teacher's model (label dropout off: the student learns
    the conditional or guided teacher), data and diffusion settings, `DISTILL_OPTIM`, then
    `key=value` overrides."""
    data = config_to_dict(teacher_cfg)
    kwargs = dict(data["model"]["kwargs"])
    if "label_dropout" in kwargs or kwargs.get("num_classes", 0):
        kwargs["label_dropout"] = 0.0
    data["model"]["kwargs"] = kwargs
    data["optim"] = {**data["optim"], **DISTILL_OPTIM}
    data["train"] = {**data["train"], "out_dir": str(out_dir), "sample_every": 0}
    return config_from_dict(data, overrides)


def run_distillation(
    method: str,
    teacher_ckpt: str | Path,
    student_steps: int,
    *,
    variant: str | None = None,
    guidance: float = 0.0,
    out_dir: str | Path | None = None,
    overrides: Sequence[str] = (),
    options: Mapping[str, Any] | None = None,
    resume: bool = False,
) -> Path:
    """`difflab distill {mcm,mmd,dmmd} --teacher CKPT --student-steps K` (or `difflab distill
    emd --teacher CKPT --mcmc-steps K`, a one-step student): distil a trained model (`dmmd`: a
    masked or uniform diffusion teacher of `difflab train`).

    `variant`: `cd`/`ct` (mcm), `alternating`/`param` (mmd) or `eps_z`/`x_z`/`eps` (emd);
    `options`: further fields of `MCMConfig`/`MMDConfig`/`EMDConfig`/`DMMDConfig`;
    `overrides`: `key=value` on the student's `TrainConfig` (e.g. `train.steps=2000
    optim.lr=5e-5`). Works under `torchrun` like `difflab train`."""
    from ..allocator import apply_malloc_fix
    from ..data import make_dataset
    from ..nets import build_net
    from ..train.distributed import SEED_INIT, derive_seed, init_distributed, shutdown_distributed

    opts = dict(options or {})
    if variant is not None:
        if method in VARIANTS and variant not in VARIANTS[method]:
            raise ValueError(f"{method} variant must be one of {VARIANTS[method]}, got {variant!r}")
        opts["variant"] = variant
    method_cfg = method_config(method, student_steps, **opts)
    apply_malloc_fix()
    info = init_distributed()
    done = False
    try:
        load = discrete_teacher_from_checkpoint if method == "dmmd" else teacher_from_checkpoint
        teacher, teacher_cfg = load(teacher_ckpt, guidance=guidance, device=str(info.device))
        out = out_dir or f"runs/distill_{method}_{method_cfg.variant}_{student_steps}"
        cfg = distill_config(teacher_cfg, out, overrides)
        if method == "dmmd":  # the student's extra noise input
            cfg = dmmd_student_config(cfg, method_cfg, teacher.process)
        torch.manual_seed(derive_seed(cfg.train.seed, SEED_INIT))
        init = build_net(cfg.model.name, **cfg.model.kwargs)  # label dropout off
        if method == "dmmd":
            load_teacher_weights(init, teacher.net)
        else:
            init.load_state_dict(teacher.net.state_dict())
        dataset = make_dataset(cfg.data.name, cfg.data.split, **cfg.data.kwargs)
        run_dir = distill(method_cfg, teacher, init, dataset, cfg, resume=resume, dist_info=info)
        done = True
        return run_dir
    finally:
        shutdown_distributed(wait_for_all=done)
