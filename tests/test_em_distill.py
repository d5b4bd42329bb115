"""EM Distillation (methods/em_distill.py): K = 0 is VSD, the Langevin E-step keeps an exact
Gaussian target, noise cancellation keeps the expected update and cuts its variance, bad
arguments, resume and the CLI (docs/methods/em_distill.md)."""

from __future__ import annotations

import math

import pytest
import torch
from test_distill import FAST, SCHEDULE, SHAPE, TinyNet, distill_run, tiny_teacher  # noqa: F401
from torch import nn

from difflab import api
from difflab.cli import build_parser
from difflab.diffusion.oracle import GaussianMixtureOracle
from difflab.diffusion.parameterization import as_denoiser
from difflab.methods.distill import Teacher, read_student_spec, student_sampling
from difflab.methods.em_distill import (
    EMDConfig,
    emd_grid,
    emd_loss,
    emd_loss_fn,
    langevin_e_step,
    m_step_residual,
)
from difflab.train import list_checkpoints


def sigmoid_w(level: torch.Tensor, neg_dl: torch.Tensor) -> torch.Tensor:
    """The sigmoid weighting (bias -2) on the eps-MSE, written out."""
    return 0.5 * neg_dl / (1 + torch.exp(level + 2.0))


# --------------------------------------------------------------------------- K = 0 is VSD


def vsd_gradient(net, aux, teacher, batch: int, cfg: EMDConfig, seed: int) -> list[torch.Tensor]:
    """Diff-Instruct / VSD written independently: `t ~ U(t_min, t_max)`, `x = g(z)` with `g` the
    net at `l*`, `x_t = a x + s eps`; the generator's gradient is
    `mean_i w(l_i) e^l_i (x_hat_student(x_t) - x_hat_teacher(x_t)) . dx_i/dtheta / D`."""
    gen = torch.Generator().manual_seed(seed)
    lo, hi = cfg.t_min, cfg.t_max
    t = lo + (hi - lo) * torch.rand(batch, generator=gen, dtype=torch.float64)
    level, neg_dl = SCHEDULE.logsnr(t).float(), -SCHEDULE.dlogsnr_dt(t).float()
    eps = torch.randn(batch, *SHAPE, generator=gen)
    z = torch.randn(batch, *SHAPE, generator=gen)
    a = torch.sigmoid(level).sqrt().view(-1, 1, 1, 1)
    s = torch.sigmoid(-level).sqrt().view(-1, 1, 1, 1)
    star = torch.full((batch,), cfg.logsnr_star)
    a_star, s_star = math.sqrt(torch.sigmoid(star[0])), math.sqrt(torch.sigmoid(-star[0]))
    x = a_star * z - s_star * net(z, star)  # the v-prediction net's x_hat at l*
    x_t = (a * x + s * eps).detach()
    with torch.no_grad():
        v_aux = aux(x_t, level)
        x_student = a * x_t - s * v_aux
        x_teacher = teacher(x_t, level)
    w = (sigmoid_w(level, neg_dl) * torch.exp(level)).view(-1, 1, 1, 1)
    loss = (w * (x_student - x_teacher) * x).flatten(1).mean(1).mean()
    return torch.autograd.grad(loss, list(net.parameters()))


def emd_gradient(net, aux, teacher, batch: int, cfg: EMDConfig, seed: int) -> list[torch.Tensor]:
    from difflab.diffusion.losses import sigmoid_weight

    loss = emd_loss(
        as_denoiser(net, "v"), as_denoiser(aux, "v"), teacher, torch.zeros(batch, *SHAPE),
        SCHEDULE, sigmoid_weight(-2.0), cfg, generator=torch.Generator().manual_seed(seed),
    ).mean()  # fmt: skip
    return torch.autograd.grad(loss, list(net.parameters()))


@pytest.mark.parametrize("variant", ["eps_z", "x_z", "eps"])
def test_k0_is_exactly_the_vsd_gradient(variant):
    torch.manual_seed(0)
    net, aux = TinyNet(), TinyNet()
    oracle = GaussianMixtureOracle.image_like(SHAPE, num_components=3, seed=0)
    cfg = EMDConfig(mcmc_steps=0, variant=variant, logsnr_star=-1.0)
    expected = vsd_gradient(net, aux, oracle.denoise, 16, cfg, seed=3)
    got = emd_gradient(net, aux, oracle.denoise, 16, cfg, seed=3)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
    assert max(float(g.abs().max()) for g in expected) > 1e-4  # not a vacuous zero
    # one Langevin step is another update
    one = emd_gradient(net, aux, oracle.denoise, 16, EMDConfig(mcmc_steps=1, variant=variant), 3)
    assert max(float((a - b).abs().max()) for a, b in zip(one, expected)) > 1e-4


# --------------------------------------------------------------------------- the E-step


class Linear:
    """A linear-Gaussian world in `D` dims: data `N(mu, Sigma)` (the teacher), a generator
    `g(z) = m + A z` and its exact noised marginal (the student score): everything closed-form,
    and the E-step's target `pi(eps, z)` is Gaussian with precision
    `P = I + M^T (C_p^-1 - C_g^-1) M` and mean `P^-1 M^T C_p^-1 a (mu - m)`, where
    `x_t = a m + M (eps, z)`, `M = [s I, a A]`, `C_p = a^2 Sigma + s^2 I`, `C_g = M M^T`."""

    def __init__(self, level: float, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        d = math.prod(SHAPE)
        self.d = d
        root = torch.randn(d, d, generator=gen, dtype=torch.float64) / math.sqrt(d)
        self.mu = torch.randn(d, generator=gen, dtype=torch.float64)
        self.sigma = root @ root.T + 0.3 * torch.eye(d, dtype=torch.float64)
        self.m = torch.randn(d, generator=gen, dtype=torch.float64) * 0.5
        self.A = torch.randn(d, d, generator=gen, dtype=torch.float64) * 0.3
        self.level = torch.tensor(level, dtype=torch.float64)
        a, s = math.sqrt(torch.sigmoid(self.level)), math.sqrt(torch.sigmoid(-self.level))
        self.a, self.s = a, s
        eye = torch.eye(d, dtype=torch.float64)
        self.M = torch.cat([s * eye, a * self.A], 1)
        self.cp = a * a * self.sigma + s * s * eye
        self.cg = self.M @ self.M.T
        prec = (
            torch.eye(2 * d, dtype=torch.float64)
            + self.M.T @ (torch.linalg.inv(self.cp) - torch.linalg.inv(self.cg)) @ self.M
        )
        self.cov = torch.linalg.inv(prec)
        self.mean = self.cov @ self.M.T @ torch.linalg.solve(self.cp, a * (self.mu - self.m))

    def g(self, z):
        return (self.m + z.flatten(1) @ self.A.T).view(z.shape)

    def denoiser(self, mean, cov_x):
        """`E[x | x_t]` for `x ~ N(mean, cov_x)`."""
        gain = self.a * cov_x @ torch.linalg.inv(self.a**2 * cov_x + self.s**2 * torch.eye(self.d))

        def denoise(x_t, level):
            flat = x_t.flatten(1) - self.a * mean
            return (mean + flat @ gain.T).view(x_t.shape)

        return denoise

    def teacher(self):
        return self.denoiser(self.mu, self.sigma)

    def student(self):
        return self.denoiser(self.m, self.A @ self.A.T)

    def exact(self, n, seed):
        gen = torch.Generator().manual_seed(seed)
        w = self.mean + torch.randn(n, 2 * self.d, generator=gen, dtype=torch.float64) @ (
            torch.linalg.cholesky(self.cov).T
        )
        return w[:, : self.d].reshape(n, *SHAPE), w[:, self.d :].reshape(n, *SHAPE)

    def run(self, cfg, n, seed, student=None):
        eps, z = self.exact(n, seed)
        level = self.level.expand(n)
        chain = langevin_e_step(
            self.g, self.teacher(), student or self.student(), eps, z, level, cfg,
            generator=torch.Generator().manual_seed(seed + 1),
        )  # fmt: skip
        return torch.cat([chain.eps.flatten(1), chain.z.flatten(1)], 1)


@pytest.mark.parametrize("variant", ["eps_z", "x_z", "eps"])
def test_langevin_e_step_keeps_an_exact_gaussian_target(variant):
    """Started from exact draws of `pi`, 100 steps (Langevin time 1 for eps) keep the mean and
    the variances within Monte-Carlo error (ULA's O(h) bias is ~0.5% here, below the
    tolerance); the same chain with a wrong student score (the teacher's) drifts away."""
    world, n = Linear(level=0.0), 20_000
    cfg = EMDConfig(mcmc_steps=100, step_eps=0.01, step_z=0.02, variant=variant)
    w = world.run(cfg, n, seed=1)
    se = world.cov.diagonal().sqrt() / math.sqrt(n)
    z_mean = (w.mean(0) - world.mean) / se
    assert z_mean.abs().max() < 4.5, z_mean
    var_ratio = w.var(0) / world.cov.diagonal()
    assert (var_ratio - 1).abs().max() < 5 * math.sqrt(2 / n) + 0.01, var_ratio
    wrong = world.run(cfg, n, seed=1, student=world.teacher())  # delta = 0: drifts to N(0, I)
    moved = (wrong.mean(0) - world.mean) / se
    assert moved.abs().max() > 20


# --------------------------------------------------------------------------- noise cancellation


def test_noise_cancellation_keeps_the_expected_update_and_cuts_its_variance():
    """On the oracle (teacher) with a mis-fitted student score, a generator `g(z) = c z + b`:
    the M-step's per-example update of `(b, c)`, `w Delta` and `w Delta z_K`, has the same mean
    with and without cancellation (the chain is the same; the difference is the carried noise
    `(1 - h) s / (a h) eta_K`), and a much smaller variance with it."""
    from difflab.diffusion.losses import sigmoid_weight

    oracle = GaussianMixtureOracle.image_like(SHAPE, num_components=3, seed=0)
    wrong = GaussianMixtureOracle.image_like(SHAPE, num_components=3, seed=1)
    gen = torch.Generator().manual_seed(0)
    c = 0.5 + 0.2 * torch.rand(SHAPE, generator=gen, dtype=torch.float64)
    b = 0.3 * torch.randn(SHAPE, generator=gen, dtype=torch.float64)
    n, cfg = 20_000, EMDConfig(mcmc_steps=4)
    t = 0.2 + 0.6 * torch.rand(n, generator=gen, dtype=torch.float64)
    level, neg_dl = SCHEDULE.logsnr(t), -SCHEDULE.dlogsnr_dt(t)
    eps = torch.randn(n, *SHAPE, generator=gen, dtype=torch.float64)
    z = torch.randn(n, *SHAPE, generator=gen, dtype=torch.float64)
    chain = langevin_e_step(lambda v: c * v + b, oracle.denoise, wrong.denoise, eps, z, level,
                            cfg, generator=gen)  # fmt: skip
    w = (sigmoid_weight(-2.0)(level, neg_dl) * torch.exp(level)).view(-1, 1, 1, 1)
    updates = {}
    for cancel in (True, False):
        delta = m_step_residual(chain, level, EMDConfig(mcmc_steps=4, noise_cancel=cancel))
        updates[cancel] = torch.cat([(w * delta).flatten(1), (w * delta * chain.z).flatten(1)], 1)
    diff = updates[False] - updates[True]
    score = diff.mean(0) / (diff.std(0) / math.sqrt(n))
    assert score.abs().max() < 4.5, score  # same expected update
    assert (updates[True].mean(0).abs() / (updates[True].std(0) / math.sqrt(n))).max() > 10
    ratio = updates[False].var(0) / updates[True].var(0)
    assert ratio.min() > 10, ratio  # much lower variance


# --------------------------------------------------------------------------- errors, runs, CLI


def test_bad_arguments_are_rejected_with_their_names():
    with pytest.raises(ValueError, match="mcmc_steps must be >= 0"):
        EMDConfig(mcmc_steps=-1)
    with pytest.raises(ValueError, match="step_eps"):
        EMDConfig(step_eps=0.0)
    with pytest.raises(ValueError, match="step_z"):
        EMDConfig(step_z=-0.1)
    with pytest.raises(ValueError, match="student_steps must be 1"):
        EMDConfig(student_steps=2)
    with pytest.raises(ValueError, match="variant"):
        EMDConfig(variant="x")
    with pytest.raises(ValueError, match="no noise schedule"):
        Teacher(TinyNet(), "v", None)
    with pytest.raises(ValueError, match="noise schedule"):
        emd_loss_fn(EMDConfig(), None, sigmoid_w, lambda net, labels: net, lambda **c: None)
    with pytest.raises(ValueError, match="logsnr_star"):
        EMDConfig(logsnr_star=math.inf)


def test_emd_resume_is_exact_and_trains_both_networks(tmp_path):
    cfg = EMDConfig(mcmc_steps=2)
    full = distill_run(tmp_path, "full", cfg, 4)
    distill_run(tmp_path, "split", cfg, 2)
    resumed = distill_run(tmp_path, "split", cfg, 4, resume=True)
    assert resumed.step == 4
    for a, b in zip(full.net.state_dict().values(), resumed.net.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(full.extras["aux"].parameters(), resumed.extras["aux"].parameters()):
        assert torch.equal(a, b)
    torch.manual_seed(0)
    init = TinyNet()
    for module in (full.net, full.extras["aux"]):
        assert any(not torch.equal(a, b) for a, b in zip(module.parameters(), init.parameters()))
    spec = student_sampling(tmp_path / "full")
    assert (spec["sampler"], spec["steps"]) == ("ddim", 1)
    torch.testing.assert_close(spec["grid"], emd_grid(cfg.logsnr_star))


def test_cli_distills_emd_with_labels_resumes_and_samples_in_one_step(tmp_path, tiny_teacher):  # noqa: F811
    parser = build_parser()
    run, exported = tmp_path / "emd", tmp_path / "emd.safetensors"

    def distill(steps: int, *extra: str) -> None:
        args = parser.parse_args(
            ["distill", "emd", "--teacher", str(tiny_teacher), "--mcmc-steps", "2", "--out",
             str(run), "--guidance", "1.0", "--opt", "logsnr_star=-2", *extra, *FAST,
             f"train.steps={steps}", "train.ckpt_every=1"]
        )  # fmt: skip
        assert args.func(args) == 0

    distill(2)
    distill(3, "--resume", "--export", str(exported))
    assert [p.name for p in list_checkpoints(run)][-1] == "step_0000003"
    record = read_student_spec(exported)
    assert record["method"] == "emd" and record["config"]["mcmc_steps"] == 2
    assert record["guidance"] == 1.0 and record["grid"] == "explicit"
    student = api.load(exported)
    assert (student.sampler, student.steps) == ("ddim", 1)
    torch.testing.assert_close(student.grid, emd_grid(-2.0))
    result = api.sample(student, num=4, progress=False)
    assert result.nfe == 1 and torch.isfinite(result.samples).all()
    # the sample is the generator g(z) = x_hat(z, l*) of the initial noise
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, *result.samples.shape[1:], generator=gen)
    net: nn.Module = student.net
    labels = result.labels
    expected = as_denoiser(net, student.config.diffusion.prediction, labels=labels)(
        z, torch.full((4,), -2.0)
    )
    torch.testing.assert_close(result.samples, expected.clamp(-1, 1), rtol=1e-4, atol=1e-4)
    bad = parser.parse_args(["distill", "emd", "--teacher", str(tiny_teacher), "--mcmc-steps",
                             "-1", "--out", str(tmp_path / "bad")])  # fmt: skip
    with pytest.raises(ValueError, match="mcmc_steps"):
        bad.func(bad)
