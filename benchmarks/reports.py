"""Re-render every study report in `results/` from its stored raw numbers alone.

Each study folder's `README.md` is a pure function of its `results.json` (and the files it
names); this script knows which benchmark module renders which folder. `--check` writes
nothing and fails when a committed report differs from its re-rendering.

    python benchmarks/reports.py                 # re-render all reports
    python benchmarks/reports.py --check         # exit 1 if a report is stale
    python benchmarks/reports.py results/distill # one study
"""

from __future__ import annotations

import argparse
import difflib
import importlib
from pathlib import Path

from common import REPORT, RESULTS, ROOT, write_report

RENDERERS = {
    "samplers": "samplers_report",
    "samplers_mnist": "samplers_report",
    "samplers_mnist_v3": "samplers_report",
    "samplers_mnist_v3_nfe": "samplers_report",
    "samplers_fashion": "samplers_report",
    "diffusers_model": "diffusers_model_samplers",
    "cov_ddim_mnist": "cov_ddim_mnist",
    "distill": "distill_reports",
    "distill/oracle_100k": "distill_reports",
    "distill/oracle_b256": "distill_reports",
    "distill/oracle_nt320": "distill_reports",
    "distill/oracle_w512": "distill_reports",
    "distill/emd_oracle": "distill_reports",
    "distill/emd_oracle_seed1": "distill_reports",
    "distill_mnist": "distill_reports",
    "distill_mnist_v3": "distill_reports",
    "mnist_10k": "mnist_10k_report",
    "mnist_fid": "mnist_fid",
    "mnist_model": "mnist_model",
    "eval_sanity": "eval_sanity",
    "train_throughput": "train_throughput",
    "unified_latents": "unified_latents_curve",
    "recipe/mnist_pilot": "recipe",
    "recipe/fashion_pilot": "recipe",
    "recipe/mnist_final": "recipe",
    "recipe/fashion_final": "recipe",
    "recipe/fashion_xpred": "recipe",
    "recipe/mnist_xpred": "recipe",
    "recipe/haze": "recipe_haze",
    "recipe/guidance": "recipe_guidance",
    "recipe/guidance_xpred": "recipe_guidance",
    "recipe/res64": "recipe_resolution",
    "dual_rate": "dual_rate_frontier",
    "discrete/dmmd_oracle": "discrete_dmmd_oracle",
    "discrete/dmmd_text": "discrete_dmmd_text",
    "rolling": "rolling_report",
    "discrete": "discrete_oracle",
    "tweedie_trained": "tweedie_trained",
}
"""Study folder (under `results/`) -> the module whose `report_text(folder)` renders it."""


def render(study: str) -> str:
    """The report of `results/<study>` from its stored numbers."""
    module = importlib.import_module(RENDERERS[study])
    return module.report_text(RESULTS / study)


def study_name(arg: str) -> str:
    path = Path(arg).resolve()
    name = str(path.relative_to(RESULTS)) if path.is_relative_to(RESULTS) else arg
    if name not in RENDERERS:
        raise SystemExit(f"reports.py: error: unknown study {arg!r}; known: {sorted(RENDERERS)}")
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="*", help="study folders (default: all)")
    p.add_argument("--check", action="store_true", help="compare, write nothing")
    args = p.parse_args(argv)
    stale = 0
    for study in [study_name(s) for s in args.studies] or list(RENDERERS):
        text, path = render(study), RESULTS / study / REPORT
        if not args.check:
            write_report(path.parent, text)
        elif path.read_text() != text:
            stale += 1
            label = str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)
            diff = difflib.unified_diff(
                path.read_text().splitlines(), text.splitlines(), label, "re-rendered",
                lineterm="", n=0,
            )  # fmt: skip
            print("\n".join(list(diff)[:40]))
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
