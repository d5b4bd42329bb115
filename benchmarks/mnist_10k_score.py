"""The scoring phase of the MNIST-at-10k study: adds the `--features` (default Inception FID)
to every row of `--samples-dir` that lacks them, from the stored uint8 samples; the
distillation rows first, then the samplers at `--nfe`, then the others.

    python benchmarks/mnist_10k_score.py --device cuda --samples-dir runs/m10k
    python benchmarks/mnist_10k_score.py --device cpu --samples-dir runs/m10k \\
        --fid-runtime onnxruntime --only 'student:*'
"""

from __future__ import annotations

import fnmatch
from pathlib import Path

import numpy as np
from mnist_10k_store import (
    Clock,
    Scorer,
    Store,
    fmt_row,
    phase_arguments,
    run_phase,
)

SCORE_ORDER = ("teacher", "students", "real", "samplers")
"""The scoring phase's priority: the distillation rows first, then the samplers at `--nfe`,
then at `--extra-nfe` (most of its time is the Inception network)."""


def score_order(args, rows: dict[str, dict]) -> list[str]:
    def rank(item):
        name, row = item
        extra = row.get("nfe_target") not in args.nfe if row.get("group") == "samplers" else False
        return (extra, SCORE_ORDER.index(row["group"]) if row.get("group") in SCORE_ORDER else 9)

    return [name for name, _ in sorted(rows.items(), key=rank)]


def save_reference_check(args, scorer: Scorer) -> None:
    """For comparing this device's Inception with the CPU's: the first 1000 test images'
    features (float32) and the device's test statistics (the covariance in two float32
    halves, each under 16 MB)."""
    from difflab.eval.reference import DATASETS

    out = Path(args.reference_check)
    out.mkdir(parents=True, exist_ok=True)
    feats = scorer.extractors["fid"](DATASETS["mnist"]("test")[:1000], progress=False)
    np.save(out / "fid_feats_test1000.npy", feats.astype(np.float32))
    ref = scorer.refs["fid"]
    np.save(out / "fid_ref_mu.npy", ref.mu)
    half = len(ref.cov) // 2
    np.save(out / "fid_ref_cov_a.npy", ref.cov[:half].astype(np.float32))
    np.save(out / "fid_ref_cov_b.npy", ref.cov[half:].astype(np.float32))


def has_samples(row: dict) -> bool:
    """Whether a row kept samples (a sampler that raised on non-finite output kept none)."""
    return not isinstance(row.get("nonfinite_samples"), str)


def phase_score(args, store: Store, clock: Clock) -> None:
    scorer = Scorer(args.features, args.device)
    store.data.setdefault("reference_seconds", {}).update(scorer.ref_seconds)
    if args.reference_check and "fid" in scorer.extractors:
        save_reference_check(args, scorer)
    for name in score_order(args, store.rows):
        row = store.rows[name]
        if "nfe" not in row or all(f in row for f in args.features) or not has_samples(row):
            continue
        if args.only and not any(fnmatch.fnmatchcase(name, pattern) for pattern in args.only):
            continue
        if clock.out():
            row["fid_skipped"] = "deadline"
            continue
        row |= scorer(store.get_samples(name))
        row.pop("fid_skipped", None)
        store.save(args.out_dir)
        print(f"{name}: {fmt_row(row)}", flush=True)


def main(argv=None) -> int:
    p = phase_arguments(__doc__.split("\n\n")[0])
    p.add_argument("--features", nargs="+", default=None, help="default: fid")
    p.add_argument("--only", nargs="*", default=[],
                   help="only the rows whose names match these patterns "
                   "(fnmatch, e.g. 'student:*')")  # fmt: skip
    p.add_argument("--reference-check", default=None, help="save the Inception check here")
    return run_phase(p, argv, "score", ["fid"], phase_score)


if __name__ == "__main__":
    raise SystemExit(main())
