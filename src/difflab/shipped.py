"""The models packaged with difflab, by name (no torch import: the CLI parsers read it).

Each lives in `difflab/assets/<name>.safetensors` with its provenance (command, steps, wall
time, machine, scores) in `<name>.json`. Every command and `api.load` that takes a model path
also takes one of these names: `difflab sample fashion_mnist_uvit`, `api.load("mnist_uvit")`.
"""

from __future__ import annotations

from pathlib import Path

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_MODELS = {
    "mnist_uvit": "class-conditional U-ViT on MNIST 28x28 (what `difflab demo` samples)",
    "fashion_mnist_uvit": "class-conditional U-ViT on Fashion-MNIST 28x28",
}


def shipped_model_path(name: str = "mnist_uvit") -> Path:
    """The exported file of the shipped model `name` (a key of `SHIPPED_MODELS`)."""
    if name not in SHIPPED_MODELS:
        raise ValueError(f"no shipped model {name!r}; shipped: {', '.join(SHIPPED_MODELS)}")
    return ASSETS / f"{name}.safetensors"


def resolve_model_path(path: str | Path) -> Path:
    """`path` itself when it exists, else the shipped model of that name (`mnist_uvit`, ...)."""
    if not Path(path).exists() and str(path) in SHIPPED_MODELS:
        return shipped_model_path(str(path))
    return Path(path)
