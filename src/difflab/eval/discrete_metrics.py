"""Sample metrics for token models: unigram entropy (the collapse check), generative perplexity
under a reference language model, and the gradient-moment distance of D-MMD.

**Gradient moment.** With a reference model `p_theta` and `g(x) = grad_theta (-log p_theta(x) /
L)` (the gradient of its per-token loss on one sequence), the distance of a sample set `Q` to
the data `P` is

    GM(Q, P) = || E_Q[g(x)] - E_P[g(x)] ||^2,

zero when the two agree in every direction the reference model's parameters can see (for a
reference model trained to convergence `E_P[g] ~ 0`, so it measures how strongly the samples
would push the model's parameters). It is estimated without bias from `m` disjoint chunks: with
`d_i` the mean gradient on sample chunk `i` minus the mean gradient on data chunk `i`, the `d_i`
are independent, so `E[d_i . d_j] = GM` for `i != j` and

    GM_hat = ( ||sum_i d_i||^2 - sum_i ||d_i||^2 ) / (m (m - 1))

is unbiased (it can be negative when `GM` is below its noise). Its standard error comes from the
spread of the pair products.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn


def unigram_distribution(tokens: Tensor, vocab_size: int) -> Tensor:
    """The frequency of each token value in `tokens` (all positions pooled), float64 `[V]`."""
    if tokens.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"tokens must be an integer tensor, got dtype {tokens.dtype}")
    flat = tokens.flatten().long()
    if flat.numel() == 0:
        raise ValueError("tokens is empty")
    if int(flat.min()) < 0 or int(flat.max()) >= vocab_size:
        raise ValueError(
            f"tokens has values in [{int(flat.min())}, {int(flat.max())}], outside "
            f"[0, {vocab_size - 1}]"
        )
    counts = torch.bincount(flat.cpu(), minlength=vocab_size).double()
    return counts / counts.sum()


def entropy(probs: Tensor) -> float:
    """`-sum p log p` in nats (`0 log 0 = 0`)."""
    p = probs.double()
    return float(-(torch.where(p > 0, p * p.log(), torch.zeros_like(p))).sum())


def unigram_entropy(tokens: Tensor, vocab_size: int) -> float:
    """The entropy (nats) of the pooled token frequencies of `tokens`: it falls when a sampler
    collapses onto few tokens (repetition), whatever its perplexity."""
    return entropy(unigram_distribution(tokens, vocab_size))


@torch.no_grad()
def generative_perplexity(
    log_prob: Callable[[Tensor], Tensor], tokens: Tensor, *, batch_size: int = 256
) -> float:
    """`exp` of the mean per-token negative log-likelihood of `tokens [N, L]` under a reference
    model (`log_prob(x) -> [B]`, the log-probability of each whole sequence)."""
    total, count = 0.0, 0
    for first in range(0, len(tokens), batch_size):
        x = tokens[first : first + batch_size]
        total += float(-log_prob(x).double().sum())
        count += x.numel()
    if count == 0:
        raise ValueError("tokens is empty")
    return math.exp(total / count)


def mean_gradient(model: nn.Module, loss: Callable[[Tensor], Tensor], tokens: Tensor) -> Tensor:
    """`grad_theta loss(tokens)` over `model`'s trainable parameters, flattened (float64)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the reference model has no trainable parameters")
    with torch.enable_grad():
        grads = torch.autograd.grad(loss(tokens), params, allow_unused=True)
    flat = [(torch.zeros_like(p) if g is None else g).flatten() for p, g in zip(params, grads)]
    return torch.cat(flat).double()


def gradient_moment(
    model: nn.Module,
    loss: Callable[[Tensor], Tensor],
    samples: Tensor,
    data: Tensor,
    *,
    chunks: int = 8,
) -> tuple[float, float]:
    """`(GM_hat, standard error)` of `samples` against `data` (module docstring) for a reference
    `model` and its mean per-token loss `loss(tokens) -> scalar`; `samples` and `data` are each
    split into `chunks` equal chunks (the remainder is dropped)."""
    if chunks < 2:
        raise ValueError(f"chunks must be >= 2 (independent pairs), got {chunks}")
    size = min(len(samples), len(data)) // chunks
    if size < 1:
        raise ValueError(
            f"{chunks} chunks need at least {chunks} samples and data rows, got "
            f"{len(samples)} and {len(data)}"
        )
    diffs = torch.stack([
        mean_gradient(model, loss, samples[i * size : (i + 1) * size])
        - mean_gradient(model, loss, data[i * size : (i + 1) * size])
        for i in range(chunks)
    ])  # fmt: skip
    gram = diffs @ diffs.T
    pairs = gram[~torch.eye(chunks, dtype=torch.bool)]
    value = float(pairs.mean())
    # the pair products share chunks: the spread over the m chunk means is the honest error
    per_chunk = (gram.sum(1) - gram.diagonal()) / (chunks - 1)
    return value, float(per_chunk.std() / math.sqrt(chunks))
