"""Do our DPM-Solver++(2M) and UniPC agree with diffusers' on the same grid? Each runs on the
levels the diffusers scheduler visits (`scheduler_grid`), from the same noise through the same
denoiser; the maximum absolute difference of the samples is stored under `agreement` in
`<out>/results.json`.

    python benchmarks/samplers_agreement.py                     # the oracle, 256 samples
"""

from __future__ import annotations

import torch
from sampler_bench import Runner, open_setup, parse, setup_arguments, store

from difflab.sampling import get_sampler

PAIRS = (
    ("diffusers_dpmpp_2m", "dpmpp_2m"),
    ("diffusers_dpmpp_2m_karras", "dpmpp_2m"),
    ("diffusers_unipc", "unipc"),
)


def agreement(setup, runner: Runner, num: int = 256) -> list[dict]:
    """Our DPM-Solver++(2M) / UniPC vs diffusers' on the same grid and noise: max |difference|."""
    from difflab.sampling.diffusers_adapter import (
        make_scheduler,
        sample_with_scheduler,
        scheduler_grid,
    )

    z = runner.z[:num] if setup.kind == "oracle" else runner.z[:num].float().to(setup.device)
    labels = None if runner.labels is None else runner.labels[:num].to(setup.device)
    den = setup.make_denoise(labels)
    out = []
    for peer, ours in PAIRS:
        for steps in (8, 20):
            sched = make_scheduler(peer, setup.schedule)
            theirs = sample_with_scheduler(sched, den, z, steps)
            with torch.no_grad():
                mine = get_sampler(ours).fn(den, z, scheduler_grid(sched, steps))
            out.append(
                {
                    "peer": peer,
                    "ours": ours,
                    "steps": steps,
                    "max_abs_diff": float((mine - theirs).abs().max()),
                    "sample_std": float(theirs.std()),
                }
            )
    return out


def main(argv=None) -> int:
    args = parse(setup_arguments(__doc__.split("\n\n")[0]), argv)
    setup = open_setup(args)
    runner = Runner(setup, args.num, args.batch, args.seed)
    store(args, {"agreement": agreement(setup, runner)})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
