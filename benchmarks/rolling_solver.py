"""Is the Kolmogorov-flow solver right? Energy balance and spectrum of the cached data set.

Three checks: (1) the stored trajectories are statistically steady, so the time-averaged energy
injection `<u . F>` must equal the dissipation `nu <omega^2> + 2 drag E`; (2) over a short run
the change of energy equals the time integral of the budget terms (the budget is the right one);
(3) the energy spectrum falls off as a power law beyond the forcing wavenumber (2-D enstrophy
cascade, `k^-3` or steeper with drag), at the data set's grid and at twice that resolution.

    python benchmarks/rolling_solver.py
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from common import RESULTS, command_line, record_run, update_results

from difflab.data.kolmogorov import (
    FlowParams,
    KolmogorovSolver,
    energy_spectrum,
    load_kolmogorov,
)


def slope(spectrum: torch.Tensor, lo: int, hi: int) -> float:
    k = torch.arange(lo, hi + 1, dtype=torch.float64)
    a = torch.stack([k.log(), torch.ones_like(k)], 1)
    return float(torch.linalg.lstsq(a, spectrum[lo : hi + 1].log()[:, None]).solution[0, 0])


def budget_check(params: FlowParams, spinup: float, steps: int, seed: int) -> dict:
    """`E(T) - E(0)` against the trapezoid integral of the budget terms over `steps` steps."""
    solver = KolmogorovSolver(params)
    w = solver.run(solver.random_initial(2, torch.Generator().manual_seed(seed)),
                   round(spinup / params.dt))  # fmt: skip
    e0, rates, mags = solver.energy(w), [], []
    for _ in range(steps + 1):
        terms = solver.energy_budget(w)
        rates.append(sum(terms.values()))
        mags.append(sum(t.abs() for t in terms.values()))
        if len(rates) <= steps:
            w = solver.step(w)
    rates, mags = torch.stack(rates), torch.stack(mags)
    integral = params.dt * (rates[1:-1].sum(0) + 0.5 * (rates[0] + rates[-1]))
    change = solver.energy(w) - e0
    scale = params.dt * mags.sum(0)
    return {
        "energy_change": change.tolist(),
        "budget_integral": integral.tolist(),
        "relative_residual": float(((change - integral).abs() / scale).max()),
        "time": steps * params.dt,
    }


def spectrum_run(params: FlowParams, spinup: float, average: float, seed: int) -> dict:
    solver = KolmogorovSolver(params)
    w = solver.run(solver.random_initial(2, torch.Generator().manual_seed(seed)),
                   round(spinup / params.dt))  # fmt: skip
    spectra, energies = [], []
    for _ in range(round(average)):
        w = solver.run(w, round(1.0 / params.dt))
        spectra.append(energy_spectrum(solver.grid.to_grid(w)))
        energies.append(float(solver.energy(w).mean()))
    spec = torch.stack(spectra).mean(0)
    cut = params.resolution // 3
    return {
        "resolution": params.resolution, "dt": params.dt, "spinup": spinup, "average": average,
        "energy": sum(energies) / len(energies), "spectrum": spec.tolist(),
        "slope_5_20": slope(spec, 5, 20), f"slope_5_{cut}": slope(spec, 5, cut),
    }  # fmt: skip


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fine-spinup", type=float, default=30.0, help="the 2x-resolution run")
    p.add_argument("--out", default=str(RESULTS / "rolling"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    arrays = load_kolmogorov()
    meta = json.loads(str(arrays["meta"]))
    params = FlowParams(**meta["params"])
    injection, dissipation = arrays["injection"], arrays["dissipation"]
    spec = torch.from_numpy(arrays["spectrum"])
    frames = torch.from_numpy(arrays["vorticity"]).double()
    cut = params.resolution // 3
    fine = dataclasses.replace(params, resolution=2 * params.resolution, dt=params.dt / 2)
    part = {
        "solver": {
            "params": meta["params"], "data": meta["data"],
            "generation_seconds": meta["seconds"],
            "mean_injection": float(injection.mean()),
            "mean_dissipation": float(dissipation.mean()),
            "balance_relative": float(abs(injection.mean() / dissipation.mean() - 1)),
            "balance_by_trajectory": (injection.mean(1) / dissipation.mean(1) - 1).tolist(),
            "mean_energy": float(arrays["energy"].mean()),
            "mean_enstrophy": float(arrays["enstrophy"].mean()),
            "spectrum": spec.tolist(), "slope_5_20": slope(spec, 5, 20),
            f"slope_5_{cut}": slope(spec, 5, cut),
            "frame_spectrum": energy_spectrum(frames).tolist(),
            "vorticity_std": float(frames.std()),
            "budget": budget_check(params, spinup=10.0, steps=200, seed=5),
            "fine": spectrum_run(fine, args.fine_spinup, 10, seed=6),
            "same_grid": spectrum_run(params, args.fine_spinup, 10, seed=6),
            "cfl_note": "dt * max|u| / dx at 64^2, dt = 0.01: about 0.45 (max|u| about 4.5)",
        }
    }  # fmt: skip
    print({k: v for k, v in part["solver"].items() if not isinstance(v, (list, dict))})
    print(part["solver"]["budget"]["relative_residual"], part["solver"]["fine"]["slope_5_20"],
          part["solver"]["same_grid"]["slope_5_20"])  # fmt: skip
    update_results(args.out, part)
    record_run(args.out, command_line(argv, "benchmarks/rolling_solver.py"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
