"""The MNIST rows of the sampler and distillation benchmarks at full size: 10k samples per row,
Inception FID and fd-lenet against the 10k MNIST test images, on one device (a GPU when lent).

Rows, in order of priority (a `--deadline` skips what does not fit and says so):

1. samplers: every method of `benchmarks/samplers.py` (ours and diffusers' schedulers, the same
   initial noise and random labels for all) at each NFE of `--nfe`;
2. teacher: the shipped model with `--teacher-rows` (class-balanced labels, as
   `benchmarks/distill.py mnist`);
3. students: distilled students (`--students`, exported `.safetensors` or run directories), each
   with its own recorded sampler; `--train-minutes M` also distils an 8-step MMD and a 4-step
   MCM-CD student from the teacher on this device for M minutes each (`train.max_minutes`);
4. real: `--num` MNIST training images (the floor of each metric at this sample size);
5. samplers at the NFE of `--extra-nfe`.

Two phases, so that the feature networks need not be on the device at sampling time (the
Inception weights, 87 MB, travel separately to a lent machine); `all` runs both:

    python benchmarks/mnist_10k.py sample --device cuda --samples-dir /tmp/m10k   # + fd-lenet
    python benchmarks/mnist_10k.py score  --device cuda --samples-dir /tmp/m10k   # + FID
    python benchmarks/mnist_10k.py report --samples-dir runs/m10k  # -> results/mnist_10k.md|json

Samples are kept as uint8 `.npz` (`<samples-dir>/<row>.npz`), the numbers in
`<samples-dir>/rows.json` (rewritten after every row; a re-run skips finished rows).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib.util
import json
import math
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from difflab.eval.cli import add_fid_runtime_argument, use_fid_runtime

ROOT = Path(__file__).resolve().parents[1]
TEACHER = "src/difflab/assets/mnist_uvit.safetensors"
METHODS = (
    "ddim", "ddpm", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "addim", "addim_measured",
    "cov_ddim", "cov_ddim_det", "cov_ddim_mean_last", "cov_ddim_table",
    "cov_ddim_table_mean_last", "cov_dpmpp_2m", "cov_dpmpp_2m_table", "cov_dpmpp_2m_table_w1",
    "cov_dpmpp_2m_table_eta1", "sde_dpmpp_2m", "diffusers_ddim", "diffusers_dpmpp_2m",
    "diffusers_dpmpp_2m_karras", "diffusers_unipc", "diffusers_heun",
)  # fmt: skip
TEACHER_ROWS = ("ddim@8", "ddpm@8", "ddim@32", "ddim@256")
GPU_STUDENTS = (("mmd", "alternating", 8), ("mcm", "cd", 4))


def load_samplers_module():
    """`benchmarks/samplers.py` as a module (its methods, runner and JVP timing are reused)."""
    spec = importlib.util.spec_from_file_location("bench_samplers", ROOT / "benchmarks/samplers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_samplers"] = module
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the store
def united(first: list, second: list) -> list:
    """`first` followed by the items of `second` it lacks (order kept)."""
    return first + [item for item in second if item not in first]


def merge_stores(disk: dict, mine: dict) -> dict:
    """`disk` updated with `mine`: rows merged field by field (mine wins), lists (commands)
    united in order, other keys replaced, nested dicts (machine, seconds) merged."""
    out = dict(disk)
    for key, value in mine.items():
        old = disk.get(key)
        if key == "rows" and isinstance(old, dict):
            out[key] = dict(old)
            for name, row in value.items():
                out[key][name] = {**old.get(name, {}), **row}
        elif isinstance(value, list) and isinstance(old, list):
            out[key] = united(old, value)
        elif isinstance(value, dict) and isinstance(old, dict):
            out[key] = {**old, **value}
        else:
            out[key] = value
    return out


class Store:
    """`rows.json` in the samples folder: ordered rows with their numbers, saved atomically.
    Several processes may share a folder (e.g. one samples students while another adds FIDs):
    each save merges this process's rows into the file's under a lock, field by field, so no
    process drops what another wrote."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.path = folder / "rows.json"
        folder.mkdir(parents=True, exist_ok=True)
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {"rows": {}}

    @property
    def rows(self) -> dict[str, dict]:
        return self.data["rows"]

    def save(self, copy_to: str | None = None) -> None:
        import fcntl

        with open(self.folder / ".rows.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.path.is_file():
                self.data = merge_stores(json.loads(self.path.read_text()), self.data)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.data, indent=1, default=str))
            tmp.replace(self.path)
        if copy_to:
            Path(copy_to).mkdir(parents=True, exist_ok=True)
            (Path(copy_to) / "rows.json").write_text(self.path.read_text())

    def samples_file(self, name: str) -> Path:
        return samples_file(self.folder, name)

    def put_samples(self, name: str, images: torch.Tensor) -> np.ndarray:
        from difflab.eval.features import to_uint8

        u8 = to_uint8(images.float().clamp(-1, 1)).numpy()
        np.savez(self.samples_file(name), images=u8)
        return u8

    def get_samples(self, name: str) -> np.ndarray:
        return read_samples(self.samples_file(name))


def samples_file(folder: Path, name: str) -> Path:
    """Where a row's uint8 samples are kept in a samples folder."""
    return folder / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".npz")


def read_samples(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as f:
        return f["images"]


class Clock:
    """Seconds since start against `--deadline`; rows past it are recorded as skipped."""

    def __init__(self, deadline: float):
        self.start, self.deadline = time.monotonic(), deadline

    def out(self, needed: float = 0.0) -> bool:
        """Whether the deadline has passed (or would, `needed` seconds from now)."""
        return time.monotonic() - self.start + needed > self.deadline


# --------------------------------------------------------------------------- scoring
class Scorer:
    """Frechet distance in each feature space against the MNIST test statistics, and LeNet
    precision/recall (k = 3) against the test images' LeNet features."""

    def __init__(self, features: list[str], device: str):
        from difflab.eval.features import get_feature_extractor
        from difflab.eval.reference import DATASETS, compute_reference_stats, load_reference_stats

        self.extractors = {name: get_feature_extractor(name, device) for name in features}
        self.refs, self.ref_seconds = {}, {}
        for name, ex in self.extractors.items():
            start = time.perf_counter()
            try:
                self.refs[name] = load_reference_stats("mnist", "test", ex)
            except FileNotFoundError:
                print(f"computing the {name} statistics of the MNIST test set on {device}")
                compute_reference_stats("mnist", "test", name, device=device)
                self.refs[name] = load_reference_stats("mnist", "test", ex)
                self.ref_seconds[name] = time.perf_counter() - start
        self.test_lenet = None
        if "fd-lenet" in self.extractors:
            test = DATASETS["mnist"]("test")
            self.test_lenet = self.extractors["fd-lenet"](test, progress=False)

    def __call__(self, images: np.ndarray) -> dict:
        from difflab.eval.metrics import feature_stats, frechet_distance, precision_recall

        out = {}
        for name, ex in self.extractors.items():
            start = time.perf_counter()
            feats = ex(torch.from_numpy(images), progress=False)
            out[name] = frechet_distance(feature_stats(feats), self.refs[name])
            out[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
            if name == "fid":
                out["fid_runtime"] = ex.runtime
            if name == "fd-lenet":
                pr = precision_recall(self.test_lenet, feats)
                out["precision"], out["recall"] = pr.precision, pr.recall
        return out


# --------------------------------------------------------------------------- sampling phase
def sampler_rows(args, store: Store, scorer: Scorer, clock: Clock, nfes, bench) -> None:
    setup, runner, methods = bench
    for nfe in nfes:
        for method in methods:
            name = f"sampler:{method.name}@{nfe}"
            if "nfe" in store.rows.get(name, {}):
                continue
            if clock.out():
                store.rows[name] = {"skipped": "deadline"}
                continue
            steps = method.steps(nfe)
            x, seconds = runner.samples(method, steps)
            paper_nfe, jvps = method.counts(steps)
            row = {"group": "samplers", "method": method.name, "family": method.family,
                   "nfe_target": nfe, "steps": steps, "nfe": paper_nfe, "jvps": jvps,
                   "sampling_seconds": round(seconds, 2)}  # fmt: skip
            bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
            if bad:
                row["nonfinite_samples"] = bad
                x = torch.nan_to_num(x)
            row |= scorer(store.put_samples(name, x))
            store.rows[name] = row
            store.save(args.out_dir)
            print(f"{name}: {fmt_row(row)}", flush=True)


def generated_row(args, store, scorer, clock, name: str, group: str, path, sampler, steps, grid):
    from difflab.cli import sample_checkpoint

    if "nfe" in store.rows.get(name, {}):
        return
    if clock.out():
        store.rows[name] = {"skipped": "deadline"}
        return
    result, _ = sample_checkpoint(path, sampler=sampler, steps=steps, num=args.num, grid=grid,
                                  seed=args.seed, device=args.device, batch_size=args.batch,
                                  progress=False)  # fmt: skip
    row = {"group": group, "model": str(path), "sampler": result.sampler, "steps": result.steps,
           "grid": result.grid, "nfe": result.nfe,
           "sampling_seconds": round(result.seconds, 2)}  # fmt: skip
    row |= scorer(store.put_samples(name, result.samples))
    store.rows[name] = row
    store.save(args.out_dir)
    print(f"{name}: {fmt_row(row)}", flush=True)


def train_students(args, store, scorer, clock) -> None:
    """Distil the GPU students from the teacher for `--train-minutes` each, export, score."""
    from difflab.methods.distill import export_student, run_distillation, student_sampling
    from difflab.train import read_metrics

    for method, variant, k in GPU_STUDENTS:
        name = f"student:{method}-{variant}@{k} ({args.device}, {args.train_minutes:g} min)"
        if "nfe" in store.rows.get(name, {}) or clock.out(60 * args.train_minutes + 30):
            store.rows.setdefault(name, {"skipped": "deadline"})
            continue
        run = Path(args.samples_dir) / f"train_{method}_{variant}_k{k}"
        start = time.perf_counter()
        run_distillation(method, args.teacher, k, variant=variant, out_dir=run, resume=True,
                         overrides=[f"train.steps={args.train_max_steps}",
                                    f"train.max_minutes={args.train_minutes}",
                                    f"data.batch_size={args.train_batch}",
                                    f"optim.lr={args.train_lr}", "train.compile=false",
                                    "train.ckpt_every=0", "train.log_every=100",
                                    "train.progress=false", "train.tensorboard=false"])  # fmt: skip
        seconds = time.perf_counter() - start
        records = read_metrics(run / "metrics.jsonl")
        steps_done = max(r["step"] for r in records if "step" in r)
        exported = Path(args.out_dir or args.samples_dir) / f"{run.name}.safetensors"
        export_student(run, exported)
        spec = student_sampling(exported)
        generated_row(args, store, scorer, clock, name, "students", exported, spec["sampler"],
                      spec["steps"], spec["logsnrs"])  # fmt: skip
        store.rows[name] |= {"method": f"{method}-{variant}", "student_steps": k,
                             "device": args.device, "train_steps": steps_done,
                             "train_seconds": round(seconds, 1),
                             "train_batch": args.train_batch, "train_lr": args.train_lr,
                             "images_per_s": [r["images_per_s"] for r in records
                                              if "images_per_s" in r][-1:]}  # fmt: skip
        store.save(args.out_dir)


def phase_sample(args, store: Store, clock: Clock) -> None:
    from difflab.eval.reference import DATASETS

    scorer = Scorer(args.features, args.device)
    bench = None  # the samplers' setup (it measures their tables), only if sampler rows run

    def samplers_at(nfes) -> None:
        nonlocal bench
        if args.methods and nfes:
            bench = bench or sampler_setup(args, store)
            sampler_rows(args, store, scorer, clock, nfes, bench)

    samplers_at(args.nfe)
    for row in args.teacher_rows:
        sampler, steps = row.split("@")
        generated_row(args, store, scorer, clock, f"teacher:{row}", "teacher", args.teacher,
                      sampler, int(steps), "default")  # fmt: skip
    for path in args.students:
        student_row(args, store, scorer, clock, path)
    if "nfe" not in store.rows.get("real:train", {}):
        images = DATASETS["mnist"]("train")[: args.num]
        store.rows["real:train"] = {"group": "real", "nfe": 0, **scorer(images)}
        np.savez(store.samples_file("real:train"), images=images)
        store.save(args.out_dir)
    if args.train_minutes > 0:
        train_students(args, store, scorer, clock)
    samplers_at(args.extra_nfe)


def student_row(args, store: Store, scorer: Scorer, clock: Clock, path: str) -> None:
    """A distilled student (exported file or run directory) with its own recorded sampler; the
    row names the method, its steps and its training, so reports can lay out the grid."""
    from difflab.methods.distill import student_sampling

    spec = student_sampling(path)
    if spec is None:
        raise SystemExit(f"--students: {path} is not a distilled student")
    name = f"student:{Path(path).stem if Path(path).is_file() else Path(path).name}"
    generated_row(args, store, scorer, clock, name, "students", path, spec["sampler"],
                  spec["steps"], spec["logsnrs"])  # fmt: skip
    row = store.rows[name]
    if "nfe" in row and "student_steps" not in row:
        row |= {"device": args.device, **student_fields(Path(path))}
        store.save(args.out_dir)


def student_fields(path: Path) -> dict:
    """A student's method (`mcm-cd`, `mmd-alternating`, ...), its number of steps and its
    training (steps, batch; for a run directory also the device and the wall time, the sum of
    the logged throughput of each interval, without checkpoint writes)."""
    from difflab.methods.distill import read_student_spec
    from difflab.train import read_metrics

    record = read_student_spec(path)
    variant = record["config"].get("variant", "")
    out = {"method": f"{record['method']}-{variant}" if variant else record["method"],
           "student_steps": int(record["steps"])}  # fmt: skip
    if path.is_file():  # an exported model: its metadata has the step and the run's config
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        config = json.loads(meta.get("difflab_config", "{}"))
        return out | {"train_steps": int(meta["step"]) if "step" in meta else None,
                      "train_batch": config.get("data", {}).get("batch_size")}  # fmt: skip
    records = read_metrics(path / "metrics.jsonl")
    batch = next((r["global_batch"] for r in records if "global_batch" in r), None)
    device = next((r["device"] for r in records if "device" in r), None)
    out |= {"train_steps": max((r["step"] for r in records if "step" in r), default=0),
            "train_batch": batch, "train_device": device}  # fmt: skip
    logged = [(r["step"], r["images_per_s"]) for r in records if "images_per_s" in r]
    if batch and logged:
        previous = [0] + [step for step, _ in logged[:-1]]
        out["train_seconds"] = round(
            sum((step - prev) * batch / rate for (step, rate), prev in zip(logged, previous)), 1
        )
    return out


def sampler_setup(args, store: Store):
    """`benchmarks/samplers.py`'s setup, runner and the methods of `--methods` on the teacher
    (and the JVP cost on this device, once per store)."""
    bench = load_samplers_module()
    ns = argparse.Namespace(denoiser=["checkpoint", args.teacher], guidance=0.0,
                            interval=[-math.inf, math.inf], features=["fd-lenet"], ref_split="test",
                            table_num=args.table_num, device=args.device)  # fmt: skip
    setup = bench.checkpoint_setup(ns)
    runner = bench.Runner(setup, args.num, args.batch, args.seed)
    methods = bench.difflab_methods(setup, args.table_levels)
    try:
        methods += bench.diffusers_methods()
    except ImportError as err:  # the peers need `difflab[bench]`
        print(f"diffusers rows skipped: {err}")
        args.methods = [m for m in args.methods if not m.startswith("diffusers_")]
    known = {m.name for m in methods}
    if unknown := set(args.methods) - known:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; known: {sorted(known)}")
    methods = [m for name in args.methods for m in methods if m.name == name]
    if "jvp_cost" not in store.data:
        store.data["jvp_cost"] = bench.jvp_costs(setup, reps=7)
        print(f"jvp cost: {store.data['jvp_cost']}", flush=True)
    return setup, runner, methods


# --------------------------------------------------------------------------- scoring phase
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


def phase_score(args, store: Store, clock: Clock) -> None:
    scorer = Scorer(args.features, args.device)
    store.data.setdefault("reference_seconds", {}).update(scorer.ref_seconds)
    if args.reference_check and "fid" in scorer.extractors:
        save_reference_check(args, scorer)
    for name in score_order(args, store.rows):
        row = store.rows[name]
        if "nfe" not in row or all(f in row for f in args.features):
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


# --------------------------------------------------------------------------- report
def fmt(v) -> str:
    if not isinstance(v, float) or not math.isfinite(v):
        return str(v) if v is not None else ""
    return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}"


def fmt_row(row: dict) -> str:
    keys = ("nfe", "jvps", "fid", "fd-lenet", "precision", "recall", "sampling_seconds")
    return "  ".join(f"{k} {fmt(row[k])}" for k in keys if k in row)


COV_FAMILY = ("cov_ddim", "cov_dpmpp")
"""Rows of the covariance-aware samplers (every variant is reported against the target)."""
BASELINES = ("ddim", "heun", "dpmpp_2m", "addim")
"""The samplers the covariance-aware one must beat on MNIST (issue 5)."""


def sampler_table(rows: dict, key: str, nfes: list[int]) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows.values()))
    lines = ["| sampler | " + " | ".join(f"NFE {n}" for n in nfes) + " |",
             "|---|" + "---:|" * len(nfes)]  # fmt: skip
    for m in methods:
        cells = []
        for n in nfes:
            r = rows.get(f"sampler:{m}@{n}", {})
            cells.append(fmt(r.get(key)) + ("*" if r.get("nonfinite_samples") else ""))
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return lines


def seed_spread(rows: dict, key: str) -> float:
    """The largest gap between two runs of the same sampler and NFE that differ only in their
    noise and labels (the samplers' rows vs the teacher rows): a floor under which a difference
    between two rows is not a measured one."""
    pairs = [(rows.get(f"sampler:{k}", {}), rows.get(f"teacher:{k}", {})) for k in TEACHER_ROWS]
    gaps = [abs(a[key] - b[key]) for a, b in pairs if key in a and key in b]
    return max(gaps, default=0.0)


def verdict(value: float, best: float, spread: float) -> str:
    if value < best - spread:
        return "met"
    return "tie (within the seed spread)" if value < best + spread else "missed"


def sampler_targets(rows: dict, key: str, nfes: list[int], spread: float) -> list[str]:
    out = []
    for n in nfes:
        base = [(m, rows.get(f"sampler:{m}@{n}", {}).get(key)) for m in BASELINES]
        base = [(m, v) for m, v in base if v is not None]
        if not base:
            continue
        best_m, best_v = min(base, key=lambda mv: mv[1])
        for r in rows.values():
            if r.get("nfe_target") != n or not r["method"].startswith(COV_FAMILY) or key not in r:
                continue
            out.append(f"- NFE {n}: `{r['method']}` {fmt(r[key])} vs the best of DDIM, Heun, "
                       f"DPM-Solver++, aDDIM (`{best_m}` {fmt(best_v)}): "
                       f"**{verdict(r[key], best_v, spread)}**")  # fmt: skip
    return out


def distill_targets(rows: dict, key: str, spread: float) -> list[str]:
    """MMD 8 steps within 10% of the teacher's 256 DDIM steps; MCM-CD 4 steps better than the
    teacher at 8 DDIM and 8 DDPM steps (by more than the seed spread, else a tie)."""
    out, ref = [], rows.get("teacher:ddim@256", {}).get(key)
    for name, r in rows.items():
        if r.get("group") != "students" or key not in r:
            continue
        if "mmd" in name and r.get("nfe") == 8 and ref is not None:
            ok = r[key] <= 1.1 * ref
            out.append(f"- `{name}` {fmt(r[key])} vs teacher DDIM 256 steps {fmt(ref)}: within "
                       f"10% or better **{'met' if ok else 'missed'}**")  # fmt: skip
        refs = [(k, rows.get(f"teacher:{k}", {}).get(key)) for k in ("ddim@8", "ddpm@8")]
        if "mcm" in name and r.get("nfe") == 4 and all(v is not None for _, v in refs):
            vs = "; ".join(f"{k} {fmt(v)}: {verdict(r[key], v, spread)}" for k, v in refs)
            out.append(f"- `{name}` {fmt(r[key])} vs teacher {vs}")
    return out


def model_table(rows: dict) -> list[str]:
    lines = ["| row | NFE | FID | fd-lenet | precision | recall | sampling s | training |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for name, r in rows.items():
        if r.get("group") not in ("teacher", "students", "real"):
            continue
        train = ""
        if "train_steps" in r:
            train = f"{r['train_steps']} steps, batch {r['train_batch']}"
            if "train_seconds" in r:
                train += f", {r['train_seconds'] / 60:.1f} min on {r.get('train_device')}"
        cells = [r.get(k) for k in ("fid", "fd-lenet", "precision", "recall", "sampling_seconds")]
        lines.append(f"| {name} | {r.get('nfe', '')} | " + " | ".join(map(fmt, cells))
                     + f" | {train} |")  # fmt: skip
    return lines


STUDENT_STEPS = (1, 2, 4, 8)


def student_grid(rows: dict, keys: tuple[str, ...]) -> list[str]:
    """Students by method and training run (rows) and by their number of steps (columns);
    a cell joins the row's values of `keys` with " / "."""
    runs: dict[str, dict[int, dict]] = {}
    for r in rows.values():
        if r.get("group") == "students" and "student_steps" in r and keys[0] in r:
            label = f"{r['method']}, {r.get('train_steps', '?')} steps"
            label += f" ({r['train_device']})" if r.get("train_device") else ""
            runs.setdefault(label, {})[r["student_steps"]] = r
    lines = ["| student, training steps (device) | " + " | ".join(
        f"{k} step{'s' if k > 1 else ''}" for k in STUDENT_STEPS) + " |",
        "|---|" + "---:|" * len(STUDENT_STEPS)]  # fmt: skip
    for label in sorted(runs):
        cells = [" / ".join(fmt(runs[label][k].get(key)) for key in keys)
                 if k in runs[label] else "" for k in STUDENT_STEPS]  # fmt: skip
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def grid_section(rows: dict) -> list[str]:
    """The distillation grid: fd-lenet with precision/recall for every student, FID where it
    was measured."""
    if not any("student_steps" in r for r in rows.values()):
        return []

    def teacher(key: str) -> str:
        return ", ".join(f"{name.removeprefix('teacher:')} {fmt(r[key])}"
                         for name, r in rows.items() if name.startswith("teacher:")
                         and key in r)  # fmt: skip

    lines = ["## Distilled students by number of steps", "",
             "fd-lenet / precision / recall (LeNet features, not FID):", "",
             *student_grid(rows, ("fd-lenet", "precision", "recall")), "",
             f"The teacher's fd-lenet: {teacher('fd-lenet')}.", ""]  # fmt: skip
    students = [r for r in rows.values() if "student_steps" in r and "fid" in r]
    if students:
        runtimes = Counter(r.get("fid_runtime", "torch") for r in students)
        runtime = ", ".join(f"{k} ({n} students)" for k, n in sorted(runtimes.items()))
        lines += [f"Inception FID (only the students it was run on; Inception runtime: {runtime}):",
                  "",
                  *student_grid(rows, ("fid",)), "",
                  f"The teacher's FID: {teacher('fid')}.", ""]  # fmt: skip
    if any("frame_lit" in r for r in rows.values()):
        lines += [f"Background haze: share of the outer {FRAME}-pixel border that is not black "
                  f"(real MNIST-train: {fmt(rows.get('real:train', {}).get('frame_lit'))}):",
                  "", *student_grid(rows, ("frame_lit",)), ""]  # fmt: skip
    return lines


def render(data: dict, extra: list[str]) -> str:
    rows = data["rows"]
    samplers = {k: r for k, r in rows.items() if r.get("group") == "samplers"}
    nfes = sorted({r["nfe_target"] for r in samplers.values()})
    skipped = [k for k, r in rows.items() if "skipped" in r or "fid_skipped" in r]
    spread = seed_spread(rows, "fid")
    machine_line = "; ".join(f"{phase}: {m.get('gpu', m['device'])}, torch {m['torch']}"
                             for phase, m in data.get("machine", {}).items())  # fmt: skip
    for folder, machines in data.get("extra_machines", {}).items():
        machine_line += f"; the student rows from `{folder}`: " + ", ".join(
            f"{phase} on {m.get('gpu', m['device'])}, torch {m['torch']}"
            for phase, m in machines.items()
        )
    lines = [
        "# MNIST at 10k samples: samplers, teacher and students (`benchmarks/mnist_10k.py`)",
        "",
        f"{data.get('num')} samples per row; FID is the standard TF-Inception FID against the "
        "10k MNIST test images; fd-lenet, precision and recall (k = 3) are in difflab's LeNet "
        "features (not FID). Sampler rows share one initial noise and random labels (seed 0), "
        "teacher and student rows class-balanced labels (seed 0). NFE: paper convention (a "
        "forward with its JVP is one evaluation; JVP rows are marked in the JSON).",
        "",
        f"Machine: {machine_line}.",
        "",
        *extra,
        "## Teacher, distilled students and the real-data floor",
        "",
        *model_table(rows),
        "",
        "Targets (Inception FID):",
        "",
        *(distill_targets(rows, "fid", spread) or ["- (no FID rows)"]),
        "",
        *grid_section(rows),
        "## Samplers on the shipped model: FID",
        "",
        *sampler_table(samplers, "fid", nfes),
        "",
        f"Targets (FID). A difference smaller than {fmt(spread)}, the largest FID gap between two "
        "runs of one sampler that differ only in noise and labels (sampler vs teacher rows of "
        "DDIM/DDPM at the same NFE), is reported as a tie:",
        "",
        *(sampler_targets(samplers, "fid", [8, 10], spread) or ["- (no FID rows)"]),
        "",
        "## Samplers: fd-lenet",
        "",
        *sampler_table(samplers, "fd-lenet", nfes),
        "",
        f"## Samplers: wall seconds for {data.get('num')} samples (sampling only)",
        "",
        *sampler_table(samplers, "sampling_seconds", nfes),
        "",
    ]
    if "jvp_cost" in data:
        c = data["jvp_cost"]["checkpoint"]
        lines += [f"A JVP of the shipped U-ViT costs {c['vs_sdpa']:.2f} forwards (SDPA forward; "
                  f"{c['vs_math']:.2f} vs a math-attention forward; batch {c['batch']}) on "
                  "this device.", ""]  # fmt: skip
    if skipped:
        lines += [f"Not run within the time limit ({len(skipped)} rows, empty cells above): "
                  f"{', '.join(skipped)}.", ""]  # fmt: skip
    lines += ["Commands:", "", *[f"    {c}" for c in data.get("commands", [])]]
    return "\n".join(lines) + "\n"


def merged_eval_rows(files: list[str]) -> dict[str, dict]:
    """Student rows from `difflab eval STUDENT --metric fid,fd-lenet,pr-lenet` records (the same
    class-balanced labels and seed as this script's teacher and student rows), e.g. a student
    scored on a CPU after the GPU run."""
    rows = {}
    for file in files:
        for r in json.loads(Path(file).read_text()):
            rows[f"student:{Path(r['checkpoint']).name} ({r.get('device', 'cpu')})"] = {
                "group": "students", "model": r["checkpoint"], "sampler": r["sampler"],
                "steps": r["steps"], "nfe": r["nfe"], "fid": r["fid"], "fd-lenet": r["fd-lenet"],
                "precision": r["pr-lenet_precision"], "recall": r["pr-lenet_recall"],
                "sampling_seconds": r["sampling_seconds"], "from": file,
            }  # fmt: skip
    return rows


def read_rows_file(path: str | Path) -> dict:
    """A samples folder's `rows.json` (the folder or the file itself)."""
    source = Path(path)
    return json.loads((source / "rows.json" if source.is_dir() else source).read_text())


def extra_rows(paths: list[str]) -> tuple[dict[str, dict], dict[str, dict], list[str]]:
    """The student rows of other samples folders (e.g. students sampled on a CPU after a GPU
    run), each tagged with its folder; their machines by folder; the commands that made them."""
    rows, machines, commands = {}, {}, []
    for path in paths:
        data = read_rows_file(path)
        for name, r in data["rows"].items():
            if r.get("group") != "students":
                continue
            rows[name] = r | {"from": str(path)}
            if (file := samples_file(Path(path), name)).is_file():
                rows[name]["frame_lit"] = frame_lit(read_samples(file))
        machines[str(path)] = data.get("machine", {})
        commands = united(commands, data.get("commands", []))
    return rows, machines, commands


FRAME = 4
"""Width in pixels of the image border where MNIST digits almost never reach."""


def frame_lit(images: np.ndarray) -> float:
    """Share of the pixels in the outer `FRAME`-pixel border that are not black: a measure of
    the grey background haze (real MNIST: about 0.015, from strokes that reach the border)."""
    inner = np.zeros(images.shape[-2:], bool)
    inner[FRAME:-FRAME, FRAME:-FRAME] = True
    return float((images[..., ~inner] > 0).mean())


def phase_report(args) -> None:
    data = read_rows_file(args.samples_dir)
    data["rows"] |= merged_eval_rows(args.merge_eval)
    more, machines, commands = extra_rows(args.extra_rows)
    data["rows"] |= more
    data["commands"] = united(data.get("commands", []), commands)
    for r in data["rows"].values():  # rows from before the grid fields, when the model is here
        if r.get("group") == "students" and "student_steps" not in r and "model" in r:
            if Path(r["model"]).exists():
                r |= student_fields(Path(r["model"]))
    if machines:
        data["extra_machines"] = machines
    real = [samples_file(Path(f), "real:train") for f in [args.samples_dir, *args.extra_rows]]
    if "real:train" in data["rows"] and (found := [f for f in real if f.is_file()]):
        data["rows"]["real:train"]["frame_lit"] = frame_lit(read_samples(found[0]))
    command = " ".join(["python", *sys.argv])
    if command not in data.setdefault("commands", []):
        data["commands"].append(command)
    extra = [Path(f).read_text() for f in args.notes]
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    out.with_suffix(".md").write_text(render(data, extra))
    plot(data["rows"], out.with_suffix(".png"))
    grid = student_samples_plot(data["rows"], Path(args.samples_dir), Path(f"{out}_students.png"))
    print(f"wrote {out}.md, .json and .png" + (f", {grid}" if grid else ""))


def student_samples_plot(rows: dict, folder: Path, path: Path, num: int = 20) -> Path | None:
    """The first `num` samples of every student row whose samples are on this machine (same
    class-balanced labels 0, 1, ..., 9, 0, ... in every row), by method and steps."""
    from difflab.eval.plots import plot_sample_rows

    images = {}
    ordered = sorted((r["method"], r["student_steps"], r.get("train_steps") or 0, name)
                     for name, r in rows.items() if "student_steps" in r)  # fmt: skip
    for method, steps, trained, name in ordered:
        file = samples_file(Path(rows[name].get("from", folder)), name)
        if file.is_file():
            u8 = torch.from_numpy(read_samples(file)[:num]).float()
            images[f"{method}, {steps} step{'s' * (steps > 1)} ({trained} tr.)"] = u8 / 127.5 - 1
    if not images:
        return None
    title = "Distilled MNIST students, first samples (labels 0-9, 0-9; seed 0)"
    return plot_sample_rows(images, path, title=title)


PLOTTED = (
    "ddim", "ddpm", "dpmpp_2m", "sde_dpmpp_2m", "unipc", "addim", "cov_ddim",
    "cov_ddim_mean_last", "cov_dpmpp_2m_table", "diffusers_dpmpp_2m_karras", "diffusers_unipc",
)  # fmt: skip
"""The samplers drawn in the plot (Heun diverges at these NFE and would flatten the axes)."""


def plot(rows: dict, path: Path) -> None:
    from difflab.eval.plots import plot_quality_vs_nfe

    records = [
        {"sampler": r["method"], "nfe": r["nfe"], "FID": r.get("fid"), "fd-lenet": r["fd-lenet"]}
        for r in rows.values()
        if r.get("group") == "samplers" and r["method"] in PLOTTED and "fd-lenet" in r
    ]
    plot_quality_vs_nfe(records, path, metrics=["FID", "fd-lenet"],
                        title="Shipped MNIST U-ViT, 10k samples per point")  # fmt: skip


def machine(device: str) -> dict:
    info = {"platform": platform.platform(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=("sample", "score", "all", "report"))
    p.add_argument("--samples-dir", required=True)
    p.add_argument("--out-dir", default=None, help="also copy rows.json (and students) here")
    p.add_argument("--device", default="auto")
    p.add_argument("--teacher", default=TEACHER)
    p.add_argument("--num", type=int, default=10_000)
    p.add_argument("--batch", type=int, default=2500, help="samples per sampler call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--nfe", type=int, nargs="*", default=[8, 10])
    p.add_argument("--extra-nfe", type=int, nargs="*", default=[4, 6, 16, 32])
    p.add_argument("--methods", nargs="*", default=list(METHODS))
    p.add_argument("--teacher-rows", nargs="*", default=list(TEACHER_ROWS))
    p.add_argument("--students", nargs="*", default=[])
    p.add_argument("--features", nargs="+", default=None, help="default: sample fd-lenet, "
                   "score fid, all both")  # fmt: skip
    p.add_argument("--table-levels", type=int, default=121)
    p.add_argument("--table-num", type=int, default=2000)
    p.add_argument("--train-minutes", type=float, default=0.0)
    p.add_argument("--train-max-steps", type=int, default=100_000)
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument("--train-lr", type=float, default=1e-4)
    p.add_argument("--deadline", type=float, default=math.inf, help="seconds for this phase")
    p.add_argument("--only", nargs="*", default=[],
                   help="score: only the rows whose names match these patterns "
                   "(fnmatch, e.g. 'student:*')")  # fmt: skip
    add_fid_runtime_argument(p)
    p.add_argument("--reference-check", default=None, help="score: save the Inception check here")
    p.add_argument("--out", default=str(ROOT / "results" / "mnist_10k"), help="report: output")
    p.add_argument("--notes", nargs="*", default=[], help="report: markdown files to include")
    p.add_argument("--merge-eval", nargs="*", default=[], help="report: difflab eval JSON files")
    p.add_argument("--extra-rows", nargs="*", default=[],
                   help="report: other samples folders (or their rows.json) whose student rows "
                   "join the report")  # fmt: skip
    args = p.parse_args(argv)
    if args.phase == "report":
        phase_report(args)
        return 0
    from difflab.devices import resolve_device

    args.device = str(resolve_device(args.device))
    use_fid_runtime(args)
    if args.features is None:
        args.features = {"sample": ["fd-lenet"], "score": ["fid"]}.get(
            args.phase, ["fd-lenet", "fid"]
        )
    store, clock = Store(Path(args.samples_dir)), Clock(args.deadline)
    store.data.setdefault("machine", {})[args.phase] = machine(args.device)
    command = " ".join(["python", *sys.argv])
    if command not in store.data.setdefault("commands", []):
        store.data["commands"].append(command)
    store.data.setdefault("num", args.num)
    if args.phase in ("sample", "all"):
        phase_sample(args, store, clock)
    if args.phase in ("score", "all"):
        phase_score(args, store, clock)
    store.data.setdefault("seconds", {})[args.phase] = round(time.monotonic() - clock.start, 1)
    store.save(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
