"""The Kolmogorov-flow solver and the sequence data sets (data/kolmogorov.py, moving_digits.py):
what the inviscid, unforced truncated system conserves, the energy budget, the exact linear decay
of the integrating factor, spectra and downsampling identities, the cache, and the moving digits'
determinism and walls."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from difflab.data import make_dataset
from difflab.data.cache import DatasetUnavailableError, data_dir
from difflab.data.kolmogorov import (
    FlowParams,
    KolmogorovData,
    KolmogorovSolver,
    energy_spectrum,
    load_kolmogorov,
    prepare_kolmogorov,
    spectral_downsample,
)
from difflab.data.moving_digits import MovingDigits, bounce

INVISCID = FlowParams(resolution=32, viscosity=0.0, drag=0.0, forcing_amplitude=0.0)


def test_inviscid_unforced_flow_conserves_energy_and_enstrophy():
    """Without forcing, viscosity and drag the 2/3-truncated system is a Galerkin projection of
    the Euler equations: the advection term is orthogonal to omega and psi (to round-off), so
    energy and enstrophy stay constant up to RK4's O(dt^4) error, at round-off for small steps."""
    solver = KolmogorovSolver(INVISCID)
    w_hat = solver.random_initial(3, torch.Generator().manual_seed(0))
    g = solver.grid
    w, tend = g.to_grid(w_hat), g.to_grid(solver.tendency(w_hat))
    psi = g.to_grid(w_hat * g.inv_k2)
    scale = w.pow(2).mean((-2, -1)).sqrt() * tend.pow(2).mean((-2, -1)).sqrt()
    assert ((w * tend).mean((-2, -1)).abs() / scale).max() < 1e-13  # dZ/dt = <omega N> = 0
    scale = psi.pow(2).mean((-2, -1)).sqrt() * tend.pow(2).mean((-2, -1)).sqrt()
    assert ((psi * tend).mean((-2, -1)).abs() / scale).max() < 1e-13  # dE/dt = <psi N> = 0
    e0, z0 = solver.energy(w_hat), solver.enstrophy(w_hat)
    drift = {}
    for dt in (0.02, 0.01, 0.0025):  # to t = 1: RK4's O(dt^4) drift, gone at small steps
        step = KolmogorovSolver(dataclasses.replace(INVISCID, dt=dt))
        later = step.run(w_hat, round(1 / dt))
        drift[dt] = max(float((step.energy(later) / e0 - 1).abs().max()),
                        float((step.enstrophy(later) / z0 - 1).abs().max()))  # fmt: skip
    assert drift[0.0025] < 1e-12
    assert drift[0.01] < drift[0.02] / 10  # fourth order in dt
    assert (later - w_hat).abs().max() > 1e-2  # the flow did move


def test_a_shear_mode_decays_exactly_under_viscosity_and_drag():
    """`omega = cos(3 y)` has no advection (u . grad omega = 0), so the integrating factor makes
    the decay `exp(-(nu k^2 + drag) t)` exact, whatever the step."""
    p = FlowParams(resolution=16, viscosity=0.05, drag=0.1, forcing_amplitude=0.0, dt=0.3)
    solver = KolmogorovSolver(p)
    y = torch.arange(16, dtype=torch.float64) * 2 * math.pi / 16
    w = torch.cos(3 * y)[:, None].expand(16, 16)[None]
    out = solver.grid.to_grid(solver.run(solver.grid.to_spectral(w), 10))
    torch.testing.assert_close(out, w * math.exp(-(0.05 * 9 + 0.1) * 3.0), rtol=0, atol=1e-14)


def test_energy_budget_matches_the_rate_of_change():
    """`dE/dt = <u . F> - nu <omega^2> - 2 drag E`: a centred difference of the solver's energy
    over two small steps against the budget terms at the middle."""
    p = FlowParams(resolution=32, viscosity=0.01, dt=1e-3)
    solver = KolmogorovSolver(p)
    w0 = solver.random_initial(2, torch.Generator().manual_seed(1))
    w1 = solver.step(w0)
    w2 = solver.step(w1)
    rate = (solver.energy(w2) - solver.energy(w0)) / (2 * p.dt)
    budget = sum(solver.energy_budget(w1).values())
    torch.testing.assert_close(rate, budget, rtol=1e-5, atol=1e-7)


def test_spectrum_sums_to_the_energy_and_downsampling_keeps_low_modes():
    solver = KolmogorovSolver(FlowParams(resolution=32))
    w_hat = solver.random_initial(2, torch.Generator().manual_seed(2))
    w = solver.grid.to_grid(w_hat)
    spectrum = energy_spectrum(w)
    torch.testing.assert_close(spectrum.sum(), solver.energy(w_hat).mean())
    # a field band-limited below 4 is sampled exactly on the 8x8 grid
    x = torch.arange(32, dtype=torch.float64) * 2 * math.pi / 32
    field = torch.sin(2 * x)[None, :] + torch.cos(3 * x)[:, None] * torch.sin(x)[None, :]
    torch.testing.assert_close(spectral_downsample(field, 8), field[::4, ::4])
    with pytest.raises(ValueError, match="cannot downsample 32x32 to 7x7"):
        spectral_downsample(field, 7)


TINY = KolmogorovData(num_trajectories=3, num_frames=6, frame_dt=0.1, spinup=0.2,
                      frame_resolution=8)  # fmt: skip
TINY_PARAMS = FlowParams(resolution=16, dt=0.05)


def test_prepare_caches_once_with_the_solver_parameters(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="difflab data prepare kolmogorov"):
        load_kolmogorov(tmp_path)
    path = prepare_kolmogorov(tmp_path, TINY, TINY_PARAMS, progress=False)
    stamp = path.stat().st_mtime_ns
    assert (
        prepare_kolmogorov(tmp_path, TINY, TINY_PARAMS, progress=False).stat().st_mtime_ns == stamp
    )
    arrays = load_kolmogorov(tmp_path)
    meta = json.loads(str(arrays["meta"]))
    assert meta["params"]["viscosity"] == 1e-3 and meta["params"]["drag"] == 0.1
    assert meta["params"]["forcing_wavenumber"] == 4 and meta["params"]["resolution"] == 16
    assert arrays["vorticity"].shape == (3, 6, 8, 8) and arrays["energy"].shape == (3, 6)
    assert not list(tmp_path.glob(".*tmp*"))  # the atomic write left no temporary
    clips = make_dataset("kolmogorov", "train", frames=4, test_trajectories=1, cache_dir=tmp_path)
    assert len(clips) == 2 * 3 and clips.image_shape == (1, 8, 8)
    clip, label = clips[5]
    scale = 2 * arrays["vorticity"].std()
    np.testing.assert_allclose(clip[:, 0].numpy() * scale, arrays["vorticity"][1, 2:6], rtol=1e-5,
                               atol=1e-5)  # fmt: skip
    assert int(label) == -1
    with pytest.raises(ValueError, match=r"frames must be in \[1, 6\], got 7"):
        make_dataset("kolmogorov", frames=7, test_trajectories=1, cache_dir=tmp_path)
    with pytest.raises(ValueError, match=r"test_trajectories must be in \[1, 2\], got 3"):
        make_dataset("kolmogorov", test_trajectories=3, cache_dir=tmp_path)


def test_bounce_is_reflected_at_the_walls():
    p = bounce(np.array([1.0, 9.0]), np.array([-1.5, 2.0]), 12, 10.0)
    assert (p >= 0).all() and (p <= 10).all()
    np.testing.assert_allclose(p[1], [0.5, 9.0])  # reflected off 0 and off 10
    speeds = np.abs(np.diff(p, axis=0))
    assert (speeds <= np.array([1.5, 2.0]) + 1e-12).all()


@pytest.mark.skipif(not (data_dir() / "mnist.npz").exists(), reason="difflab data prepare mnist")
def test_moving_digits_are_deterministic_given_the_seed():
    a = MovingDigits("test", frames=6, num_sequences=5, seed=3)
    b = MovingDigits("test", frames=6, num_sequences=5, seed=3)
    c = MovingDigits("test", frames=6, num_sequences=5, seed=4)
    clip, _ = a[2]
    assert clip.shape == (6, 1, 32, 32) and clip.min() >= -1 and clip.max() <= 1
    torch.testing.assert_close(clip, b[2][0], rtol=0, atol=0)
    assert not torch.equal(clip, c[2][0])
    traj = a.trajectory(2)
    assert traj["positions"].shape == (2, 6, 2) and (traj["positions"] <= 32 - 14).all()
    with pytest.raises(ValueError, match="digit_size must be 7, 14 or 28, got 10"):
        MovingDigits("test", digit_size=10)
