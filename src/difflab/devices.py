"""One rule for choosing the compute device of a command: `--device auto|cpu|cuda|cuda:N|mps`.

`auto` takes the first CUDA device when there is one, else the CPU. Asking for a device that is
not there is an error naming the option, never a silent fall-back to the CPU.
"""

from __future__ import annotations

import torch

DEVICE_HELP = "auto (CUDA if available, else CPU), cpu, cuda, cuda:N or mps"


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """`"auto"` -> `cuda` if available else `cpu`; any other name is checked to exist."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {name!r}; use {DEVICE_HELP}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name}: no CUDA device is available here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) are visible"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: MPS is not available here")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device: unsupported device type {device.type!r}; use {DEVICE_HELP}")
    return device
