"""Discrete Moment Matching (methods/discrete_mmd.py): the fixed point and the auxiliary's optimum
by enumeration on the exact discrete oracle, soft vs hard targets, the sampling path against
Monte Carlo, options and errors, and the distillation run end to end (oracle and CLI)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from tiny_run import ROOT

from difflab.cli import main as cli_main
from difflab.config import load_config
from difflab.discrete import (
    DiscreteOracle,
    LinearMaskingSchedule,
    adjust_probs,
    discrete_grid,
    prior_sample,
    step_x_posterior,
)
from difflab.eval.discrete_metrics import generative_perplexity, gradient_moment, unigram_entropy
from difflab.methods.discrete_mmd import (
    DiscreteTeacher,
    DMMDConfig,
    OracleGenerator,
    dmmd_alternating_loss,
    dmmd_auxiliary_loss,
    dmmd_generator_loss,
    dmmd_student_config,
    exact_student_moments,
    fit_dmmd,
    free_positions,
    load_teacher_weights,
    net_denoiser,
    oracle_data,
    posterior_joint,
    product_joint,
    resolve_target,
    sample_dmmd,
    student_transition,
)
from difflab.methods.distill import method_config, read_student_spec, student_grid
from difflab.nets import build_net
from difflab.train import run_training

SCHEDULE = LinearMaskingSchedule()
LEVELS = [(-1.0, 0.5), (-math.inf, 0.0), (0.7, 3.0)]  # (l_t, l_s), several tokens revealed
PROCESSES = ("masked", "uniform")
TEACHER_CFG = ROOT / "configs" / "dmmd_oracle_teacher.yaml"


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def oracle() -> DiscreteOracle:
    return DiscreteOracle.random(3, 3, seed=1)


def sharpened(oracle: DiscreteOracle, process: str, temperature: float = 0.6):
    """A generator that is not the teacher: the oracle's marginals at another temperature."""
    denoise = oracle.denoiser(process)
    return lambda z, l: adjust_probs(denoise(z, l).double(), temperature=temperature)


def expected_generator_gradient(m, aux: torch.Tensor, process: str, vocab: int) -> torch.Tensor:
    """d E[L_g] / d p(z_t) by autograd through `dmmd_generator_loss`, weighting every pair
    `(z_t, z_s)` by its exact probability (`m.weight` summed over the hard draw `x`)."""
    n, s = len(m.z_t), len(m.states)
    length = m.states.shape[1]
    p = torch.full((n, length, vocab), 1.0 / vocab, dtype=torch.float64, requires_grad=True)
    pair = m.weight.sum(1).reshape(-1)  # p(z_t, z_s), [n * s]
    rep = lambda t: t[None].expand(n, *t.shape).reshape(n * s, *t.shape[1:])  # noqa: E731
    free = free_positions(rep(m.states), process, vocab)
    p_rows = p[:, None].expand(n, s, length, vocab).reshape(n * s, length, vocab)
    loss = (pair * dmmd_generator_loss(p_rows, rep(m.teacher), rep(aux), free)).sum()
    (grad,) = torch.autograd.grad(loss, p)
    return grad


# --------------------------------------------------------------------------- the fixed point


@pytest.mark.parametrize("process", PROCESSES)
def test_generator_gradient_vanishes_when_the_generator_is_the_data(oracle, process):
    """A generator that draws from the data's joint posterior `p(x | z_t)` gives `E_g[x | z_s] =
    T(z_s)` at every reachable `z_s`; the auxiliary's optimum is then the teacher (for any anchor
    weight `c`) and the generator's expected gradient is zero. The teacher's own factorised step
    is not at the fixed point: there the gradient is not zero."""
    for l_t, l_s in LEVELS:
        m = exact_student_moments(oracle, process, l_t, l_s, posterior_joint(oracle, process))
        assert float(m.prob.sum()) == pytest.approx(1.0, abs=1e-12)
        torch.testing.assert_close(m.hard, m.teacher, atol=1e-12, rtol=0)
        for c in (0.0, 1.0):
            aux = m.auxiliary_optimum(c)
            grad = expected_generator_gradient(m, aux, process, oracle.vocab_size)
            assert float(grad.abs().max()) < 1e-12
        product = product_joint(oracle, oracle.denoiser(process))
        mp = exact_student_moments(oracle, process, l_t, l_s, product)
        grad = expected_generator_gradient(mp, mp.auxiliary_optimum(1.0), process, 3)
        assert float(grad.abs().max()) > 1e-3


def aux_gradient(m, aux: torch.Tensor, free: torch.Tensor, c: float) -> torch.Tensor:
    """d E[L_phi] / d logits of a tabular auxiliary at `aux`, each state weighted by `p(z_s)`
    (`L_phi` is linear in the target, so `E_g[x | z_s]` stands for the draws)."""
    logits = aux.clamp_min(1e-300).log().requires_grad_(True)
    loss = dmmd_auxiliary_loss(m.hard, m.teacher, logits.softmax(-1), free, c)
    (grad,) = torch.autograd.grad((m.prob * loss).sum(), logits)
    return grad


@pytest.mark.parametrize("process", PROCESSES)
def test_auxiliary_optimum_is_the_students_exact_denoiser(oracle, process):
    """The gradient of the expected auxiliary loss vanishes at `(E_g[x | z_s] + c T) / (1 + c)`
    (enumerated for a generator that is not the teacher) and not at the teacher itself."""
    gen = sharpened(oracle, process)
    for l_t, l_s in LEVELS[:2]:
        m = exact_student_moments(oracle, process, l_t, l_s, product_joint(oracle, gen))
        free = free_positions(m.states, process, 3)
        for c in (0.0, 1.0):
            assert float(aux_gradient(m, m.auxiliary_optimum(c), free, c).abs().max()) < 1e-12
            assert float(aux_gradient(m, m.teacher, free, c).abs().max()) > 1e-3


@pytest.mark.parametrize("process", PROCESSES)
def test_student_transition_samples_the_enumerated_joint(oracle, process):
    """The draw path of the loss (`student_transition`: `z_t ~ q(z_t | x)`, `x ~ Cat(p)`, `z_s ~
    q(z_s | z_t, x)`) reproduces the enumerated `p(z_s)` and `E_g[x | z_s]` within Monte Carlo
    error."""
    gen, (l_t, l_s), n = sharpened(oracle, process), LEVELS[0], 60000
    m = exact_student_moments(oracle, process, l_t, l_s, product_joint(oracle, gen))
    g = torch.Generator().manual_seed(0)
    x = oracle.sample(n, generator=g)
    levels = (
        torch.full((n,), l_t, dtype=torch.float64),
        torch.full((n,), l_s, dtype=torch.float64),
    )
    draw = student_transition(gen, x, process, 3, *levels, grad=False, target="hard", generator=g)
    base = 4 if process == "masked" else 3
    powers = base ** torch.arange(2, -1, -1)
    index = (draw.z_s * powers).sum(-1)
    counts = torch.bincount(index, minlength=base**3).double()
    state_index = (m.states * powers).sum(-1)
    torch.testing.assert_close(counts[state_index] / n, m.prob, atol=0.006, rtol=0)
    sums = torch.zeros(base**3, 3, 3, dtype=torch.float64)
    sums.index_add_(0, index, F.one_hot(draw.x, 3).double())
    seen = counts[state_index] > 2000
    mc = sums[state_index][seen] / counts[state_index][seen][:, None, None]
    torch.testing.assert_close(mc, m.hard[seen], atol=0.04, rtol=0)


def posterior_moment(m, gen, process: str, l_t: float, l_s: float) -> torch.Tensor:
    """`E_g[y | z_s]` for the posterior target `y = p(x | z_t, z_s)`, enumerated over the
    reachable pairs `(z_t, z_s)` of `m`."""
    pair = m.weight.sum(1)  # p(z_t, z_s), [n, S]
    (n, count), (length, vocab) = pair.shape, (m.states.shape[1], 3)
    probs = gen(m.z_t, torch.full((n,), l_t)).double()
    z_t = m.z_t[:, None].expand(n, count, length).reshape(-1, length)
    z_s = m.states[None].expand(n, count, length).reshape(-1, length)
    rows = probs[:, None].expand(n, count, length, vocab).reshape(-1, length, vocab)
    y = step_x_posterior(process, z_t, z_s, rows, l_t, l_s).view(n, count, length, vocab)
    return torch.einsum("ns,nslv->slv", pair, y) / m.prob[:, None, None]


def test_soft_targets_are_exact_for_masked_and_biased_for_uniform(oracle):
    """At the positions a masked `z_s` leaves free, `E_g[p | z_s] = E_g[x | z_s]` (the masked
    token's value does not enter `z_s`); a uniform `z_s` depends on the token it noises, so the
    soft target has another optimum, and `target="soft"` is refused for uniform diffusion. The
    posterior target `p(x | z_t, z_s)` has the hard target's mean for both processes."""
    for process in PROCESSES:
        gen = sharpened(oracle, process)
        for l_t, l_s in LEVELS:
            m = exact_student_moments(oracle, process, l_t, l_s, product_joint(oracle, gen), gen)
            free = free_positions(m.states, process, 3).bool()
            gap = float((m.soft - m.hard)[free].abs().max())
            if process == "masked":
                assert gap < 1e-12
            elif l_t > -math.inf:  # from pure noise z_t says nothing about x
                assert gap > 0.05
            post = posterior_moment(m, gen, process, l_t, l_s)
            torch.testing.assert_close(post, m.hard, atol=1e-12, rtol=0)
    assert resolve_target(DMMDConfig(), "masked") == "soft"
    assert resolve_target(DMMDConfig(), "uniform") == "posterior"
    with pytest.raises(ValueError, match="target='soft' is only valid for masked"):
        resolve_target(DMMDConfig(target="soft"), "uniform")
    assert resolve_target(DMMDConfig(target="posterior"), "uniform") == "posterior"


def test_posterior_target_is_the_soft_target_for_masked_diffusion(oracle):
    """Masked diffusion: at the positions both losses count, `p(x | z_t, z_s) = p`, so the
    posterior target gives the soft target's loss values and generator gradients exactly."""
    x = oracle.sample(64, generator=torch.Generator().manual_seed(0))
    aux = sharpened(oracle, "masked", 0.8)
    results = []
    for target in ("soft", "posterior"):
        torch.manual_seed(0)
        net = OracleGenerator(oracle, "masked", extra_noise_dim=2, hidden=16)
        torch.nn.init.normal_(net.correction[-1].weight, std=0.3)  # not the teacher
        gen = torch.Generator().manual_seed(1)
        student = net_denoiser(net, "masked", 3, noise_dim=2, generator=gen)
        values = []
        for update in ("generator", "auxiliary"):
            loss = dmmd_alternating_loss(
                student, aux, oracle.denoiser("masked"), x, "masked", 3, SCHEDULE,
                DMMDConfig(student_steps=2, target=target), update=update, generator=gen,
            )  # fmt: skip
            values.append(loss.detach())
            if update == "generator":
                loss.sum().backward()
        results.append((values, [p.grad.clone() for p in net.parameters()]))
    (v_soft, g_soft), (v_post, g_post) = results
    assert float(v_soft[0].abs().max()) > 0 and any(float(g.abs().max()) > 0 for g in g_soft)
    for a, b in zip(v_soft + g_soft, v_post + g_post):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-6)


# --------------------------------------------------------------------------- the losses


@pytest.mark.parametrize("process", PROCESSES)
def test_losses_vanish_at_the_teacher_and_temperature_moves_the_target(oracle, process):
    """With the auxiliary equal to the teacher the reported mismatch is 0 and the generator's
    gradient is zero; a teacher temperature (or top-p offset) makes the target differ."""
    teacher = oracle.denoiser(process)
    x = oracle.sample(64, generator=torch.Generator().manual_seed(0))
    net = OracleGenerator(oracle, process, extra_noise_dim=2)
    gen = torch.Generator().manual_seed(1)
    student = net_denoiser(net, process, 3, noise_dim=2, generator=gen)
    cfg = DMMDConfig(student_steps=2)
    loss = dmmd_alternating_loss(
        student, teacher, teacher, x, process, 3, SCHEDULE, cfg, update="generator", generator=gen
    )
    assert loss.shape == (64,) and float(loss.detach().abs().max()) == 0.0
    loss.sum().backward()
    assert all(float(p.grad.abs().max()) == 0.0 for p in net.parameters() if p.grad is not None)
    for options in ({"temperature": 0.5}, {"top_p": 0.6}):
        cfg = DMMDConfig(student_steps=2, **options)
        loss = dmmd_alternating_loss(
            student, teacher, teacher, x, process, 3, SCHEDULE, cfg, update="auxiliary",
            generator=torch.Generator().manual_seed(1),
        )  # fmt: skip
        assert float(loss.max()) > 1e-4


def test_options_and_bad_inputs_are_named(oracle):
    for bad, match in [
        ({"student_steps": 0}, "student_steps"),
        ({"target": "sharp"}, "target"),
        ({"noise_dim": -1}, "noise_dim"),
        ({"temperature": 0.0}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_p_offset": -1.0}, "top_p_offset"),
        ({"aux_steps": 0}, "aux_steps"),
        ({"variant": "param"}, "variant"),
    ]:
        with pytest.raises(ValueError, match=match):
            DMMDConfig(**bad)
    with pytest.raises(ValueError, match="unknown dmmd option 'temp'"):
        method_config("dmmd", 4, temp=2.0)
    teacher = oracle.denoiser("masked")
    x = oracle.sample(4)
    with pytest.raises(ValueError, match="update must be"):
        dmmd_alternating_loss(teacher, teacher, teacher, x, "masked", 3, SCHEDULE, DMMDConfig(),
                              update="both")  # fmt: skip
    wrong = lambda z, l: torch.full((*z.shape, 2), 0.5)  # noqa: E731
    with pytest.raises(ValueError, match=r"student returned probs of shape \[4, 3, 2\]"):
        dmmd_alternating_loss(wrong, teacher, teacher, x, "masked", 3, SCHEDULE, DMMDConfig(),
                              update="generator")  # fmt: skip
    with pytest.raises(ValueError, match="x has token values"):
        dmmd_alternating_loss(teacher, teacher, teacher, x + 3, "masked", 3, SCHEDULE,
                              DMMDConfig(), update="generator")  # fmt: skip
    with pytest.raises(ValueError, match="process must be one of"):
        resolve_target(DMMDConfig(), "absorbing")
    levels = torch.zeros(4, dtype=torch.float64), torch.full((4,), -1.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="logsnr_s must be >= logsnr_t"):
        student_transition(teacher, x, "masked", 3, *levels, grad=False)
    with pytest.raises(ValueError, match="target must be 'soft', 'hard' or 'posterior'"):
        student_transition(teacher, x, "masked", 3, *levels[::-1], grad=False, target="auto")
    net = build_net("token_transformer", vocab_size=3, seq_len=3, width=16, depth=1, heads=2,
                    emb_dim=16)  # fmt: skip
    with pytest.raises(ValueError, match="discrete teachers are unconditional"):
        DiscreteTeacher(net, "masked", 3, SCHEDULE, guidance=1.0)
    other = build_net("token_transformer", vocab_size=4, seq_len=3, width=16, depth=1, heads=2,
                      emb_dim=16)  # fmt: skip
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_teacher_weights(other, net)


def test_student_net_starts_as_the_teacher_and_records_its_grid(oracle):
    """The student config adds the noise input; the teacher's weights load with only the
    (zero-initialised) projection missing, so the student's first predictions are the teacher's;
    the student record's levels are the sampler's grid."""
    cfg = load_config(TEACHER_CFG)
    student_cfg = dmmd_student_config(cfg, DMMDConfig(student_steps=2), "masked")
    assert student_cfg.model.kwargs["extra_noise_dim"] == 16
    assert (
        dmmd_student_config(cfg, DMMDConfig(noise_dim=0), "uniform").model.kwargs["extra_noise_dim"]
        == 0
    )
    torch.manual_seed(0)
    teacher = build_net(cfg.model.name, **cfg.model.kwargs)
    student = build_net(student_cfg.model.name, **student_cfg.model.kwargs)
    missing = load_teacher_weights(student, teacher)
    assert sorted(missing) == ["noise_proj.bias", "noise_proj.weight"]
    z = prior_sample("masked", (5, 6), 3)
    level = torch.full((5,), -1.0)
    torch.testing.assert_close(student(z, level), teacher(z, level))
    grid = student_grid(DMMDConfig(student_steps=4), SCHEDULE)
    torch.testing.assert_close(grid, discrete_grid(4, SCHEDULE))


# --------------------------------------------------------------------------- end to end


def test_dmmd_student_of_the_exact_oracle_beats_the_teachers_one_step_sampler():
    """One step from all-mask: the teacher's sampler draws independent tokens (KL to the joint
    computed exactly); a one-step D-MMD student with a noise input learns the dependence."""
    oracle = DiscreteOracle.random(3, 3, seed=1)
    grid = discrete_grid(1, SCHEDULE)
    teacher_kl = oracle.kl_to(oracle.sampler_distribution("masked", grid))
    torch.manual_seed(0)
    student = OracleGenerator(oracle, "masked", extra_noise_dim=4, hidden=64)
    aux = OracleGenerator(oracle, "masked", hidden=64)
    cfg = DMMDConfig(student_steps=1)
    fit_dmmd(student, aux, oracle.denoiser("masked"), oracle_data(oracle), "masked", 3, SCHEDULE,
             cfg, steps=150, batch_size=128, lr=3e-3, seed=0)  # fmt: skip
    g = torch.Generator().manual_seed(5)
    denoise = net_denoiser(student, "masked", 3, noise_dim=4, generator=g)
    with torch.no_grad():
        x = sample_dmmd(denoise, prior_sample("masked", (40000, 3), 3), 1, SCHEDULE, "masked",
                        generator=g)  # fmt: skip
    student_kl = oracle.kl_from_samples(x) - (oracle.num_states - 1) / (2 * len(x))
    assert teacher_kl > 0.1
    assert student_kl < 0.5 * teacher_kl, (student_kl, teacher_kl)


def test_cli_distills_a_discrete_teacher_and_samples_the_student(tmp_path, capsys):
    """`difflab train` a tiny masked teacher, `difflab distill dmmd` it, export, and `difflab
    sample` the student on its own two steps."""
    fast = ["train.progress=false", "train.tensorboard=false", "train.log_every=5"]
    cfg = load_config(TEACHER_CFG, [f"train.out_dir={tmp_path / 'teacher'}", "train.steps=10",
                                    *fast])  # fmt: skip
    teacher_run = run_training(cfg)
    student = tmp_path / "student.safetensors"
    code = cli_main([
        "distill", "dmmd", "--teacher", str(teacher_run), "--student-steps", "2",
        "--out", str(tmp_path / "student"), "--export", str(student), "--opt", "temperature=0.9",
        "train.steps=4", *fast,
    ])  # fmt: skip
    assert code == 0
    spec = read_student_spec(student)
    assert (spec["method"], spec["process"], spec["steps"], spec["noise_dim"]) == (
        "dmmd", "masked", 2, 16,
    )  # fmt: skip
    assert spec["config"]["temperature"] == 0.9
    capsys.readouterr()
    out = tmp_path / "samples"
    assert cli_main(["sample", str(student), "--num", "3", "--out", str(out)]) == 0
    assert "masked x2 steps" in capsys.readouterr().out
    lines = [t for t in (out / "samples.txt").read_text().splitlines() if not t.startswith("---")]
    assert len(lines) == 3 and all(len(t.split()) == 6 for t in lines)
    code = cli_main(["distill", "dmmd", "--teacher", str(teacher_run), "--student-steps", "2",
                     "--guidance", "1.5", "--out", str(tmp_path / "g")])  # fmt: skip
    assert code == 2
    assert "discrete teachers are unconditional" in capsys.readouterr().err


# --------------------------------------------------------------------------- sample metrics


class UnigramModel(torch.nn.Module):
    """A reference 'language model' with one logit per token, positions independent: its
    per-token loss gradient is `softmax(theta) - onehot(x)`, so the expected gradient gap of two
    sample sets is the gap of their pooled unigram frequencies."""

    def __init__(self, vocab: int):
        super().__init__()
        self.theta = torch.nn.Parameter(torch.zeros(vocab))

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        return self.theta.log_softmax(0)[x].sum(-1)


def test_gradient_moment_is_unbiased_and_zero_for_the_data():
    """GM of samples with unigram `q` against data with unigram `p` is `||p - q||^2` under the
    unigram reference model (mean of repeats within 4 standard errors); data against independent
    data averages to zero."""
    model = UnigramModel(3)
    loss = lambda x: -model.log_prob(x).mean() / x.shape[1]  # noqa: E731
    p, q = torch.tensor([0.5, 0.3, 0.2]), torch.tensor([0.3, 0.3, 0.4])
    g = torch.Generator().manual_seed(0)
    draw = lambda probs: torch.multinomial(probs, 400 * 4, True, generator=g).view(400, 4)  # noqa: E731
    shifted = [gradient_moment(model, loss, draw(q), draw(p), chunks=8) for _ in range(20)]
    same = [gradient_moment(model, loss, draw(p), draw(p), chunks=8) for _ in range(20)]
    exact = float(((p - q) ** 2).sum())
    for values, want in ((shifted, exact), (same, 0.0)):
        mean = sum(v for v, _ in values) / len(values)
        se = (sum((v - mean) ** 2 for v, _ in values) / (len(values) - 1) / len(values)) ** 0.5
        assert abs(mean - want) < 4 * se + 1e-6, (mean, want, se)
    assert shifted[0][1] > 0
    with pytest.raises(ValueError, match="chunks must be >= 2"):
        gradient_moment(model, loss, draw(q), draw(p), chunks=1)


def test_unigram_entropy_and_generative_perplexity_are_exact():
    x = torch.tensor([[0, 0, 1, 2]])
    assert unigram_entropy(x, 4) == pytest.approx(
        -(0.5 * math.log(0.5) + 2 * 0.25 * math.log(0.25))
    )
    model = UnigramModel(5)  # uniform over 5 tokens: perplexity 5 for any text
    assert generative_perplexity(model.log_prob, torch.randint(0, 5, (7, 3))) == pytest.approx(5.0)
    with pytest.raises(ValueError, match=r"outside \[0, 3\]"):
        unigram_entropy(x + 2, 4)
    with pytest.raises(ValueError, match="integer tensor"):
        unigram_entropy(x.float(), 4)
