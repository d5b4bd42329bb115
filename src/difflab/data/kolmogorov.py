"""Kolmogorov flow: forced 2-D Navier-Stokes in vorticity form on the periodic square `[0, 2pi]^2`.

    d omega / dt + u . grad omega = nu lap omega - drag omega + f,    u = (d_y psi, -d_x psi),
    lap psi = -omega,   f = curl (sin(k_f y), 0) = -k_f cos(k_f y),

with `k_f = 4`, `drag = 0.1`, `nu = 1e-3` (the setting of jax-cfd's `ForcedNavierStokes2D`
Kolmogorov flow, Re about 1000). Pseudo-spectral: the advection term is formed on the grid from
spectral derivatives and truncated by the 2/3 rule, which makes the semi-discrete system a
Galerkin projection that conserves energy and enstrophy exactly without forcing and dissipation;
time stepping is RK4 with an integrating factor for the linear terms (`nu k^2 + drag`, exact).
Everything is vectorised over a batch of trajectories (`torch.fft`).

`prepare_kolmogorov` runs `num_trajectories` random initial fields past a spin-up, stores frames
every `frame_dt` time units downsampled spectrally to `frame_resolution`, and caches them
as `.npz` with the solver parameters (`difflab data prepare kolmogorov`). `KolmogorovClips` serves
clips of `frames` consecutive frames `[T, 1, H, W]`, vorticity divided by `2 * std`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .cache import data_dir, save_npz_atomic


@dataclass(frozen=True)
class FlowParams:
    """Solver parameters (stored with the data). `resolution` is the solver grid, `dt` its step."""

    resolution: int = 64
    viscosity: float = 1e-3
    drag: float = 0.1
    forcing_wavenumber: int = 4
    forcing_amplitude: float = 1.0
    dt: float = 0.01

    def __post_init__(self) -> None:
        if self.resolution < 8 or self.resolution % 2:
            raise ValueError(f"resolution must be an even integer >= 8, got {self.resolution}")
        if self.dt <= 0:
            raise ValueError(f"dt must be > 0, got {self.dt}")
        if self.viscosity < 0 or self.drag < 0:
            raise ValueError("viscosity and drag must be >= 0")


class Spectral:
    """Wavenumbers, dealiasing mask and the operators of one `n x n` grid (float64, rfft2)."""

    def __init__(self, n: int, device: torch.device | str = "cpu"):
        self.n = n
        k = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64, device=device)
        kr = torch.fft.rfftfreq(n, 1.0 / n, dtype=torch.float64, device=device)
        self.ky, self.kx = torch.meshgrid(k, kr, indexing="ij")  # y along rows, x along columns
        self.k2 = self.kx**2 + self.ky**2
        self.inv_k2 = torch.where(self.k2 > 0, 1.0 / self.k2.clamp_min(1e-30), 0.0)
        cut = n // 3  # 2/3 rule: keep |k| <= n/3 in each direction
        self.dealias = ((self.kx.abs() <= cut) & (self.ky.abs() <= cut)).to(torch.float64)

    def to_grid(self, w_hat: Tensor) -> Tensor:
        return torch.fft.irfft2(w_hat, s=(self.n, self.n))

    def to_spectral(self, w: Tensor) -> Tensor:
        return torch.fft.rfft2(w)

    def velocity(self, w_hat: Tensor) -> tuple[Tensor, Tensor]:
        """`u = d_y psi`, `v = -d_x psi` with `psi_hat = w_hat / k^2` (spectral)."""
        psi = w_hat * self.inv_k2
        return 1j * self.ky * psi, -1j * self.kx * psi

    def advection(self, w_hat: Tensor) -> Tensor:
        """`-(u . grad omega)`, dealiased (2/3 rule on the inputs and the product)."""
        w_hat = w_hat * self.dealias
        u_hat, v_hat = self.velocity(w_hat)
        u, v = self.to_grid(u_hat), self.to_grid(v_hat)
        wx, wy = self.to_grid(1j * self.kx * w_hat), self.to_grid(1j * self.ky * w_hat)
        return -self.to_spectral(u * wx + v * wy) * self.dealias


class KolmogorovSolver:
    """Integrating-factor RK4 for the vorticity equation (module docstring); state `w_hat`
    `[N, n, n // 2 + 1]` complex128."""

    def __init__(self, params: FlowParams = FlowParams(), device: torch.device | str = "cpu"):
        self.p = params
        self.grid = Spectral(params.resolution, device)
        n = params.resolution
        y = torch.arange(n, dtype=torch.float64, device=device) * (2 * math.pi / n)
        kf, amp = params.forcing_wavenumber, params.forcing_amplitude
        f = (-amp * kf * torch.cos(kf * y))[:, None].expand(n, n)
        self.forcing_hat = self.grid.to_spectral(f) * self.grid.dealias
        self.forcing_u = amp * torch.sin(kf * y)[:, None].expand(n, n)  # x-velocity forcing
        self.linear = -(params.viscosity * self.grid.k2 + params.drag)
        self.half = torch.exp(self.linear * params.dt / 2)

    def tendency(self, w_hat: Tensor) -> Tensor:
        """The non-linear part plus forcing, `-(u . grad omega) + f`."""
        return self.grid.advection(w_hat) + self.forcing_hat

    def step(self, w_hat: Tensor) -> Tensor:
        """One IF-RK4 step of `dt`: RK4 on `v = e^{-L t} w_hat`, which removes the stiff linear
        terms `L = -(nu k^2 + drag)` (exact for them)."""
        dt, e = self.p.dt, self.half
        k1 = self.tendency(w_hat)
        k2 = self.tendency(e * (w_hat + 0.5 * dt * k1))
        k3 = self.tendency(e * w_hat + 0.5 * dt * k2)
        k4 = self.tendency(e * e * w_hat + dt * e * k3)
        return e * e * w_hat + dt / 6 * (e * e * k1 + 2 * e * (k2 + k3) + k4)

    def run(self, w_hat: Tensor, steps: int) -> Tensor:
        for _ in range(steps):
            w_hat = self.step(w_hat)
        return w_hat

    def random_initial(self, num: int, generator: torch.Generator | None = None) -> Tensor:
        """Random smooth vorticity (spectrum peaked near |k| = 4, rms 1), dealiased."""
        g = self.grid
        noise = torch.randn((num, g.n, g.n), generator=generator, dtype=torch.float64)
        w_hat = g.to_spectral(noise.to(g.k2.device))
        k = g.k2.sqrt()
        w_hat = w_hat * (k / 4.0) * torch.exp(-0.5 * (k / 4.0) ** 2) * g.dealias
        w = g.to_grid(w_hat)
        return g.to_spectral(w / w.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt())

    # --- diagnostics (per trajectory, domain means) ---

    def energy(self, w_hat: Tensor) -> Tensor:
        """`E = 1/2 <|u|^2>` (domain mean)."""
        u_hat, v_hat = self.grid.velocity(w_hat)
        return 0.5 * (self.grid.to_grid(u_hat) ** 2 + self.grid.to_grid(v_hat) ** 2).mean((-2, -1))

    def enstrophy(self, w_hat: Tensor) -> Tensor:
        """`Z = 1/2 <omega^2>`."""
        return 0.5 * self.grid.to_grid(w_hat).pow(2).mean((-2, -1))

    def energy_budget(self, w_hat: Tensor) -> dict[str, Tensor]:
        """Terms of `dE/dt = <u . F> - nu <omega^2> - 2 drag E` (`<|grad u|^2> = <omega^2>`)."""
        u = self.grid.to_grid(self.grid.velocity(w_hat)[0])
        w = self.grid.to_grid(w_hat)
        return {
            "injection": (u * self.forcing_u).mean((-2, -1)),
            "viscous": -self.p.viscosity * w.pow(2).mean((-2, -1)),
            "drag": -2 * self.p.drag * self.energy(w_hat),
        }


def energy_spectrum(w: Tensor) -> Tensor:
    """Shell-summed kinetic energy spectrum `E(k)`, `k = 0 .. n/2`, of vorticity fields
    `[..., n, n]` (mean over leading dims): `|u_hat|^2 = |w_hat|^2 / k^2`."""
    n = w.shape[-1]
    w_hat = torch.fft.fft2(w.to(torch.float64)) / n**2
    k = torch.fft.fftfreq(n, 1.0 / n, dtype=torch.float64)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    e = 0.5 * w_hat.abs().pow(2) / torch.where(k2 > 0, k2, 1.0)
    e = e.reshape(-1, n * n).mean(0)
    shell = k2.sqrt().round().long().reshape(-1).clamp(max=n // 2)
    return torch.zeros(n // 2 + 1, dtype=torch.float64).index_add_(0, shell, e)


def spectral_downsample(w: Tensor, size: int) -> Tensor:
    """Keep the Fourier modes `|k| < size / 2` of fields `[..., n, n]` on a `size x size` grid."""
    n = w.shape[-1]
    if size == n:
        return w
    if size > n or size % 2:
        raise ValueError(f"cannot downsample {n}x{n} to {size}x{size}")
    w_hat = torch.fft.fft2(w)
    h = size // 2
    keep = torch.cat([torch.arange(h), torch.arange(n - h + 1, n)])  # drop the Nyquist row
    small = w_hat[..., keep, :][..., :, keep]
    small = torch.cat(
        [small[..., :h, :], torch.zeros_like(small[..., :1, :]), small[..., h:, :]], -2
    )
    small = torch.cat(
        [small[..., :, :h], torch.zeros_like(small[..., :, :1]), small[..., :, h:]], -1
    )
    return torch.fft.ifft2(small).real * (size / n) ** 2


# ----------------------------------------------------------------------------- the data set


@dataclass(frozen=True)
class KolmogorovData:
    """What `prepare_kolmogorov` makes: trajectories of `num_frames` frames every `frame_dt`
    after `spinup` time units, at `frame_resolution`."""

    num_trajectories: int = 24
    num_frames: int = 160
    frame_dt: float = 0.5
    spinup: float = 40.0
    frame_resolution: int = 32
    seed: int = 0


KOLMOGOROV_FILE = "kolmogorov.npz"


def kolmogorov_path(cache_dir: str | os.PathLike | None = None) -> Path:
    return data_dir(cache_dir) / KOLMOGOROV_FILE


def generate_kolmogorov(
    data: KolmogorovData = KolmogorovData(),
    params: FlowParams = FlowParams(),
    *,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Run the solver and return the arrays `prepare_kolmogorov` stores: `vorticity` float32
    `[N, T, r, r]`, `energy`/`enstrophy`/`injection`/`dissipation` per stored frame at the solver
    resolution, the mean solver `spectrum` over stored frames, and `meta` (JSON of the params)."""
    stride = round(data.frame_dt / params.dt)
    if not math.isclose(stride * params.dt, data.frame_dt, rel_tol=1e-9):
        raise ValueError(f"frame_dt={data.frame_dt} is not a multiple of dt={params.dt}")
    solver = KolmogorovSolver(params)
    gen = torch.Generator().manual_seed(data.seed)
    w_hat = solver.random_initial(data.num_trajectories, gen)
    start = time.perf_counter()
    w_hat = solver.run(w_hat, round(data.spinup / params.dt))
    frames, diag, spectrum = (
        [],
        {"energy": [], "enstrophy": [], "injection": [], "dissipation": []},
        0,
    )
    for i in range(data.num_frames):
        if i:
            w_hat = solver.run(w_hat, stride)
        w = solver.grid.to_grid(w_hat)
        frames.append(spectral_downsample(w, data.frame_resolution).float())
        budget = solver.energy_budget(w_hat)
        diag["energy"].append(solver.energy(w_hat))
        diag["enstrophy"].append(solver.enstrophy(w_hat))
        diag["injection"].append(budget["injection"])
        diag["dissipation"].append(-(budget["viscous"] + budget["drag"]))
        spectrum = spectrum + energy_spectrum(w)
        if progress and i % 20 == 0:
            print(f"frame {i}/{data.num_frames} ({time.perf_counter() - start:.0f} s)", flush=True)
    meta = {"params": asdict(params), "data": asdict(data), "seconds": time.perf_counter() - start}
    out = {k: torch.stack(v, 1).numpy() for k, v in diag.items()}
    out["vorticity"] = torch.stack(frames, 1).numpy()
    out["spectrum"] = (spectrum / data.num_frames).numpy()
    out["meta"] = np.array(json.dumps(meta))
    return out


def prepare_kolmogorov(
    cache_dir: str | os.PathLike | None = None,
    data: KolmogorovData = KolmogorovData(),
    params: FlowParams = FlowParams(),
    *,
    progress: bool = True,
) -> Path:
    """Generate and cache the data set (`difflab data prepare kolmogorov`); a no-op when a cache
    made with the same parameters exists."""
    path = kolmogorov_path(cache_dir)
    if path.exists():
        with np.load(path) as f:
            meta = json.loads(str(f["meta"]))
        if meta["params"] == asdict(params) and meta["data"] == asdict(data):
            return path
    return save_npz_atomic(path, **generate_kolmogorov(data, params, progress=progress))


def load_kolmogorov(cache_dir: str | os.PathLike | None = None) -> dict[str, np.ndarray]:
    from .cache import DatasetUnavailableError

    path = kolmogorov_path(cache_dir)
    if not path.exists():
        raise DatasetUnavailableError(
            f"Kolmogorov flow is not prepared: {path} does not exist; run "
            "`difflab data prepare kolmogorov`"
        )
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


class KolmogorovClips(Dataset):
    """Clips of `frames` consecutive frames `[T, 1, r, r]` of the cached trajectories, vorticity
    divided by `scale = 2 std` (stored as `.scale`). Split `train` takes all trajectories but the
    last `test_trajectories`, `test` those. Items are `(clip, -1)`."""

    def __init__(self, split: str = "train", *, frames: int = 10, test_trajectories: int = 4,
                 cache_dir: str | os.PathLike | None = None):  # fmt: skip
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        arrays = load_kolmogorov(cache_dir)
        w = torch.from_numpy(arrays["vorticity"])
        if not 0 < test_trajectories < w.shape[0]:
            raise ValueError(
                f"test_trajectories must be in [1, {w.shape[0] - 1}], got {test_trajectories}"
            )
        if not 1 <= frames <= w.shape[1]:
            raise ValueError(f"frames must be in [1, {w.shape[1]}], got {frames}")
        w = w[:-test_trajectories] if split == "train" else w[-test_trajectories:]
        self.scale = float(2 * np.std(arrays["vorticity"], dtype=np.float64))  # population std
        self.trajectories = (w / self.scale)[:, :, None]  # [N, T, 1, r, r]
        self.frames = frames
        self.per_trajectory = w.shape[1] - frames + 1
        self.image_shape = tuple(self.trajectories.shape[2:])
        self.num_classes = 0

    def __len__(self) -> int:
        return self.trajectories.shape[0] * self.per_trajectory

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        n, start = divmod(int(index), self.per_trajectory)
        clip = self.trajectories[n, start : start + self.frames]
        return clip.float(), torch.tensor(-1, dtype=torch.int64)
