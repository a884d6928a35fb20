"""Autograd wrapper of the fused graph-attention Triton kernels: input checks, tables, launches.

Importing this module needs no Triton; the kernels (:mod:`.kernel`) are imported on the first launch.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

import torch

from gsit.attention import graph_attention
from gsit.errors import UnsupportedInput
from gsit.graph import GraphMask

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
MAX_HEAD_DIM = 128
# Dropout offsets are row * N + col in int32 (per batch-head Philox stream).
MAX_DROPOUT_SEQ = 46340
MAX_BATCH_HEADS = 65535  # grid axis 1 limit


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_import_error() -> str | None:
    """``None`` when Triton imports, else the ImportError's text."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception as exc:  # ImportError, or a broken install raising something else
        return f"{type(exc).__name__}: {exc}"
    return None


def _kernels():
    from gsit.attention.triton import kernel

    return kernel


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


# ---------------------------------------------------------------------------------- configuration
@dataclass(frozen=True)
class TileConfig:
    """Tile sizes and launch parameters of the three kernels.

    ``fwd_m`` x ``fwd_n``: query rows x keys per step of the forward; ``dkdv_n`` keys per program and
    ``dkdv_m`` query rows per step of the dK/dV kernel; ``dq_m`` x ``dq_n`` likewise for the dQ kernel.
    """

    fwd_m: int = 64
    fwd_n: int = 64
    fwd_warps: int = 4
    fwd_stages: int = 2
    dkdv_m: int = 64
    dkdv_n: int = 64
    dkdv_warps: int = 4
    dkdv_stages: int = 2
    dq_m: int = 64
    dq_n: int = 64
    dq_warps: int = 4
    dq_stages: int = 2

    def __post_init__(self):
        for name in ("fwd_m", "fwd_n", "dkdv_m", "dkdv_n", "dq_m", "dq_n"):
            val = getattr(self, name)
            if val < 16 or val & (val - 1):
                raise ValueError(f"TileConfig.{name} must be a power of 2 >= 16, got {val}")


def small_tiles(m: int = 16, n: int = 16) -> TileConfig:
    """Uniform small tiles (the CPU interpreter's default; tests use them to force many tiles)."""
    return TileConfig(m, n, 1, 1, m, n, 1, 1, m, n, 1, 1)


INTERPRETER_TILES = small_tiles(16, 16)


LONG_SEGMENT = 1024  # segments at least this long get the taller tiles (see default_config)


def default_config(
    head_dim: int, dtype: torch.dtype, device: torch.device, lengths: tuple[int, ...] = ()
) -> TileConfig:
    """Tiles for the GPU (H100/H200 class); small tiles under the CPU interpreter.

    16-bit inputs use tensor cores with 64-row tiles for MOSI/MOSEI-sized segments (tens to hundreds of
    steps: taller tiles would mostly hold padding and leave SMs idle).  When the longest segment has
    ``LONG_SEGMENT`` or more steps, taller query tiles (and 128-key tiles in dK/dV) win, as chosen by
    ``benchmarks/bench_kernel.py --sweep`` (measurements: benchmarks/results/experiments/README.md).  fp32
    inputs use IEEE fp32 products (no tensor cores), which need small tiles to stay in registers.
    """
    if device.type != "cuda" or interpret_mode():
        return INTERPRETER_TILES
    if dtype == torch.float32:
        w = 4 if head_dim <= 64 else 8
        return TileConfig(32, 32, w, 2, 32, 32, w, 2, 32, 32, w, 2)
    long = bool(lengths) and max(lengths) >= LONG_SEGMENT
    if head_dim <= 32:
        if long:
            return TileConfig(128, 64, 4, 4, 32, 128, 4, 3, 128, 32, 4, 3)
        return TileConfig(64, 64, 4, 3, 64, 64, 4, 2, 64, 64, 4, 2)
    if head_dim <= 64:
        if long:
            return TileConfig(64, 128, 4, 3, 32, 128, 4, 2, 64, 64, 4, 3)
        return TileConfig(64, 64, 4, 3, 64, 64, 4, 2, 64, 64, 4, 2)
    return TileConfig(64, 64, 4, 2, 32, 64, 8, 2, 64, 64, 8, 2)


# ------------------------------------------------------------------------------------------- tables
def _links(key_sets: tuple[tuple[int, ...], ...], lengths: tuple[int, ...], reverse: bool) -> list[list[int]]:
    """Per segment: the key segments it reads (or, ``reverse``, the query segments reading it), both
    sides non-empty."""
    m = len(lengths)
    links: list[list[int]] = [[] for _ in range(m)]
    for i, keys in enumerate(key_sets):
        for j in keys:
            if lengths[i] > 0 and lengths[j] > 0:
                if reverse:
                    links[j].append(i)
                else:
                    links[i].append(j)
    return links


@functools.lru_cache(maxsize=512)
def meta_table(
    key_sets: tuple[tuple[int, ...], ...], lengths: tuple[int, ...], block: int, reverse: bool, device: str
) -> tuple[torch.Tensor, int]:
    """The packed int32 table of one kernel launch (layout in :mod:`.kernel`) and its number of tiles."""
    m = len(lengths)
    starts = [sum(lengths[:i]) for i in range(m)]
    links = _links(key_sets, lengths, reverse)
    flat = [0] * (m * m)
    for i, row in enumerate(links):
        flat[i * m : i * m + len(row)] = row
    tile_mod = [i for i, n in enumerate(lengths) for _ in range(0, n, block)]
    tile_start = [starts[i] + t for i, n in enumerate(lengths) for t in range(0, n, block)]
    table = starts + list(lengths) + [len(r) for r in links] + flat + tile_mod + tile_start
    return torch.tensor(table, dtype=torch.int32, device=device), len(tile_mod)


@functools.lru_cache(maxsize=256)
def _full_lengths(lengths: tuple[int, ...], batch: int, device: str) -> torch.Tensor:
    table = torch.tensor([list(lengths)] * batch, dtype=torch.int32, device=device)
    return table.reshape(batch, len(lengths))


# --------------------------------------------------------------------------------------- launches
def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs are multiplied in full fp32 (as torch does by default); tf32 would cost ~1e-3 accuracy
    return "ieee" if dtype == torch.float32 else "tf32"


@dataclass
class _Launch:
    """Everything both passes need (no tensor that requires grad)."""

    key_sets: tuple[tuple[int, ...], ...]
    lengths: tuple[int, ...]
    vl: torch.Tensor
    scale: float
    dropout_p: float
    seed: torch.Tensor | None  # (1,) int64 on the device: the Philox seed of the dropout mask
    cfg: TileConfig


def _seed_arg(ln: _Launch, dummy: torch.Tensor) -> torch.Tensor:
    """The seed pointer (any tensor when there is no dropout: the kernels never read it then)."""
    if ln.dropout_p > 0.0:
        if ln.seed is None:
            raise ValueError("attention dropout needs a seed tensor")
        return ln.seed
    return dummy


def _consts(q, v, ln: _Launch, block_m: int, block_n: int, warps: int, stages: int) -> dict:
    D, DV = q.shape[-1], v.shape[-1]
    return dict(
        HEAD_D=D,
        HEAD_DV=DV,
        BLOCK_D=_pow2(D),
        BLOCK_DV=_pow2(DV),
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        DROPOUT=ln.dropout_p > 0.0,
        DOT_PREC=_dot_precision(q.dtype),
        num_warps=warps,
        num_stages=stages,
    )


def _forward(q, k, v, ln: _Launch):
    kern = _kernels()
    B, H, N, _ = q.shape
    o = torch.empty(B, H, N, v.shape[-1], device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    cfg = ln.cfg
    meta, tiles = meta_table(ln.key_sets, ln.lengths, cfg.fwd_m, False, str(q.device))
    if tiles == 0 or B * H == 0:
        return o, lse
    kern._fwd_kernel[(tiles, B * H)](
        q,
        k,
        v,
        o,
        lse,
        meta,
        ln.vl,
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        H,
        N,
        len(ln.lengths),
        ln.scale * kern.LOG2E,
        ln.dropout_p,
        _seed_arg(ln, lse),
        **_consts(q, v, ln, cfg.fwd_m, cfg.fwd_n, cfg.fwd_warps, cfg.fwd_stages),
    )
    return o, lse


def _backward(q, k, v, o, lse, do, ln: _Launch):
    kern = _kernels()
    B, H, N, _ = q.shape
    cfg = ln.cfg
    dq = torch.empty(q.shape, device=q.device, dtype=q.dtype)
    dk = torch.empty(k.shape, device=k.device, dtype=k.dtype)
    dv = torch.empty(v.shape, device=v.device, dtype=v.dtype)
    if N == 0 or B * H == 0:
        return dq, dk, dv
    do = do.contiguous()
    delta = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    strides = (
        q.stride(0),
        q.stride(1),
        q.stride(2),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
    )
    scalars = (H, N, len(ln.lengths), ln.scale * kern.LOG2E, ln.dropout_p, _seed_arg(ln, delta))
    dev = str(q.device)
    # dQ first: it also writes delta = rowsum(dO * O), which the dK/dV kernel reads
    meta, tiles = meta_table(ln.key_sets, ln.lengths, cfg.dq_m, False, dev)
    kern._bwd_dq_kernel[(tiles, B * H)](
        q,
        k,
        v,
        o,
        do,
        lse,
        delta,
        dq,
        meta,
        ln.vl,
        *strides,
        *scalars,
        **_consts(q, v, ln, cfg.dq_m, cfg.dq_n, cfg.dq_warps, cfg.dq_stages),
    )
    meta, tiles = meta_table(ln.key_sets, ln.lengths, cfg.dkdv_n, True, dev)
    kern._bwd_dkdv_kernel[(tiles, B * H)](
        q,
        k,
        v,
        do,
        lse,
        delta,
        dk,
        dv,
        meta,
        ln.vl,
        *strides,
        *scalars,
        **_consts(q, v, ln, cfg.dkdv_m, cfg.dkdv_n, cfg.dkdv_warps, cfg.dkdv_stages),
    )
    return dq, dk, dv


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


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
