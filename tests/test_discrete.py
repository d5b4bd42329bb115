"""The discrete core (`difflab.discrete`): posteriors against Bayes' rule on enumerated cases,
the continuous-time NELBOs against the exact NLL of an explicit joint, ancestral samplers
against the exact law of their Markov chain and against the true joint, argument errors, the
token transformers, and a tiny `difflab train` + `difflab sample` run."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F

from difflab.discrete import (
    DISCRETE_SAMPLERS,
    DiscreteOracle,
    LinearMaskingSchedule,
    adjust_probs,
    check_logsnr,
    check_tokens,
    corrupt_masked,
    corrupt_uniform,
    denoiser_from_logits,
    discrete_grid,
    exact_sampler_distribution,
    get_discrete_sampler,
    marginal_masked,
    marginal_uniform,
    masked_nelbo,
    posterior_masked,
    posterior_uniform,
    prior_sample,
    sample_categorical,
    sample_masked,
    sample_uniform,
    sampler_error,
    step_x_posterior,
    uniform_nelbo,
)

V = 3
LEVELS = [-math.inf, -3.0, -0.5, 0.0, 1.5, 4.0, math.inf]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def oracle() -> DiscreteOracle:
    return DiscreteOracle.random(5, V, seed=3)


# ----------------------------------------------------------------------------- kernels by hand


def alpha(level: float) -> float:
    return 1.0 / (1.0 + math.exp(-level)) if math.isfinite(level) else float(level > 0)


def masked_kernel(a_keep: float) -> torch.Tensor:
    """`K[i, j] = q(z_t = j | z_s = i)` over `V + 1` states (mask last) for keep prob `a_keep`."""
    k = torch.zeros(V + 1, V + 1, dtype=torch.float64)
    for i in range(V):
        k[i, i], k[i, V] = a_keep, 1.0 - a_keep
    k[V, V] = 1.0
    return k


def uniform_kernel(a_keep: float) -> torch.Tensor:
    return a_keep * torch.eye(V, dtype=torch.float64) + (1.0 - a_keep) / V


def bayes(kernel_st: torch.Tensor, prior_s: torch.Tensor, z_t: int) -> torch.Tensor:
    """`q(z_s | z_t) ∝ q(z_t | z_s) q(z_s)`."""
    joint = kernel_st[:, z_t] * prior_s
    return joint / joint.sum()


PAIRS = [(lt, ls) for lt in LEVELS for ls in LEVELS if ls > lt]


@pytest.mark.parametrize("lt,ls", PAIRS)
def test_masked_posterior_is_bayes_for_hard_and_soft_x(lt, ls):
    a_t, a_s = alpha(lt), alpha(ls)
    probs = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    for z_t in range(V + 1):
        if a_t == 1.0 and z_t == V:
            continue  # impossible: nothing is masked at +inf
        mixture = torch.zeros(V + 1, dtype=torch.float64)
        evidence = 0.0
        for x in range(V):
            prior_s = masked_kernel(a_s)[x]  # q(z_s | x)
            kernel = masked_kernel(a_t / a_s if a_s > 0 else 1.0)
            lik = float((prior_s * kernel[:, z_t]).sum())  # q(z_t | x)
            if lik == 0:
                continue
            want = bayes(kernel, prior_s, z_t)
            got = posterior_masked(torch.tensor([z_t]), F.one_hot(torch.tensor([x]), V).double(),
                                   lt, ls)[0]  # fmt: skip
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
            # the mixture over x weighted by p(x | z_t) ∝ probs(x) q(z_t | x)
            mixture += probs[x] * lik * want
            evidence += probs[x] * lik
        if z_t == V:  # for a masked z_t, q(z_t | x) does not depend on x: the plug-in is exact
            got = posterior_masked(torch.tensor([z_t]), probs[None], lt, ls)[0]
            torch.testing.assert_close(got, mixture / evidence, atol=1e-12, rtol=0)


@pytest.mark.parametrize("lt,ls", PAIRS)
def test_uniform_posterior_is_bayes_and_the_exact_mixture(lt, ls):
    a_t, a_s = alpha(lt), alpha(ls)
    probs = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    kernel = uniform_kernel(a_t / a_s if a_s > 0 else 1.0)
    for z_t in range(V):
        mixture = torch.zeros(V, dtype=torch.float64)
        for x in range(V):
            want = bayes(kernel, uniform_kernel(a_s)[x], z_t)
            got = posterior_uniform(torch.tensor([z_t]), F.one_hot(torch.tensor([x]), V).double(),
                                    lt, ls)[0]  # fmt: skip
            torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
            mixture += probs[x] * want
        # the model's step: sum_x p(x | z_t) q(z_s | z_t, x) with p(x | z_t) = probs (given)
        got = posterior_uniform(torch.tensor([z_t]), probs[None], lt, ls)[0]
        torch.testing.assert_close(got, mixture, atol=1e-12, rtol=0)


def test_posteriors_sum_to_one_for_random_inputs():
    g = gen(1)
    z_m = torch.randint(0, V + 1, (64, 7), generator=g)
    z_u = torch.randint(0, V, (64, 7), generator=g)
    probs = torch.softmax(torch.randn(64, 7, V, generator=g, dtype=torch.float64), -1)
    lt = torch.randn(64, 7, generator=g, dtype=torch.float64) * 4
    ls = lt + torch.rand(64, 7, generator=g, dtype=torch.float64) * 5  # per-token levels
    for post in (posterior_masked(z_m, probs, lt, ls), posterior_uniform(z_u, probs, lt, ls)):
        assert bool((post >= 0).all())
        torch.testing.assert_close(post.sum(-1), torch.ones(64, 7, dtype=torch.float64))


@pytest.mark.parametrize("process", ["masked", "uniform"])
def test_step_x_posterior_is_bayes_over_the_draw(process):
    """`p(x_i | z_t, z_s)` for `x_i ~ probs`, `z_s ~ q(z_s | z_t, x)`: Bayes' rule over the
    one-hot posteriors, enumerated; its mean over `z_s` given `z_t` is `probs`."""
    probs = torch.tensor([0.6, 0.1, 0.3], dtype=torch.float64)
    states = V + 1 if process == "masked" else V
    post = posterior_masked if process == "masked" else posterior_uniform
    for lt, ls in [(-math.inf, -1.0), (-0.5, 2.0), (1.0, 1.5), (0.3, math.inf)]:
        for z_t in range(states):
            zt = torch.tensor([z_t])
            lik = torch.stack(  # q(z_s | z_t, x = k), [V(k), states(z_s)]
                [post(zt, F.one_hot(torch.tensor([k]), V).double(), lt, ls)[0] for k in range(V)]
            )
            joint = probs[:, None] * lik  # p(x = k, z_s)
            mean = torch.zeros(V, dtype=torch.float64)
            for z_s in range(states):
                if joint[:, z_s].sum() == 0:
                    continue
                got = step_x_posterior(process, zt, torch.tensor([z_s]), probs[None], lt, ls)[0]
                want = joint[:, z_s] / joint[:, z_s].sum()
                torch.testing.assert_close(got, want, atol=1e-12, rtol=0)
                mean += joint[:, z_s].sum() * got
            torch.testing.assert_close(mean, probs, atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match=r"z_s must have the shape of z_t \[1, 2\]"):
        z_t, z_s = torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long)
        step_x_posterior(process, z_t, z_s, torch.ones(1, 2, V) / V, 0.0, 1.0)
    with pytest.raises(ValueError, match=r"z_s has token values in \[5, 5\]"):
        step_x_posterior(process, torch.zeros(1, 1, dtype=torch.long), torch.tensor([[5]]),
                         torch.ones(1, 1, V) / V, 0.0, 1.0)  # fmt: skip


def test_marginals_match_the_forward_draws():
    x = torch.randint(0, V, (1, 20000), generator=gen(2))
    for level in (-1.0, 0.7):
        for corrupt, marginal, k in ((corrupt_masked, marginal_masked, V + 1),
                                     (corrupt_uniform, marginal_uniform, V)):  # fmt: skip
            z = corrupt(x, level, V, generator=gen(3))
            want = marginal(F.one_hot(x[0], V).double(), level)
            got = F.one_hot(z[0], k).double()
            # per-token frequencies against the per-token law, pooled over tokens with x = 0
            sel = x[0] == 0
            torch.testing.assert_close(got[sel].mean(0), want[sel].mean(0), atol=0.02, rtol=0)


def test_forward_processes_at_the_ends():
    x = torch.randint(0, V, (4, 9), generator=gen(4))
    assert torch.equal(corrupt_masked(x, math.inf, V), x)
    assert bool((corrupt_masked(x, -math.inf, V) == V).all())
    assert torch.equal(corrupt_uniform(x, math.inf, V), x)
    assert torch.equal(prior_sample("masked", (2, 3), V), torch.full((2, 3), V))


# ----------------------------------------------------------------------------- NELBO


def test_linear_masking_schedule_is_linear_in_alpha_and_inverts():
    s = LinearMaskingSchedule()
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64, requires_grad=True)
    lam = s.logsnr(t)
    torch.testing.assert_close(torch.sigmoid(lam), 1 - t)
    torch.testing.assert_close(s.t_of(lam), t)
    (grad,) = torch.autograd.grad(lam.sum(), t)
    torch.testing.assert_close(s.dlogsnr_dt(t), grad)
    ends = s.logsnr(torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert ends.tolist() == [math.inf, -math.inf]
    clipped = LinearMaskingSchedule(1e-4)
    assert clipped.logsnr_max == pytest.approx(math.log(9999))
    assert clipped.logsnr_min == pytest.approx(-math.log(9999))


@pytest.mark.parametrize("process,points", [("masked", 12), ("uniform", 32)])
def test_exact_denoiser_nelbo_equals_the_exact_nll(oracle, process, points):
    """Expectation over z_t by enumeration, over t by quadrature: the continuous-time bound with
    the exact denoiser is tight, -log p(x), for each x (both processes)."""
    x = oracle.sample(2, generator=gen(5))
    got = oracle.exact_nelbo(process, x, points=points)
    torch.testing.assert_close(got, -oracle.log_prob(x), atol=2e-4, rtol=0)


@pytest.mark.parametrize("process", ["masked", "uniform"])
def test_the_bound_of_another_joints_denoiser_is_that_joints_nll(oracle, process):
    """Any exact denoiser of some joint `q` gives `NELBO(x) = -log q(x)`; on data from `p` the
    bound then exceeds `-log p(x)` on average by `KL(p || q) > 0`."""
    other = DiscreteOracle.random(5, V, seed=4)
    x = oracle.sample(2, generator=gen(6))
    got = other.exact_nelbo(process, x, logits_fn=other.logits(process), points=32)
    torch.testing.assert_close(got, -other.log_prob(x), atol=2e-4, rtol=0)
    assert other.kl_to(oracle.joint) > 0.1


def test_masked_nelbo_monte_carlo_matches_the_nll(oracle):
    """The unbiased one-sample estimator (the training loss) with the exact denoiser, averaged
    over 3000 draws per sequence, is -log p(x) within 4 standard errors."""
    x = oracle.sample(4, generator=gen(7))
    reps = 3000
    values = masked_nelbo(oracle.logits("masked"), x.repeat(reps, 1), V, generator=gen(8))
    values = values.double().reshape(reps, 4)
    mean, se = values.mean(0), values.std(0) / math.sqrt(reps)
    assert bool(((mean + oracle.log_prob(x)).abs() < 4 * se).all()), (mean, se)


def test_uniform_nelbo_monte_carlo_matches_the_exact_integral_at_fixed_times(oracle):
    """At fixed t the estimator's mean over z_t is the quadrature integrand (the exact oracle
    value), so the sampled loss and `exact_nelbo` agree on what they integrate."""
    x = oracle.sample(1, generator=gen(9))
    reps = 4000
    t = torch.full((reps,), 0.5, dtype=torch.float64)
    values = uniform_nelbo(oracle.logits("uniform"), x.repeat(reps, 1), V, t=t, generator=gen(10))
    values = values.double()
    # the exact integrand at t = 1/2: enumerate z_t
    from difflab.discrete.nelbo import uniform_integrand

    s = LinearMaskingSchedule()
    level = s.logsnr(torch.tensor(0.5, dtype=torch.float64))
    a = float(torch.sigmoid(level))
    z = oracle.sequences
    q = torch.where(z == x, a + (1 - a) / V, (1 - a) / V).prod(-1)
    logp = oracle.logits("uniform")(z, level.expand(len(z))).double()
    exact = (q * uniform_integrand(logp, x.expand(len(z), -1), z, level.expand(len(z)))).sum()
    exact = exact * -s.dlogsnr_dt(torch.tensor(0.5, dtype=torch.float64)) * (1 - a) / V
    se = values.std() / math.sqrt(reps)
    assert abs(float(values.mean() - exact)) < 4 * float(se)


def test_clipped_schedule_adds_the_end_terms(oracle):
    """With alpha clipped to [eps, 1 - eps], the bound of the exact denoiser stays >= the NLL
    and is close to it (the end terms are O(eps))."""
    x = oracle.sample(2, generator=gen(11))
    reps = 3000
    clipped = LinearMaskingSchedule(1e-3)
    v = masked_nelbo(oracle.logits("masked"), x.repeat(reps, 1), V, schedule=clipped,
                     generator=gen(12)).double().reshape(reps, 2)  # fmt: skip
    nll = -oracle.log_prob(x)
    mean, se = v.mean(0), v.std(0) / math.sqrt(reps)
    assert bool(((mean - nll).abs() < 4 * se + 0.01).all())


# ----------------------------------------------------------------------------- samplers


@pytest.fixture(scope="module")
def small() -> DiscreteOracle:
    return DiscreteOracle.random(4, V, seed=1)


def test_one_masked_step_draws_the_product_of_marginals(small):
    law = small.sampler_distribution("masked", discrete_grid(1))
    marg = small.denoise_masked(torch.full((1, 4), V), 0.0)[0]  # [L, V]
    seqs = small.sequences
    product = marg[torch.arange(4), seqs].prod(-1)
    torch.testing.assert_close(law, product, atol=1e-12, rtol=0)


@pytest.mark.parametrize("process", ["masked", "uniform"])
def test_exact_denoiser_sampling_converges_to_the_joint(small, process):
    kls = [sampler_error(small, process, discrete_grid(n)) for n in (1, 4, 16, 128)]
    assert kls[0] > kls[1] > kls[2] > kls[3]
    assert kls[0] > 0.05 and kls[3] < 2e-4, kls


@pytest.mark.parametrize("process", ["masked", "uniform"])
def test_the_sampler_draws_the_law_of_its_markov_chain(small, process):
    """Monte-Carlo check of `sample_masked` / `sample_uniform` against the exact law of the
    same chain (4 steps), with temperature and top-p: KL of the histogram at its floor."""
    opts = {"temperature": 0.8, "top_p": 0.9}
    grid = discrete_grid(4)
    law = small.sampler_distribution(process, grid, **opts)
    n = 20000
    z = prior_sample(process, (n, 4), V, generator=gen(13))
    sampler = sample_masked if process == "masked" else sample_uniform
    x = sampler(small.denoiser(process), z, grid, generator=gen(14), **opts)
    assert x.min() >= 0 and x.max() < V
    kl = float((lambda h: (h[h > 0] * (h[h > 0] / law[h > 0]).log()).sum())(small.histogram(x)))
    floor = (small.num_states - 1) / (2 * n)
    assert kl < 3 * floor, (kl, floor)


def test_sampler_registry_counts_one_call_per_step(small):
    assert set(DISCRETE_SAMPLERS) >= {"masked_ancestral", "uniform_ancestral"}
    for name in ("masked_ancestral", "uniform_ancestral"):
        spec = get_discrete_sampler(name)
        calls: list[tuple[int, ...]] = []

        def counted(z, level, spec=spec, calls=calls):
            calls.append(tuple(level.shape))
            return small.denoiser(spec.process)(z, level)

        z = prior_sample(spec.process, (3, 4), V, generator=gen(15))
        spec.fn(counted, z, discrete_grid(7), generator=gen(16))
        assert len(calls) == spec.nfe(7) == 7 and calls[0] == (3,)
    with pytest.raises(ValueError, match="unknown discrete sampler 'nope'"):
        get_discrete_sampler("nope")


def test_temperature_and_top_p_are_logit_offsets():
    p = torch.tensor([[0.5, 0.25, 0.15, 0.1]], dtype=torch.float64)
    assert adjust_probs(p) is p
    t = adjust_probs(p, temperature=0.5)
    torch.testing.assert_close(t, torch.softmax(p.log() / 0.5, -1))
    q = adjust_probs(p, top_p=0.7)  # nucleus {0, 1} (0.5 < 0.7 <= 0.75): the rest lowered by 2
    ratio = (q / p)[0]
    torch.testing.assert_close(ratio[2] / ratio[0], torch.tensor(math.exp(-2.0), dtype=ratio.dtype))
    torch.testing.assert_close(ratio[1], ratio[0])
    torch.testing.assert_close(ratio[3], ratio[2])
    hard = adjust_probs(p, top_p=0.7, top_p_offset=math.inf)
    torch.testing.assert_close(hard, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]], dtype=p.dtype))


def test_categorical_draws_never_pick_zero_mass():
    probs = torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0], dtype=torch.float64).expand(5000, 5)
    draws = sample_categorical(probs, generator=gen(17))
    assert set(draws.tolist()) == {1, 3}
    assert abs(float((draws == 1).double().mean()) - 0.5) < 0.03


def test_exact_chain_agrees_with_a_net_denoiser_shape_contract(small):
    """`exact_sampler_distribution` takes any denoiser: a constant one gives the product law."""
    const = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)

    def flat(z, level):
        probs = const.expand(*z.shape, V).clone()
        keep = z != V
        return torch.where(keep[..., None], F.one_hot(z.clamp(max=V - 1), V).double(), probs)

    law = exact_sampler_distribution(flat, "masked", 4, V, discrete_grid(3))
    torch.testing.assert_close(law, const[small.sequences].prod(-1), atol=1e-12, rtol=0)


HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__")


@contextmanager
def counting_host_reads():
    """Counts every Python-level read of a tensor's value (`.item()`, `bool(t)`, `int(t)`, ...):
    each is a device synchronisation on a GPU."""
    count = {"n": 0}

    def counted(fn):
        def wrapper(self, *args, **kwargs):
            count["n"] += 1
            return fn(self, *args, **kwargs)

        return wrapper

    with pytest.MonkeyPatch.context() as mp:
        for name in HOST_READS:
            mp.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
        yield count


def _linear_denoiser(vocab: int, length: int, process: str):
    """A denoiser without host reads of its own: fixed logits from the one-hot state."""
    weight = torch.randn(vocab + 1, length, vocab, generator=gen(21))

    def logits(z, level):
        onehot = F.one_hot(z, vocab + 1).float()
        return (
            torch.einsum("blv,vlk->blk", onehot, weight).cumsum(1)
            + level.clamp(-4, 4)[:, None, None]
        )

    return denoiser_from_logits(logits, vocab, process)


@pytest.mark.parametrize("process", ["masked", "uniform"])
def test_sampler_steps_read_nothing_back_to_the_host(process):
    """The steps of `sample_masked` / `sample_uniform` never read a tensor value on the host:
    the count of reads is the same after every step (the checks run once, at the first step
    and after the loop), and the total does not grow with the number of steps."""
    sampler = sample_masked if process == "masked" else sample_uniform
    denoise = _linear_denoiser(5, 7, process)
    totals = []
    for steps in (2, 9):
        z = prior_sample(process, (4, 7), 5, generator=gen(22))
        seen: list[int] = []
        with counting_host_reads() as count:

            def after_step(info, seen=seen, count=count):
                seen.append(count["n"])

            out = sampler(denoise, z, discrete_grid(steps), generator=gen(23), temperature=0.9,
                          top_p=0.8, callback=after_step)  # fmt: skip
            totals.append(count["n"])
        assert len(seen) == steps and len(set(seen)) == 1, seen
        assert out.min() >= 0 and out.max() < 5
    assert totals[0] == totals[1], totals
    with counting_host_reads() as count:  # the unchecked posterior itself reads nothing
        post = posterior_masked if process == "masked" else posterior_uniform
        post(z, torch.ones(4, 7, 5) / 5, torch.zeros(4), torch.ones(4), check=False)
    assert count["n"] == 0


def test_masked_sampler_matches_a_step_by_step_reference_draw():
    """`sample_masked` against an independent plain loop of the same draws (inverse CDF on
    `[(1 - stay) p, stay]` per masked token, one uniform per token and step, in float64): the
    same generator gives the same tokens."""
    vocab, length = 4, 6
    denoise = _linear_denoiser(vocab, length, "masked")
    grid = discrete_grid(5)
    z0 = prior_sample("masked", (64, length), vocab)
    got = sample_masked(denoise, z0, grid, generator=gen(24))
    g, z = gen(24), z0.clone()
    for lt, ls in zip(grid[:-1].tolist(), grid[1:].tolist()):
        p = denoise(z, torch.full((64,), lt)).double()
        stay = 0.0 if ls == math.inf else (1 - alpha(ls)) / (1 - alpha(lt))
        row = torch.cat([(1 - stay) * p, torch.full((64, length, 1), stay).double()], -1)
        row = torch.where((z == vocab)[..., None], row, F.one_hot(z, vocab + 1).double())
        cdf = row.cumsum(-1)
        u = torch.rand((64, length, 1), generator=g, dtype=torch.float64)
        z = torch.searchsorted(cdf, u * cdf[..., -1:], right=True).squeeze(-1).clamp(max=vocab)
    assert torch.equal(got, z)


# ----------------------------------------------------------------------------- bad input


def test_bad_tokens_name_the_argument():
    with pytest.raises(ValueError, match="x must hold integer tokens.*float32"):
        corrupt_masked(torch.zeros(2, 3), 0.0, V)
    with pytest.raises(ValueError, match=r"x has token values in \[0, 3\], outside \[0, 2\]"):
        corrupt_uniform(torch.tensor([[0, 3]]), 0.0, V)
    with pytest.raises(ValueError, match=r"x has token values in \[-1, 0\]"):
        check_tokens(torch.tensor([[-1, 0]]), V)
    with pytest.raises(
        ValueError, match=r"z_t has token values in \[4, 4\], outside \[0, 3\] \(mask id 3\)"
    ):
        posterior_masked(torch.tensor([[4]]), torch.ones(1, 1, V) / V, 0.0, 1.0)
    with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
        corrupt_masked(torch.zeros(2, 3, dtype=torch.long), 0.0, 1)
    oracle = DiscreteOracle.random(3, V)
    with pytest.raises(ValueError, match=r"z must have shape \[N, 3\]"):
        oracle.denoise_masked(torch.zeros(2, 4, dtype=torch.long), 0.0)


def test_bad_levels_name_the_argument():
    x = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="logsnr contains NaN"):
        corrupt_masked(x, torch.tensor([0.0, math.nan]), V)
    with pytest.raises(ValueError, match=r"logsnr must be a scalar, \[B\]=\[2\].*got shape \[3\]"):
        corrupt_masked(x, torch.zeros(3), V)
    with pytest.raises(ValueError, match="logsnr must be a floating-point tensor"):
        check_logsnr(torch.zeros(2, dtype=torch.long), x.shape)
    with pytest.raises(ValueError, match="logsnr_s must be >= logsnr_t"):
        posterior_uniform(x, torch.ones(2, 3, V) / V, 1.0, 0.0)
    with pytest.raises(ValueError, match="logsnr_t contains NaN"):
        posterior_uniform(x, torch.ones(2, 3, V) / V, math.nan, 0.0)
    z = prior_sample("masked", (2, 3), V)
    oracle = DiscreteOracle.random(3, V)
    for grid, msg in [
        (torch.tensor([0.0, -1.0, math.inf]), "strictly increasing"),
        (torch.tensor([0.0, math.nan, math.inf]), "NaN"),
        (torch.tensor([-math.inf, math.inf, math.inf]), "strictly increasing"),
        (torch.tensor([0.0]), "at least 2 levels"),
    ]:
        with pytest.raises(ValueError, match=f"logsnrs.*{msg}|logsnrs needs {msg}"):
            sample_masked(oracle.denoise_masked, z, grid)
    with pytest.raises(ValueError, match="temperature must be a positive finite number"):
        sample_masked(oracle.denoise_masked, z, discrete_grid(2), temperature=0.0)
    with pytest.raises(ValueError, match=r"top_p must be in \(0, 1\]"):
        sample_masked(oracle.denoise_masked, z, discrete_grid(2), top_p=1.5)


def test_a_nan_denoiser_is_an_error():
    z = prior_sample("masked", (2, 3), V)
    nan = lambda z, level: torch.full((*z.shape, V), math.nan)  # noqa: E731
    with pytest.raises(FloatingPointError, match="non-finite probabilities at step 0"):
        sample_masked(nan, z, discrete_grid(2))


# ----------------------------------------------------------------------------- nets


def _token_net(**kw):
    from difflab.nets import build_net

    cfg = dict(vocab_size=V, seq_len=12, width=32, depth=2, heads=2, emb_dim=32)
    return build_net(kw.pop("name", "token_transformer"), **{**cfg, **kw})


def _randomise(net):
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3, generator=gen(18))
    return net


def test_token_transformer_shapes_levels_and_masks():
    net = _randomise(_token_net())
    z = torch.randint(0, V + 1, (2, 12), generator=gen(19))
    assert net(z, torch.zeros(2)).shape == (2, 12, V)
    img = z.reshape(2, 3, 2, 2)
    torch.testing.assert_close(net(img, torch.zeros(2)).reshape(2, 12, V), net(z, torch.zeros(2)))
    per_token = torch.zeros(2, 12)
    torch.testing.assert_close(net(z, per_token), net(z, torch.zeros(2)), atol=1e-5, rtol=1e-5)
    per_token[0, 0] = 5.0  # one token's level changes only... the whole (bidirectional) output
    assert not torch.allclose(net(z, per_token)[0], net(z, torch.zeros(2))[0])
    z2 = z.clone()
    z2[0, 11] = (z2[0, 11] + 1) % V
    assert not torch.allclose(net(z2, torch.zeros(2))[0, 0], net(z, torch.zeros(2))[0, 0])
    with pytest.raises(ValueError, match=r"z has token values in \[4, 4\], outside \[0, 3\]"):
        net(torch.full((1, 12), V + 1), torch.zeros(1))
    with pytest.raises(ValueError, match=r"z must have shape \[B, 12\]"):
        net(torch.zeros(1, 11, dtype=torch.long), torch.zeros(1))
    with pytest.raises(ValueError, match="z must be an integer tensor"):
        net(torch.zeros(1, 12), torch.zeros(1))
    with pytest.raises(ValueError, match="logsnr contains NaN"):
        net(z, torch.tensor([0.0, math.nan]))


def test_extra_noise_input_and_denoiser_carry_over():
    net = _randomise(_token_net(extra_noise_dim=4))
    assert {k for k in net.state_dict() if "noise" in k} == {"noise_proj.weight", "noise_proj.bias"}
    z = torch.full((2, 12), V)
    a, b = torch.randn(2, 12, 4, generator=gen(20)), torch.randn(2, 12, 4, generator=gen(21))
    assert not torch.allclose(net(z, torch.zeros(2), a), net(z, torch.zeros(2), b))
    torch.testing.assert_close(net(z, torch.zeros(2), a), net(z, torch.zeros(2), a))
    with pytest.raises(ValueError, match=r"noise must have shape \[2, 12, 4\]"):
        net(z, torch.zeros(2), torch.zeros(2, 12, 3))
    denoise = denoiser_from_logits(_randomise(_token_net()), V, "masked")
    z = torch.tensor([[0, 1, 2, V] * 3])
    probs = denoise(z, torch.zeros(1))
    torch.testing.assert_close(probs.sum(-1), torch.ones(1, 12))
    assert torch.equal(probs[0, 0], torch.tensor([1.0, 0.0, 0.0]))  # unmasked: its own token


def test_causal_transformer_sees_only_the_past():
    net = _randomise(_token_net(name="causal_transformer", mask_token=False))
    x = torch.randint(0, V, (2, 12), generator=gen(22))
    y = x.clone()
    y[:, 6] = (y[:, 6] + 1) % V
    a, b = net(x), net(y)
    torch.testing.assert_close(a[:, :7], b[:, :7])  # positions <= 6 predict from x_<i
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    logp = torch.log_softmax(a, -1).gather(-1, x[..., None]).squeeze(-1).sum(-1)
    torch.testing.assert_close(net.log_prob(x), logp)
    assert net.sample(3, generator=gen(23)).shape == (3, 12)


def test_token_nets_rebuild_from_their_spec():
    from difflab.nets import build_net

    net = _token_net(extra_noise_dim=2)
    spec = net.spec()
    again = build_net(spec["arch"], **spec["config"])
    assert again.config == net.config
    with pytest.raises(ValueError, match="width=30 must be divisible by heads=4"):
        _token_net(width=30, heads=4)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("method", ["masked_diffusion", "uniform_diffusion", "autoregressive"])
def test_train_and_sample_a_tiny_discrete_model(tmp_path, method):
    from pathlib import Path

    from difflab.cli import main as cli_main

    root = Path(__file__).resolve().parents[1]
    config = {"masked_diffusion": "masked", "uniform_diffusion": "uniform",
              "autoregressive": "ar"}[method]  # fmt: skip
    run = tmp_path / "run"
    argv = [
        "train", str(root / "configs" / f"discrete_text_{config}.yaml"),
        "data.name=discrete_oracle", "data.kwargs={length: 6, vocab_size: 3, num_samples: 64}",
        "model.kwargs.vocab_size=3", "model.kwargs.seq_len=6", "model.kwargs.width=16",
        "model.kwargs.depth=1", "model.kwargs.emb_dim=16", "data.batch_size=8",
        "train.steps=2", "train.log_every=1", "train.ckpt_every=2", f"train.out_dir={run}",
    ]  # fmt: skip
    assert cli_main(argv) == 0
    out = tmp_path / "samples"
    assert cli_main(["sample", str(run), "--num", "3", "--steps", "4", "--out", str(out),
                     "--opt", "temperature=0.9"]) == 0  # fmt: skip
    lines = [s for s in (out / "samples.txt").read_text().splitlines() if not s.startswith("---")]
    assert len(lines) == 3 and all(len(s.split()) == 6 for s in lines)
    assert all(v in "012" for s in lines for v in s.split())
    # earlier samples are not overwritten silently
    assert cli_main(["sample", str(run), "--num", "3", "--out", str(out)]) == 2


def test_token_image_method_draws_image_grids_and_checks_the_vocabulary():
    from pathlib import Path

    import numpy as np

    import difflab.methods  # noqa: F401  (registers the discrete training methods)
    from difflab.config import load_config
    from difflab.data.discrete_images import DiscreteMnist
    from difflab.nets import build_net
    from difflab.train.methods import build_method

    recipe = Path(__file__).resolve().parents[1] / "configs" / "discrete_mnist_masked.yaml"
    small = ["model.kwargs.width=16", "model.kwargs.depth=1", "model.kwargs.emb_dim=16",
             "method.kwargs.sample_steps=3"]  # fmt: skip
    cfg = load_config(recipe, small)
    net = build_net(cfg.model.name, **cfg.model.kwargs)
    pixels = np.random.default_rng(0).integers(0, 256, (4, 28, 28)).astype(np.uint8)
    data = DiscreteMnist(levels=2, pixels=pixels, labels=np.arange(4))
    parts = build_method(cfg, net, data)
    images = parts.sample_fn(net, torch.randn(2, 1, 28, 28), None)
    assert images.shape == (2, 1, 28, 28) and set(images.unique().tolist()) <= {-1.0, 1.0}
    loss = parts.loss_fn({"net": net}, (data.tokens[:2], data.labels[:2]), gen(0))
    assert loss.shape == (2,) and bool(torch.isfinite(loss).all())
    cfg16 = load_config(recipe, [*small, "model.kwargs.vocab_size=16"])
    with pytest.raises(ValueError, match="model.kwargs.vocab_size: 16, but dataset"):
        build_method(cfg16, build_net(cfg16.model.name, **cfg16.model.kwargs), data)


@pytest.mark.parametrize("process", ["masked", "uniform"])
def test_bits_per_token_stratified_estimate_is_the_nll(oracle, process):
    """The stratified evaluation (`bits_per_token(strata=...)`, t = u^2 (3 - 2u) per stratum)
    of the exact denoiser on copies of one sequence averages to -log2 p(x) / L."""
    from types import SimpleNamespace

    from torch import nn

    from difflab.methods.discrete_diffusion import bits_per_token

    class OracleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.anchor = nn.Parameter(torch.zeros(1))
            self.config = SimpleNamespace(vocab_size=V)

        def forward(self, z, level):
            return oracle.logits(process)(z, level)

    x = oracle.sample(1, generator=gen(24))
    mean, se = bits_per_token(OracleNet(), process, x.repeat(400, 1), strata=8, generator=gen(25))
    want = float(-oracle.log_prob(x)) / 5 / math.log(2)
    assert abs(mean - want) < 4 * se + 1e-6, (mean, se, want)
