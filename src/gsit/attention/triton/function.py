"""Autograd wrapper of the fused graph-attention Triton kernels: input checks, the custom operators
(torch.compile) and the eager autograd route over the launches of :mod:`.launch`, the public entry.

Importing this module needs no Triton; the kernels (:mod:`.kernel`) are imported on the first launch.
"""

from __future__ import annotations

import sys

import torch

from gsit.attention import graph_attention
from gsit.attention.triton.launch import (  # noqa: F401 (TileConfig, small_tiles, ... re-exported)
    INTERPRETER_TILES,
    LONG_SEGMENT,
    TileConfig,
    _backward,
    _forward,
    _full_lengths,
    _kernels,
    _Launch,
    _unit_last,
    default_config,
    interpret_mode,
    meta_table,
    small_tiles,
    triton_cdiv,
)
from gsit.errors import UnsupportedInput
from gsit.graph import GraphMask

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
# Dropout offsets are row * N + col in int32 (per batch-head Philox stream).
MAX_DROPOUT_SEQ = 46340
MAX_BATCH_HEADS = 65535  # grid axis 1 limit


def triton_import_error() -> str | None:
    """``None`` when Triton imports, else the ImportError's text."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def check_inputs(q, k, v, mask: GraphMask, *, dropout_p: float) -> list[str]:
    """Every reason the fused kernel cannot run these inputs (empty: it can)."""
    reasons = []
    err = triton_import_error()
    if err is not None:
        reasons.append(f"triton is not importable ({err})")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return reasons + ["q, k, v must be 4-D (B, H, N, D)"]
    devices = {q.device, k.device, v.device}
    if len(devices) != 1:
        reasons.append(f"q, k, v are on different devices: {q.device}, {k.device}, {v.device}")
    if q.device.type != "cuda":
        if not interpret_mode():
            reasons.append(
                f"tensors are on {q.device.type}; the triton backend needs CUDA tensors "
                f"(or TRITON_INTERPRET=1 for Triton's CPU interpreter, slow, for tests)"
            )
        elif err is None and "gsit.attention.triton.kernel" in sys.modules and not _kernels().INTERPRET:
            reasons.append(
                "TRITON_INTERPRET=1 was set after the triton kernels were compiled for the GPU; "
                "set it before gsit.attention.triton runs its first launch"
            )
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in SUPPORTED_DTYPES:
            reasons.append(f"{name} dtype {t.dtype} is not supported (float16, bfloat16, float32)")
    if q.dtype == torch.bfloat16:
        if interpret_mode():
            reasons.append(
                "bfloat16 is not supported under TRITON_INTERPRET=1 (the interpreter's tl.dot "
                "gives wrong bfloat16 products); use float16/float32 there, bfloat16 on the GPU"
            )
        elif q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 0):
            reasons.append("bfloat16 needs a GPU of compute capability 8.0 or newer")
    d, dv = q.shape[-1], v.shape[-1]
    if not 1 <= d <= MAX_HEAD_DIM or not 1 <= dv <= MAX_HEAD_DIM:
        reasons.append(
            f"head dims (q/k {d}, v {dv}) must be in 1..{MAX_HEAD_DIM} "
            f"(non-powers of 2 are padded inside the kernel)"
        )
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        reasons.append(f"B * H = {q.shape[0] * q.shape[1]} exceeds {MAX_BATCH_HEADS} (grid limit)")
    if not 0.0 <= dropout_p < 1.0:
        reasons.append(f"dropout_p must be in [0, 1), got {dropout_p}")
    elif dropout_p > 0.0 and q.shape[2] > MAX_DROPOUT_SEQ:
        reasons.append(
            f"attention dropout needs N <= {MAX_DROPOUT_SEQ} (int32 Philox offsets), got {q.shape[2]}"
        )
    return reasons


# ------------------------------------------------------------------ custom operators (torch.compile)
# The launches are registered as two torch.library custom operators, with autograd attached to the
# forward one.  Dynamo and Inductor treat them as opaque nodes (shapes from the fake implementations),
# so a model using the triton backend compiles as ONE graph -- no graph break around attention -- and
# Inductor fuses the LayerNorms, bias adds, GELUs and residuals around it.  Eager calls go through the
# same operators (one dispatcher hop per call).  Non-tensor arguments are plain ints/floats: the graph
# as a flat 0/1 adjacency (M*M), the segment lengths and the 12 tile parameters.


def _pack(ln: _Launch) -> tuple[list[int], list[int], list[int]]:
    m = len(ln.lengths)
    adj = [0] * (m * m)
    for i, keys in enumerate(ln.key_sets):
        for j in keys:
            adj[i * m + j] = 1
    c = ln.cfg
    tiles = [
        c.fwd_m,
        c.fwd_n,
        c.fwd_warps,
        c.fwd_stages,
        c.dkdv_m,
        c.dkdv_n,
        c.dkdv_warps,
        c.dkdv_stages,
        c.dq_m,
        c.dq_n,
        c.dq_warps,
        c.dq_stages,
    ]
    return adj, list(ln.lengths), tiles


def _key_sets(adj: list[int], m: int) -> tuple[tuple[int, ...], ...]:
    """The inverse of :func:`_pack`'s flat 0/1 adjacency: the key segments of each query segment."""
    return tuple(tuple(j for j in range(m) if adj[i * m + j]) for i in range(m))


def _unpack(q, vl, adj, lengths, scale, dropout_p, seed, tiles) -> _Launch:  # noqa: PLR0913
    lengths = tuple(int(n) for n in lengths)
    if vl is None:
        vl = _full_lengths(lengths, q.shape[0], str(q.device))
    return _Launch(
        _key_sets(adj, len(lengths)), lengths, vl, float(scale), float(dropout_p), seed, TileConfig(*tiles)
    )


@torch.library.custom_op("gsit::graph_attention_fwd", mutates_args=())
def _fwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    vl: torch.Tensor | None,
    adj: list[int],
    lengths: list[int],
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    tiles: list[int],
) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(
        _unit_last(q),
        _unit_last(k),
        _unit_last(v),
        _unpack(q, vl, adj, lengths, scale, dropout_p, seed, tiles),
    )


def _warm_tables(q, adj, lengths, tiles) -> None:
    """Build (and cache) the device tables of every launch of this shape with real tensors.

    Called from the fake implementation, i.e. when torch.compile traces the model: the cached tables
    are then allocated outside any CUDA-graph memory pool, so ``mode="reduce-overhead"`` (CUDA graph
    trees) never sees a long-lived allocation made inside its pool."""
    if q.device.type != "cuda":
        return
    from torch._subclasses.fake_tensor import unset_fake_temporarily

    lengths = tuple(int(n) for n in lengths)
    key_sets = _key_sets(adj, len(lengths))
    cfg = TileConfig(*tiles)
    dev = str(q.device)
    with unset_fake_temporarily():
        meta_table(key_sets, lengths, cfg.fwd_m, False, dev)
        meta_table(key_sets, lengths, cfg.dq_m, False, dev)
        meta_table(key_sets, lengths, cfg.dkdv_n, True, dev)
        if isinstance(q.shape[0], int):  # a symbolic (dynamic) batch size: built at the first real call
            _full_lengths(lengths, q.shape[0], dev)


@_fwd_op.register_fake
def _(q, k, v, vl, adj, lengths, scale, dropout_p, seed, tiles):
    _warm_tables(q, adj, lengths, tiles)
    B, H, N, _ = q.shape
    return q.new_empty(B, H, N, v.shape[-1]), q.new_empty(B, H, N, dtype=torch.float32)


@torch.library.custom_op("gsit::graph_attention_bwd", mutates_args=())
def _bwd_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    lse: torch.Tensor,
    do: torch.Tensor,
    vl: torch.Tensor | None,
    adj: list[int],
    lengths: list[int],
    scale: float,
    dropout_p: float,
    seed: torch.Tensor | None,
    tiles: list[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(
        _unit_last(q),
        _unit_last(k),
        _unit_last(v),
        o.contiguous(),
        lse.contiguous(),
        do,
        _unpack(q, vl, adj, lengths, scale, dropout_p, seed, tiles),
    )


@_bwd_op.register_fake
def _(q, k, v, o, lse, do, vl, adj, lengths, scale, dropout_p, seed, tiles):
    return (
        torch.empty(q.shape, dtype=q.dtype, device=q.device),
        torch.empty(k.shape, dtype=k.dtype, device=k.device),
        torch.empty(v.shape, dtype=v.dtype, device=v.device),
    )


def _setup_context(ctx, inputs, output):
    q, k, v, vl, adj, lengths, scale, dropout_p, seed, tiles = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse, vl, seed)
    ctx.args = (adj, lengths, scale, dropout_p, tiles)
    ctx.mark_non_differentiable(lse)


def _autograd_backward(ctx, do, dlse):
    q, k, v, o, lse, vl, seed = ctx.saved_tensors
    adj, lengths, scale, dropout_p, tiles = ctx.args
    dq, dk, dv = _bwd_op(q, k, v, o, lse, do, vl, adj, lengths, scale, dropout_p, seed, tiles)
    return dq, dk, dv, None, None, None, None, None, None, None


_fwd_op.register_autograd(_autograd_backward, setup_context=_setup_context)


class _EagerFunction(torch.autograd.Function):
    """The same launches without the custom-operator layer, for eager calls.

    Why two autograd routes: the custom operators above are what torch.compile needs (one graph, no
    break); eagerly, the operator's Python dispatch (schema checks, argument packing) costs tens of
    microseconds per call, which a host-bound eager training step pays 24 times (forward and backward of
    12 attention calls).  Both routes run the same kernels on the same tables; tests/attention/test_triton.py
    checks that they agree (``test_compiled_fusion_is_one_graph_and_matches_eager``,
    ``test_eager_and_custom_op_routes_agree``)."""

    @staticmethod
    def forward(ctx, q, k, v, ln):
        o, lse = _forward(q, k, v, ln)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.ln = ln
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        return (*_backward(q, k, v, o, lse, do, ctx.ln), None)


def _graph_attention_op(q, k, v, vl, ln: _Launch) -> torch.Tensor:
    """Under torch.compile: the custom operators (one graph).  Eagerly: the autograd.Function (same
    kernels, same tables, same numbers; tested equal)."""
    if torch.compiler.is_compiling():
        adj, lengths, tiles = _pack(ln)
        out, _ = _fwd_op(q, k, v, vl, adj, lengths, ln.scale, ln.dropout_p, ln.seed, tiles)
        return out
    if vl is None:
        vl = _full_lengths(ln.lengths, q.shape[0], str(q.device))
    ln = _Launch(ln.key_sets, ln.lengths, vl, ln.scale, ln.dropout_p, ln.seed, ln.cfg)
    return _EagerFunction.apply(_unit_last(q), _unit_last(k), _unit_last(v), ln)


def _seed_tensor(seed, device) -> torch.Tensor:
    if isinstance(seed, torch.Tensor):
        if seed.numel() != 1 or seed.dtype not in (torch.int32, torch.int64):
            raise ValueError(
                f"seed tensor must hold one int32/int64 value, got {seed.dtype} {tuple(seed.shape)}"
            )
        return seed.reshape(1).to(device=device, dtype=torch.int64)
    return torch.tensor([int(seed) & 0x7FFFFFFF], dtype=torch.int64, device=device)


def _valid_lengths(mask: GraphMask, lengths: tuple[int, ...], q_device: torch.device) -> torch.Tensor | None:
    """(B, M) int32 valid lengths clamped to [0, segment length], or None without padding.  Written with
    tensor ops only (no caches, no host copies) so it traces under torch.compile and CUDA graphs."""
    if mask.valid_lengths is None:
        return None
    # lengths given on the CPU for CUDA q are moved (the kernels read them through a device pointer)
    vl = mask.valid_lengths.to(device=q_device, dtype=torch.int32)
    return torch.stack([vl[:, i].clamp(0, n) for i, n in enumerate(lengths)], dim=1)  # Python-int bounds


def apply_unchecked(
    q,
    k,
    v,
    mask: GraphMask,
    *,
    scale: float,
    dropout_p: float,
    seed: int | torch.Tensor | None = None,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """Launch without re-checking (the registry's ``graph_attention`` has already run ``check``)."""
    if not scale > 0.0:  # the forward kernel takes the row max of the raw logits, then scales it
        raise UnsupportedInput(f"triton attention needs a positive scale, got {scale}")
    seed_t = None
    if dropout_p > 0.0:
        # drawn on the device from torch's generator: reproducible under torch.manual_seed, and a fresh
        # draw per call even inside a compiled graph or a CUDA-graph replay
        seed_t = (
            torch.randint(0, 2**31 - 1, (1,), device=q.device, dtype=torch.int64)
            if seed is None
            else _seed_tensor(seed, q.device)
        )
    lengths = tuple(int(n) for n in mask.layout.lengths)
    cfg = (
        config
        if config is not None
        else default_config(max(q.shape[-1], v.shape[-1]), q.dtype, q.device, lengths)
    )
    ln = _Launch(mask.graph.key_sets, lengths, None, float(scale), float(dropout_p), seed_t, cfg)
    return _graph_attention_op(q, k, v, _valid_lengths(mask, ln.lengths, q.device), ln)


def fused_graph_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: GraphMask,
    *,
    scale: float | None = None,
    dropout_p: float = 0.0,
    seed: int | torch.Tensor | None = None,
    config: TileConfig | None = None,
) -> torch.Tensor:
    """Kept for callers of the earlier name: exactly ``graph_attention(..., backend="triton", seed=seed,
    config=config)`` (the registry's checks, then the launch); see the package docstring."""
    return graph_attention(
        q, k, v, mask, backend="triton", scale=scale, dropout_p=dropout_p, seed=seed, config=config
    )


def dropout_keep_mask(batch_heads: int, n: int, dropout_p: float, seed: int, device) -> torch.Tensor:
    """(batch_heads, N, N) bool: the dropout keep mask the kernels apply for ``seed`` (for tests)."""
    kern = _kernels()
    out = torch.empty(batch_heads, n, n, dtype=torch.int8, device=device)
    block = 16
    kern._dropout_keep_kernel[(triton_cdiv(n, block), triton_cdiv(n, block), batch_heads)](
        out, n, float(dropout_p), _seed_tensor(seed, out.device), BLOCK=block
    )
    return out.bool()


__all__ = [
    "TileConfig",
    "check_inputs",
    "fused_graph_attention",
    "dropout_keep_mask",
    "default_config",
    "INTERPRETER_TILES",
]
