"""Unified Latents on exact latents: is the prior's unweighted ELBO the latent's true bitrate when
the denoiser is exact, and what does a weighted prior loss report instead?

Latents `y ~ N(0, diag(lambda))` of the MNIST latent's size (4x7x7 = 196 dimensions, a power-law
spectrum from 1e-3 to 4) and the 5-component Gaussian-mixture oracle `unseen`, each with its exact
denoiser (`difflab.diffusion.oracle`). For the latent levels `l_0` in {2, 5, 10}: the true rate
(Gaussian: `1/2 sum log(1 + e^{l_0} lambda)` plus the negligible prior mismatch; mixture: Monte
Carlo from the exact marginal of `z_0`), the bound (`latent_bits`, mean ± standard error over
`--num` latents, 8 stratified levels each) and the sigmoid-weighted (bias 0) prior loss, which
is not a bound. Seconds on a CPU.

    python benchmarks/unified_latents_oracle.py
"""

from __future__ import annotations

import argparse
import math
import sys

from common import RESULTS, command_line, record_run, update_results, write_report

FOLDER = RESULTS / "unified_latents"
LEVELS = (2.0, 5.0, 10.0)
LMIN = -15.0


def rows(num: int, seed: int) -> list[dict]:
    import torch

    from difflab.diffusion.losses import diffusion_loss, sigmoid_weight
    from difflab.diffusion.oracle import GaussianMixtureOracle
    from difflab.diffusion.parameterization import prior_kl
    from difflab.diffusion.schedules import LinearLogSNRSchedule
    from difflab.methods.unified_latents import latent_bits, noisy_latent

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(seed)
    d = 196
    var = torch.logspace(math.log10(4.0), -3, d, dtype=torch.float64).view(4, 7, 7)
    cases = {
        "gaussian_196": GaussianMixtureOracle.gaussian(torch.zeros(4, 7, 7), var),
        "mixture_unseen": GaussianMixtureOracle.named("unseen"),
    }
    out = []
    for name, oracle in cases.items():
        y, _ = oracle.sample(num, gen)
        for l0 in LEVELS:
            bits = latent_bits(oracle.denoise, y, latent_logsnr=l0, logsnr_min=LMIN, pixels=784,
                               num_t=8, generator=gen)  # fmt: skip
            a2 = 1 / (1 + math.exp(-l0))
            if oracle.means.shape[0] == 1 and name.startswith("gaussian"):
                lam = oracle.variances[0]
                true = float(0.5 * torch.log1p(math.exp(l0) * lam).sum())
                true_se = 0.0
            else:
                marginal = GaussianMixtureOracle(
                    math.sqrt(a2) * oracle.means, a2 * oracle.variances + (1 - a2),
                    oracle.weights, oracle.basis,
                )  # fmt: skip
                eps = torch.randn(y.shape, generator=gen, dtype=y.dtype)
                n = y[0].numel()
                log_q = -0.5 * (eps**2).flatten(1).sum(1) - 0.5 * n * math.log(
                    2 * math.pi * (1 - a2)
                )
                per = log_q - marginal.log_prob(noisy_latent(y, l0, eps))
                true, true_se = float(per.mean()), float(per.std()) / math.sqrt(num)
            schedule = LinearLogSNRSchedule(LMIN, l0)
            weighted = torch.stack([
                diffusion_loss(oracle.denoise, y, schedule, sigmoid_weight(0.0),
                               time_sampling="stratified", generator=gen) * y[0].numel()
                for _ in range(8)
            ]).mean(0) + prior_kl(y, LMIN)  # fmt: skip
            out.append(
                {
                    "latent": name,
                    "latent_dims": int(y[0].numel()),
                    "latent_logsnr": l0,
                    "true_nats": true,
                    "true_nats_se": true_se,
                    "bound_nats": float(bits.rate.mean()),
                    "bound_nats_se": float(bits.rate.std()) / math.sqrt(num),
                    "sigmoid_weighted_nats": float(weighted.mean()),
                    "sigmoid_weighted_nats_se": float(weighted.std()) / math.sqrt(num),
                    "num": num,
                }
            )
            print(out[-1], flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num", type=int, default=2000, help="latents per case")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    command = command_line(argv)
    update_results(FOLDER, {"oracle": {"rows": rows(a.num, a.seed), "command": command}})
    record_run(FOLDER, command)
    from unified_latents_curve import report_text

    write_report(FOLDER, report_text(FOLDER))
    return 0


if __name__ == "__main__":
    sys.exit(main())
