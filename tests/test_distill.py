"""Distillation: MCM (consistency.py) and moment matching (moment_matching.py) against exact
identities and the Gaussian(-mixture) oracle, plus the run plumbing (distill.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from difflab import api
from difflab.cli import build_parser
from difflab.config import config_from_dict, load_config
from difflab.data import make_dataset
from difflab.diffusion.guidance import guided_denoiser
from difflab.diffusion.losses import diffusion_loss, sigmoid_weight, v_mse_weight
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import alpha_sigma, as_denoiser, broadcast_logsnr, diffuse
from difflab.diffusion.schedules import CosineSchedule
from difflab.methods.consistency import (
    MCMConfig,
    inv_ddim,
    mcm_grid,
    mcm_loss,
    mcm_target,
    mcm_times,
    same_randomness,
)
from difflab.methods.distill import (
    OracleTeacher,
    Teacher,
    build_distillation,
    export_student,
    method_config,
    read_student_spec,
    student_sampling,
)
from difflab.methods.moment_matching import (
    MMDConfig,
    adam_preconditioner,
    alternating_update,
    mmd_alternating_loss,
    mmd_parameter_loss,
    teacher_gradient_second_moment,
)
from difflab.sampling.addim import addim_step
from difflab.sampling.generate import generate
from difflab.train import list_checkpoints, load_denoiser, run_training

SCHEDULE = CosineSchedule()
# torch's first forward-mode AD call loads jvp decompositions through torch.jit.script
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
SHAPE = (1, 4, 4)
TINY = Path(__file__).resolve().parents[1] / "configs" / "digits_tiny.yaml"
FAST = ["train.log_every=1", "train.sample_every=0", "train.tensorboard=false",
        "train.progress=false", "data.batch_size=16"]  # fmt: skip


@pytest.fixture(autouse=True)
def one_thread():
    """One thread: on shared cores OpenMP's spinning makes these tiny steps much slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gaussian_oracle(seed: int = 0) -> GaussianMixtureOracle:
    return GaussianMixtureOracle.image_like(SHAPE, num_components=1, seed=seed)


def mixture_oracle(seed: int = 0) -> GaussianMixtureOracle:
    return GaussianMixtureOracle.image_like(SHAPE, num_components=3, seed=seed)


def gaussian_flow(oracle: GaussianMixtureOracle, z: torch.Tensor, l_t, l_u) -> torch.Tensor:
    """The exact probability-flow ODE map `z_t -> z_u` of a single Gaussian: per coefficient in
    the basis, the standardised value `(c - a m) / sqrt(a^2 lam + s^2)` is conserved."""
    m = oracle.to_basis(oracle.means)[0].flatten()
    lam = oracle.variances[0].flatten()
    a_t, s_t = (v.view(-1, 1) for v in alpha_sigma(l_t.double()))
    a_u, s_u = (v.view(-1, 1) for v in alpha_sigma(l_u.double()))
    c = oracle.to_basis(z.double()).flatten(1)
    scale = torch.sqrt((a_u**2 * lam + s_u**2) / (a_t**2 * lam + s_t**2))
    return oracle.from_basis((a_u * m + scale * (c - a_t * m)).view(z.shape))


def exact_consistency_student(oracle, segments: int):
    """The exact `segments`-step MCM student of a Gaussian: `z_t` -> the `x` whose DDIM step
    to the segment boundary below lands on the ODE solution there."""

    def f(z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        t = SCHEDULE.t_of(logsnr.double())
        t_step = (torch.ceil(t * segments - 1e-6) - 1).clamp(min=0) / segments
        at_data = t_step >= t - 1e-9  # t = 0: no step left, any finite x will do
        l_step = torch.where(at_data, logsnr + 1, SCHEDULE.logsnr(t_step))
        x = inv_ddim(gaussian_flow(oracle, z, logsnr, l_step), z.double(), logsnr, l_step)
        return torch.where(broadcast_logsnr(at_data, z), z.double(), x)

    return f


def exact_posterior_sampler(oracle: GaussianMixtureOracle, generator: torch.Generator):
    """`x~ ~ p(x | z_t)` exactly: a component by its responsibility, then its Gaussian."""

    def sample(z: torch.Tensor, logsnr: torch.Tensor) -> torch.Tensor:
        resp, mean_k, var_k = oracle.posterior(z, logsnr)
        k = torch.multinomial(resp, 1, generator=generator)[:, 0]
        rows = torch.arange(z.shape[0])
        noise = torch.randn(mean_k[rows, k].shape, generator=generator, dtype=torch.float64)
        coef = mean_k[rows, k] + var_k[rows, k].sqrt() * noise
        return oracle.from_basis(coef.view(z.shape))

    return sample


class TinyNet(nn.Module):
    """A small MLP with the difflab net contract `net(z, logsnr, labels=None)`, for fast runs."""

    def __init__(self, dim: int = 16, width: int = 32, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(dim + 1, width), nn.SiLU(), nn.Dropout(dropout), nn.Linear(width, dim)
        )

    def forward(self, z, logsnr, labels=None):
        level = torch.tanh(logsnr.reshape(-1, 1).expand(z.shape[0], 1) / 10).to(z.dtype)
        return self.body(torch.cat([z.flatten(1), level], 1)).view_as(z)


# --------------------------------------------------------------------------- MCM identities


@pytest.mark.parametrize("segments", [1, 4])
def test_mcm_target_is_the_exact_student_on_a_gaussian(segments):
    """With the exact teacher ODE step and the exact consistency function as student, the MCM
    target is the student's own output: for one segment the ODE's clean sample `x`."""
    oracle = gaussian_oracle()
    f = exact_consistency_student(oracle, segments)
    gen = torch.Generator().manual_seed(1)
    t, s, t_step = mcm_times(256, segments, 16, generator=gen)
    l_t, l_s, l_step = SCHEDULE.logsnr(t), SCHEDULE.logsnr(s), SCHEDULE.logsnr(t_step)
    x, _ = oracle.sample(256, gen)
    z_t = diffuse(x, torch.randn(x.shape, generator=gen, dtype=torch.float64), l_t)
    z_s = gaussian_flow(oracle, z_t, l_t, l_s)  # the exact teacher step
    target = mcm_target(f, z_t, z_s, l_t, l_s, l_step)
    torch.testing.assert_close(target, f(z_t, l_t), rtol=1e-6, atol=1e-6)
    if segments == 1:  # a consistency model: the target is the ODE's end point at t = 0,
        # up to the noise the schedule leaves there (sigma = e^{-15/2})
        x_ode = gaussian_flow(oracle, z_t, l_t, SCHEDULE.logsnr(torch.zeros_like(t)))
        torch.testing.assert_close(target, x_ode, rtol=0, atol=0.01)


def test_mcm_target_is_the_teacher_x_at_one_teacher_step_per_segment():
    """`N_seg = 1`: `s` is the segment boundary, so the target is `invDDIM(DDIM(x_teacher))` =
    `x_teacher` (the oracle's posterior mean for CD, the data for CT), whatever the student."""
    oracle = mixture_oracle()
    gen = torch.Generator().manual_seed(2)
    t, s, t_step = mcm_times(128, 8, 1, generator=gen)
    torch.testing.assert_close(s, t_step)
    l_t, l_s = SCHEDULE.logsnr(t), SCHEDULE.logsnr(s)
    x, _ = oracle.sample(128, gen)
    z_t = diffuse(x, torch.randn(x.shape, generator=gen, dtype=torch.float64), l_t)
    wrong_student = lambda z, level: 0.3 * z  # noqa: E731
    for x_teacher in (x, oracle.denoise(z_t, l_t)):
        z_s = addim_step(z_t, x_teacher, l_t, l_s, 0.0)
        target = mcm_target(wrong_student, z_t, z_s, l_t, l_s, l_s)
        torch.testing.assert_close(target, x_teacher, rtol=1e-6, atol=1e-6)


def test_ct_with_student_steps_equal_to_teacher_steps_is_diffusion_training():
    oracle = mixture_oracle()
    x, _ = oracle.sample(64, torch.Generator().manual_seed(3))
    student = lambda z, level: 0.8 * oracle.denoise(z, level) + 0.1 * z  # noqa: E731
    cfg = MCMConfig(
        student_steps=16, variant="ct", n_teacher_start=16, n_teacher_end=16, huber_c=None
    )
    loss = mcm_loss(student, x, SCHEDULE, cfg, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    t, _, _ = mcm_times(64, 16, 1, generator=gen)  # the same draws, in the same order
    expected = diffusion_loss(student, x, SCHEDULE, v_mse_weight, t=t, generator=gen)
    torch.testing.assert_close(loss.double(), expected, rtol=1e-5, atol=1e-8)
    # the pseudo-Huber version is (SNR + 1) * (sqrt(||x - f||^2 + c^2) - c) on the same pairs
    huber = MCMConfig(student_steps=16, variant="ct", n_teacher_start=16, n_teacher_end=16)
    loss_h = mcm_loss(student, x, SCHEDULE, huber, generator=torch.Generator().manual_seed(4))
    gen = torch.Generator().manual_seed(4)
    t, _, _ = mcm_times(64, 16, 1, generator=gen)
    l_t = SCHEDULE.logsnr(t)
    z_t = diffuse(x, torch.randn(x.shape, generator=gen, dtype=torch.float64), l_t)
    c = 0.00054 * math.sqrt(x[0].numel())
    sq = (x - student(z_t, l_t)).flatten(1).pow(2).sum(1)
    torch.testing.assert_close(loss_h.double(), (l_t.exp() + 1) * ((sq + c * c).sqrt() - c))


def test_the_two_student_evaluations_share_their_dropout_masks():
    masks = []

    def student(z, level):
        mask = nn.functional.dropout(torch.ones_like(z), 0.5, training=True)
        masks.append(mask)
        return 0.5 * z * mask

    oracle = gaussian_oracle()
    x, _ = oracle.sample(32, torch.Generator().manual_seed(5))
    before = torch.get_rng_state()
    mcm_loss(student, x, SCHEDULE, MCMConfig(4, "ct"), generator=torch.Generator().manual_seed(6))
    assert len(masks) == 2 and torch.equal(masks[0], masks[1])
    # really random masks: dropout(p=0.5) keeps about half of the 512 entries (within 4
    # binomial standard errors, 4 * 0.5 / sqrt(512) = 0.088), scaled by 2
    assert set(masks[0].unique().tolist()) == {0.0, 2.0}
    assert abs(float((masks[0] > 0).double().mean()) - 0.5) < 4 * 0.5 / math.sqrt(512)
    assert torch.equal(torch.get_rng_state(), before)  # the global stream is left untouched
    with same_randomness(7, torch.device("cpu")):
        a = torch.rand(3)
    with same_randomness(8, torch.device("cpu")):
        b = torch.rand(3)
    assert not torch.equal(a, b)


# --------------------------------------------------------------------------- MMD identities


def test_mmd_generator_gradient_is_its_closed_form():
    """The generator update's gradient is `mean_i mean_d w(s_i) e^{l_s} dx~_i/dtheta .
    (g_phi - g_teacher)(z_s)` (module docstring), recomputed here from the same draws
    (times, the noise of `z_t`, the noise of `z_s`, in that order) with the posterior written
    out; the auxiliary differs from the teacher, so the gradient is not trivially zero."""
    oracle = mixture_oracle()
    x, _ = oracle.sample(256, torch.Generator().manual_seed(10))
    scale = nn.Parameter(torch.ones((), dtype=torch.float64))
    student = lambda z, level: scale * oracle.denoise(z, level)  # noqa: E731
    auxiliary = lambda z, level: 0.9 * oracle.denoise(z, level) + 0.05 * z  # noqa: E731
    weighting = sigmoid_weight(-2.0)
    loss = mmd_alternating_loss(
        student, auxiliary, oracle.denoise, x, SCHEDULE, weighting, MMDConfig(student_steps=4),
        update="generator", generator=torch.Generator().manual_seed(12),
    )  # fmt: skip
    loss.mean().backward()

    gen, f64 = torch.Generator().manual_seed(12), torch.float64
    s = torch.rand(256, generator=gen, dtype=f64)
    t = (s + torch.rand(256, generator=gen, dtype=f64) / 4).clamp(max=1.0)
    l_t, l_s = SCHEDULE.logsnr(t), SCHEDULE.logsnr(s)
    (a_t, s_t), (a_s, s_s) = ((v.view(-1, 1, 1, 1) for v in alpha_sigma(l)) for l in (l_t, l_s))
    z_t = a_t * x + s_t * torch.randn(x.shape, generator=gen, dtype=f64)
    x_tilde = oracle.denoise(z_t, l_t)  # = d x~ / d scale at scale = 1
    r = torch.exp(l_t - l_s).view(-1, 1, 1, 1)
    noise = torch.randn(x.shape, generator=gen, dtype=f64)
    z_s = a_s / a_t * r * z_t + a_s * (1 - r) * x_tilde + s_s * (1 - r).sqrt() * noise
    residual = auxiliary(z_s, l_s) - oracle.denoise(z_s, l_s)
    w = (weighting(l_s, -SCHEDULE.dlogsnr_dt(s)) * torch.exp(l_s)).view(-1, 1, 1, 1)
    expected = float((w * x_tilde * residual).flatten(1).mean(1).mean())
    assert abs(expected) > 1e-3
    assert float(scale.grad) == pytest.approx(expected, rel=1e-8)


def test_alternation_starts_with_the_auxiliary_and_keeps_its_ratio():
    assert [alternating_update(i) for i in range(4)] == ["auxiliary", "generator"] * 2
    pattern = [alternating_update(i, aux_steps=3) for i in range(8)]
    assert pattern == (["auxiliary"] * 3 + ["generator"]) * 2


def test_parameter_space_moments_vanish_for_an_exact_student_and_not_for_a_collapsed_one():
    """`1/2 ||E grad_theta l||_P^2` on the Gaussian oracle teacher: ~0 when the student samples
    the exact posterior, clearly positive when it returns the posterior mean (too little
    variance), with and without the Adam preconditioner."""
    oracle = gaussian_oracle()
    teacher = OracleTeacher(oracle)
    x, _ = oracle.sample(4096, torch.Generator().manual_seed(13))
    exact = exact_posterior_sampler(oracle, torch.Generator().manual_seed(14))
    weighting = sigmoid_weight(-2.0)
    data = [oracle.sample(256, torch.Generator().manual_seed(i))[0] for i in range(4)]
    second = teacher_gradient_second_moment(
        teacher,
        "x",
        [(b, None) for b in data],
        SCHEDULE,
        weighting,
        generator=torch.Generator().manual_seed(0),
    )
    for precond in (None, adam_preconditioner(second)):
        values = {}
        for name, student in (("exact", exact), ("collapsed", oracle.denoise)):
            loss = mmd_parameter_loss(
                student, teacher, "x", x, SCHEDULE, weighting, MMDConfig(student_steps=2),
                preconditioner=precond, generator=torch.Generator().manual_seed(15),
            )  # fmt: skip
            values[name] = float(loss.mean())
        assert values["collapsed"] > 0
        assert abs(values["exact"]) < 0.05 * values["collapsed"], values


def test_parameter_space_mmd_restores_the_missing_variance():
    """30 Adam steps on a one-parameter student `x~ = x_hat + tau sqrt(Var) xi` (tau = 0.2)
    move `tau` towards 1, the exact sampler."""
    oracle = gaussian_oracle()
    teacher = OracleTeacher(oracle)
    tau = nn.Parameter(torch.tensor(0.2, dtype=torch.float64))
    gen = torch.Generator().manual_seed(16)

    def student(z, level):
        _, mean_k, var_k = oracle.posterior(z, level)
        xi = torch.randn(mean_k[:, 0].shape, generator=gen, dtype=torch.float64)
        return oracle.from_basis((mean_k[:, 0] + tau * var_k[:, 0].sqrt() * xi).view(z.shape))

    opt = torch.optim.Adam([tau], lr=0.05)
    for i in range(30):
        x, _ = oracle.sample(256, gen)
        opt.zero_grad()
        mmd_parameter_loss(
            student, teacher, "x", x, SCHEDULE, sigmoid_weight(-2.0), MMDConfig(student_steps=2),
            generator=torch.Generator().manual_seed(100 + i),
        ).mean().backward()  # fmt: skip
        opt.step()
    assert abs(float(tau.detach()) - 1.0) < 0.3, float(tau.detach())


def test_mcm_distillation_steps_decrease_the_loss_on_the_oracle():
    oracle = gaussian_oracle()
    x, _ = oracle.sample(256, torch.Generator().manual_seed(17))
    net = TinyNet().double()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    cfg = MCMConfig(student_steps=2, n_teacher_start=8, n_teacher_end=8)

    def loss():
        return mcm_loss(
            as_denoiser(net, "v"), x, SCHEDULE, cfg, teacher=oracle.denoise,
            generator=torch.Generator().manual_seed(18),
        ).mean()  # fmt: skip

    first = float(loss().detach())
    for _ in range(40):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert float(loss().detach()) < 0.7 * first


# --------------------------------------------------------------------------- teachers


def test_oracle_teacher_is_the_oracle_and_its_components():
    oracle = mixture_oracle()
    teacher = OracleTeacher(oracle)
    gen = torch.Generator().manual_seed(19)
    z = torch.randn(16, *SHAPE, generator=gen, dtype=torch.float64)
    level = torch.linspace(-5, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(teacher(z, level), oracle.denoise(z, level))
    resp, _, _ = oracle.posterior(z, level)
    per_class = torch.stack([teacher(z, level, torch.full((16,), k)) for k in range(3)], 1)
    mixed = (resp.view(16, 3, 1, 1, 1) * per_class).sum(1)
    torch.testing.assert_close(mixed, oracle.denoise(z, level))


def test_guided_teacher_is_distilled_with_labels():
    oracle = mixture_oracle()
    teacher = Teacher(OracleTeacher(oracle), "x", SCHEDULE, sigmoid_weight(-2.0), guidance=1.5)
    labels = torch.tensor([0, 1, 2, 1])
    z = torch.randn(4, *SHAPE, dtype=torch.float64)
    level = torch.zeros(4, dtype=torch.float64)
    expected = guided_denoiser(as_denoiser(teacher.net, "x", labels=labels), oracle.denoise, 1.5)(
        z, level
    )
    torch.testing.assert_close(teacher.denoiser(labels)(z, level), expected)
    with pytest.raises(ValueError, match="needs class labels"):
        teacher.denoiser(None)
    # the MCM loss with the guided teacher is the loss with the guided formula written out
    # above, and differs from the loss with the unguided (conditional) teacher
    x, _ = oracle.sample(8, torch.Generator().manual_seed(20))
    labels = torch.arange(8) % 3
    cond = as_denoiser(teacher.net, "x", labels=labels)

    def loss(teacher_denoise):
        gen = torch.Generator().manual_seed(21)
        student = lambda z, level: 0.5 * z  # noqa: E731
        return mcm_loss(student, x, SCHEDULE, MCMConfig(2), teacher=teacher_denoise, generator=gen)

    guided = loss(teacher.denoiser(labels))
    assert guided.shape == (8,)
    torch.testing.assert_close(guided, loss(guided_denoiser(cond, oracle.denoise, 1.5)))
    assert (guided - loss(cond)).abs().max() > 1e-3


# --------------------------------------------------------------------------- runs


def run_config(tmp_path, name: str, steps: int, **train) -> object:
    return config_from_dict(
        {
            "data": {"name": "gaussian_mixture", "batch_size": 16},
            "diffusion": {"prediction": "v"},
            "optim": {"lr": 1e-3, "warmup_steps": 0, "ema_decays": [0.9]},
            "train": {
                "steps": steps, "ckpt_every": 2, "log_every": 1, "out_dir": str(tmp_path / name),
                "precision": "fp32", "compile": False, "tensorboard": False, "progress": False,
                **train,
            },
        }
    )  # fmt: skip


def distill_run(tmp_path, name, method_cfg, steps, resume=False):
    oracle = GaussianMixtureOracle.image_like(SHAPE, num_components=3, seed=0)
    dataset = make_dataset("gaussian_mixture", num_samples=64, shape=SHAPE, num_components=3)
    teacher = Teacher(OracleTeacher(oracle), "x", SCHEDULE, sigmoid_weight(-2.0))
    torch.manual_seed(0)
    trainer = build_distillation(
        method_cfg, teacher, TinyNet(), dataset, run_config(tmp_path, name, steps)
    )
    trainer.fit(resume=resume)
    return trainer


@pytest.mark.parametrize(
    "method_cfg",
    [
        MCMConfig(2, "cd", n_teacher_start=4, n_teacher_end=64, anneal_steps=4),
        MMDConfig(2, "alternating"),
        MMDConfig(2, "param", preconditioner_batches=2),
    ],
    ids=["mcm-cd", "mmd-alternating", "mmd-param"],
)
def test_distillation_resume_is_exact(tmp_path, method_cfg):
    full = distill_run(tmp_path, "full", method_cfg, 4)
    distill_run(tmp_path, "split", method_cfg, 2)
    resumed = distill_run(tmp_path, "split", method_cfg, 4, resume=True)
    assert resumed.step == 4
    for a, b in zip(full.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
    if "aux" in full.extras:
        for a, b in zip(full.extras["aux"].parameters(), resumed.extras["aux"].parameters()):
            assert torch.equal(a, b)
        assert any(
            not torch.equal(a, b)
            for a, b in zip(full.extras["aux"].parameters(), TinyNet().parameters())
        )
    records = [
        json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)


def test_student_record_is_readable_from_run_checkpoint_and_export(tmp_path):
    cfg = MCMConfig(4, "ct", n_teacher_start=8, n_teacher_end=8)
    distill_run(tmp_path, "run", cfg, 2)
    run = tmp_path / "run"
    for path in (run, list_checkpoints(run)[-1]):
        spec = student_sampling(path)
        assert spec["sampler"] == "ddim" and spec["steps"] == 4 and spec["grid"] == "uniform_t"
        torch.testing.assert_close(spec["logsnrs"], mcm_grid(SCHEDULE, 4))
    exported = export_student(run, tmp_path / "student.safetensors")
    assert read_student_spec(exported)["config"]["variant"] == "ct"
    assert student_sampling(tmp_path) is None  # not a student
    with pytest.raises(ValueError, match="checkpoints of another student"):
        distill_run(tmp_path, "run", MCMConfig(2, "ct"), 4, resume=True)


def test_bad_arguments_are_rejected_with_their_names():
    with pytest.raises(ValueError, match="student_steps"):
        MCMConfig(student_steps=0)
    with pytest.raises(ValueError, match="student_steps"):
        MMDConfig(student_steps=-1)
    with pytest.raises(ValueError, match="no noise schedule"):
        Teacher(TinyNet(), "v", None)
    with pytest.raises(ValueError, match="variant"):
        MCMConfig(4, variant="xx")
    with pytest.raises(ValueError, match="aux_steps"):
        MMDConfig(4, aux_steps=0)
    with pytest.raises(ValueError, match="unknown mmd option 'huber_c'"):
        method_config("mmd", 4, huber_c=1.0)
    with pytest.raises(ValueError, match="unknown distillation method"):
        method_config("gan", 4)
    with pytest.raises(ValueError, match="class-conditional"):
        Teacher(TinyNet(), "v", SCHEDULE, guidance=2.0)
    with pytest.raises(ValueError, match="needs a teacher"):
        mcm_loss(lambda z, level: z, torch.zeros(2, *SHAPE), SCHEDULE, MCMConfig(2, "cd"))
    with pytest.raises(ValueError, match="batch of at least 2"):
        mmd_parameter_loss(
            lambda z, level: z, TinyNet(), "v", torch.zeros(1, *SHAPE), SCHEDULE,
            sigmoid_weight(), MMDConfig(2, "param"),
        )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory) -> Path:
    """A class-conditional U-ViT checkpoint on the 8x8 digits (2 training steps)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    torch.set_num_threads(1)
    return run_training(load_config(TINY, [*FAST, "train.steps=2", f"train.out_dir={out}"]))


@pytest.mark.parametrize("method,variant", [("mcm", "cd"), ("mmd", "alternating")])
def test_cli_distills_a_checkpoint_with_guidance_and_the_student_samples(
    tmp_path, tiny_teacher, method, variant
):
    teacher = tiny_teacher
    parser = build_parser()
    run, exported = tmp_path / "student", tmp_path / "student.safetensors"
    args = parser.parse_args(
        ["distill", method, "--teacher", str(teacher), "--student-steps", "2", "--variant",
         variant, "--guidance", "1.0", "--out", str(run), "--export", str(exported),
         "--opt", "aux_teacher_weight=0.5" if method == "mmd" else "anneal_steps=10",
         *FAST, "train.steps=2", "train.ckpt_every=1"]
    )  # fmt: skip
    assert args.func(args) == 0
    assert [p.name for p in list_checkpoints(run)][-1] == "step_0000002"
    spec = student_sampling(exported)
    assert spec["sampler"] == ("ddim" if method == "mcm" else "ddpm") and spec["steps"] == 2
    make_denoise, cfg = load_denoiser(exported)
    assert cfg.model.kwargs["label_dropout"] == 0.0  # the student learns the guided teacher
    record = read_student_spec(run)
    assert record["guidance"] == 1.0 and record["config"]["variant"] == variant
    gen = generate(make_denoise, (1, 8, 8), cfg.diffusion.build_schedule(), num=4,
                   sampler=spec["sampler"], steps=spec["steps"], grid=spec["grid"],
                   labels=torch.arange(4), seed=0, progress=False)  # fmt: skip
    assert gen.nfe == 2 and torch.isfinite(gen.samples).all()
    # `difflab sample STUDENT` with no sampler/steps: the recorded sampler and exact levels
    student = api.load(exported)
    assert (student.sampler, student.steps) == (spec["sampler"], 2)
    torch.testing.assert_close(student.grid, spec["logsnrs"])
    result = api.sample(student, num=4, seed=0, progress=False)
    assert (result.sampler, result.steps, result.grid) == (spec["sampler"], 2, "explicit")
    # the samples of the recorded settings, spelled out above (labels 0..3, seed 0)
    assert result.nfe == 2
    torch.testing.assert_close(result.samples, gen.samples)
    bad = parser.parse_args(["distill", method, "--teacher", str(teacher), "--student-steps", "0",
                             "--out", str(tmp_path / "bad")])  # fmt: skip
    with pytest.raises(ValueError, match="student_steps"):
        bad.func(bad)
