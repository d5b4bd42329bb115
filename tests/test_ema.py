"""The EMA warm-up in closed form, and configs stored before it became the default."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import safetensors.torch
import torch
from torch import nn

from difflab.api import load
from difflab.config import (
    OptimConfig,
    config_from_dict,
    config_from_json,
    config_from_stored,
    config_to_dict,
    load_config,
)
from difflab.train.checkpoint import CONFIG_METADATA_KEY, build_net_from_config
from difflab.train.ema import EMA
from difflab.train.runs import run_config

TINY = Path(__file__).resolve().parents[1] / "configs" / "digits_tiny.yaml"


class Vector(nn.Module):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(size, dtype=torch.float64))


def averaged_basis(decays: list[float], updates: int, warmup: bool) -> list[torch.Tensor]:
    """The EMAs after `updates` updates of a parameter that is the basis vector `e_k` after
    update `k` (`e_0` at the start): each average *is* the weight vector over the iterates."""
    net = Vector(updates + 1)
    with torch.no_grad():
        net.theta[0] = 1.0
    ema = EMA(net, decays, warmup=warmup)
    for n in range(updates):
        with torch.no_grad():
            net.theta.zero_()
            net.theta[n + 1] = 1.0
        ema.update(net, n)
    return [ema.average(d).theta.detach() for d in decays]


def explicit_weights(decay: float, updates: int, warmup: bool) -> list[float]:
    """`w_k = (1 - d_{k-1}) prod_{n=k}^{N-1} d_n` (`w_0 = prod_n d_n`) with
    `d_n = min(decay, (1 + n) / (10 + n))` under warm-up."""
    d = [min(decay, (1 + n) / (10 + n)) if warmup else decay for n in range(updates)]
    weights = []
    for k in range(updates + 1):
        w = 1.0 if k == 0 else 1.0 - d[k - 1]
        for n in range(k, updates):
            w *= d[n]
        weights.append(w)
    return weights


@pytest.mark.parametrize("warmup", [True, False])
def test_ema_is_the_explicit_weighted_average_of_the_iterates(warmup):
    # decay 0.95 is reached by the warm-up at n = 170 (< 300 updates), 0.999 never is
    decays, updates = [0.95, 0.999], 300
    for decay, got in zip(decays, averaged_basis(decays, updates, warmup)):
        want = torch.tensor(explicit_weights(decay, updates, warmup), dtype=torch.float64)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        assert float(got.sum()) == pytest.approx(1.0, abs=1e-12)


def test_warmup_weights_are_binomial_and_a_slow_ema_follows_recent_iterates():
    """While the warm-up binds, `prod_{n=k}^{N-1} (1+n)/(10+n) * 9/(9+k)` telescopes to
    `w_k = C(k+8, 8) / C(N+9, 9)`: the weight grows like `k^8`, so after N = 1000 updates a
    0.9999 EMA (half-life 6931 updates without warm-up) averages a ramp `theta_k = k` to
    exactly `0.9 N` and puts `1 - C(509, 9) / C(1009, 9)` ~ 0.998 of its weight on the last
    500 iterates; without warm-up 0.9999^1000 = 0.905 of it is still the initial weights."""
    n_updates = 1000
    warm = averaged_basis([0.9999], n_updates, True)[0]
    binomial = torch.tensor(
        [math.comb(k + 8, 8) / math.comb(n_updates + 9, 9) for k in range(n_updates + 1)],
        dtype=torch.float64,
    )
    torch.testing.assert_close(warm, binomial, rtol=1e-9, atol=1e-15)
    ramp = torch.arange(n_updates + 1, dtype=torch.float64)
    assert float(warm @ ramp) == pytest.approx(0.9 * n_updates, rel=1e-9)
    recent = float(warm[501:].sum())
    assert recent == pytest.approx(1 - math.comb(509, 9) / math.comb(1009, 9), rel=1e-9)
    assert recent > 0.99
    plain = averaged_basis([0.9999], n_updates, False)[0]
    assert float(plain[0]) == pytest.approx(0.9999**n_updates, rel=1e-9)  # 0.905
    assert float(plain[501:].sum()) < 0.05


def test_warmup_is_the_default_and_old_stored_configs_keep_it_off(tmp_path):
    assert OptimConfig().ema_warmup is True
    assert load_config(TINY).optim.ema_warmup is True
    stored = config_to_dict(load_config(TINY))
    del stored["optim"]["ema_warmup"]  # a config written before the option existed
    assert config_from_dict(stored).optim.ema_warmup is True  # a new run: the default
    assert config_from_stored(stored).optim.ema_warmup is False  # a stored run: as it was
    assert config_from_json(json.dumps(stored)).optim.ema_warmup is False
    assert "ema_warmup" not in stored["optim"]  # the caller's dict is not modified
    kept = {**stored, "optim": {**stored["optim"], "ema_warmup": True}}
    assert config_from_stored(kept).optim.ema_warmup is True

    # a model file whose stored config lacks the key loads with the warm-up off
    cfg = load_config(TINY)
    tensors = {k: v.contiguous() for k, v in build_net_from_config(cfg).state_dict().items()}
    path = tmp_path / "old.safetensors"
    safetensors.torch.save_file(tensors, str(path), {CONFIG_METADATA_KEY: json.dumps(stored)})
    assert load(path).config.optim.ema_warmup is False

    # and so does a run directory whose config.yaml lacks it (`difflab train --resume RUN_DIR`)
    run = tmp_path / "old_run"
    run.mkdir()
    (run / "config.yaml").write_text(json.dumps(stored))  # JSON is YAML
    assert run_config(run).optim.ema_warmup is False
    assert run_config(run, ["optim.ema_warmup=true"]).optim.ema_warmup is True


@pytest.mark.parametrize("decay", [0.1, 0.5, 0.9, 0.95, 0.98, 0.99, 0.999, 0.9999])
def test_warmup_length_is_where_the_configured_decay_takes_over(decay):
    n = EMA.warmup_length(decay)
    ema = EMA(nn.Linear(1, 1), [decay], warmup=True)
    assert ema.decay_at(decay, n) == decay
    if n > 0:
        assert ema.decay_at(decay, n - 1) < decay
    assert EMA.warmup_length(0.99) == 890 and EMA.warmup_length(0.999) == 8990


def test_decays_above_the_run_length_give_the_same_average():
    """Within the warm-up every decay at or above `(1 + n) / (10 + n)` is the same average: a
    1200-update run's 0.999 and 0.9999 copies are equal, its 0.99 copy is not."""
    steps = 1200
    same = averaged_basis([0.999, 0.9999], steps, warmup=True)
    torch.testing.assert_close(same[0], same[1], rtol=0, atol=0)
    other = averaged_basis([0.99, 0.999], steps, warmup=True)
    assert not torch.allclose(other[0], other[1])
    assert EMA.warmup_length(1200 / 1209) == steps - 1  # the last update's warm-up decay


def test_warmup_length_rejects_decays_outside_the_unit_interval():
    with pytest.raises(ValueError, match="decays must lie in"):
        EMA.warmup_length(1.0)
