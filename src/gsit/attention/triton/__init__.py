"""The ``triton`` backend: one fused Triton kernel over every allowed (query block, key block) pair.

Usage: through the one public entry, the registry's :func:`gsit.attention.graph_attention`::

    out = graph_attention(q, k, v, mask, backend="triton", scale=None, dropout_p=0.0)
    out = graph_attention(q, k, v, mask, backend="triton", dropout_p=0.1, seed=7, config=small_tiles())

The two options: ``seed``, the Philox seed of the dropout mask (an int or a one-element integer tensor;
default: drawn on q's device from torch's generator, so ``torch.manual_seed`` makes runs reproducible), and
``config``, the tile sizes (:class:`.function.TileConfig`; default per head dim, dtype and lengths).

Shapes: ``q, k`` (B, H, N, D), ``v`` (B, H, N, Dv), ``N = mask.total`` (segments in
``mask.layout.modalities`` order); returns (B, H, N, Dv) in q's dtype.  Any strides with unit stride on
the last dimension are used as they are (others are made contiguous).

Semantics (identical to the ``reference`` backend):

* query segment i attends, under ONE softmax, to the union of the key segments in
  ``mask.graph.key_sets[i]``; logits are ``scale * q.k`` and the softmax is computed in fp32 with fp32
  accumulation (inputs float16, bfloat16 or float32; fp32 inputs use IEEE fp32 products, not TF32);
* with ``mask.valid_lengths`` (B, M), only the first ``valid_lengths[b, m]`` positions of segment m are
  real (values are clamped to [0, segment length]): padded keys are never read, padded query rows
  output exactly 0 and receive exactly 0 gradient; key tiles wholly past the valid length are skipped,
  so the cost follows the real tokens;
* a query row with no allowed key (its segment reads nothing, or every key segment it reads has valid
  length 0) outputs exactly 0 with zero, finite gradients; keys nobody reads get zero gradients;
* ``dropout_p`` in [0, 1) drops attention probabilities with an in-kernel Philox mask (scaled by
  1/(1-p)); the backward regenerates the same mask.  The seed is drawn from torch's CPU generator,
  so ``torch.manual_seed`` makes it reproducible (it is not the same random stream as ``F.dropout``).
  The draw happens on the device, so a compiled or CUDA-graph-captured step gets a fresh mask per replay.

Limits (``check`` reports them): CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1`` (Triton's
interpreter, for tests: it must be set before the first launch); head dims 1..128 (non-powers of two
are padded to the next power of two inside the kernel, masked); B * H <= 65535; with dropout,
N <= 46340; ``scale`` > 0 (refused otherwise, at launch: the forward kernel scales the row maximum of
the raw logits).  Backward is deterministic (no atomics).  Kernel design: :mod:`.kernel`; launch tables
and tile sizes: :mod:`.launch`.  Layers: :mod:`.kernel` (jit kernels only) -> :mod:`.launch` (tables,
launches) -> :mod:`.function` (checks, the autograd routes) -> this module's ``check`` / ``attention``,
called by the registry.
"""

from __future__ import annotations

import torch

from gsit.attention.triton.function import TileConfig, apply_unchecked, check_inputs, fused_graph_attention
from gsit.graph import GraphMask

OPTIONS = ("seed", "config")  # keyword options graph_attention passes through to attention()


def check(q, k, v, mask: GraphMask, *, dropout_p: float) -> list[str]:
    """Every reason this backend cannot run the input (empty list: it can)."""
    return check_inputs(q, k, v, mask, dropout_p=dropout_p)


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: GraphMask,
    *,
    scale: float,
    dropout_p: float,
    seed: int | torch.Tensor | None = None,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """Graph-masked attention of (B, H, N, D) ``q`` over ``k``, (B, H, N, Dv) ``v``: returns (B, H, N, Dv).

    Differentiable in q, k, v.  Called by the registry after ``check``; see the module docstring for the
    exact semantics, limits and the two options.
    """
    return apply_unchecked(q, k, v, mask, scale=scale, dropout_p=dropout_p, seed=seed, config=config)


__all__ = ["OPTIONS", "check", "attention", "fused_graph_attention"]
