"""Autograd wrapper of the fused graph-attention Triton kernels: input checks, tables, launches.

Importing this module needs no Triton; the kernels (:mod:`.kernel`) are imported on the first launch.
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass

import torch

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
            reasons.append(f"tensors are on {q.device.type}; the triton backend needs CUDA tensors "
                           f"(or TRITON_INTERPRET=1 for Triton's CPU interpreter, slow, for tests)")
        elif err is None and "gsit.attention.triton.kernel" in sys.modules and not _kernels().INTERPRET:
            reasons.append("TRITON_INTERPRET=1 was set after the triton kernels were compiled for the GPU; "
                           "set it before gsit.attention.triton runs its first launch")
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dtype not in SUPPORTED_DTYPES:
            reasons.append(f"{name} dtype {t.dtype} is not supported (float16, bfloat16, float32)")
    if q.dtype == torch.bfloat16:
        if interpret_mode():
            reasons.append("bfloat16 is not supported under TRITON_INTERPRET=1 (the interpreter's tl.dot "
                           "gives wrong bfloat16 products); use float16/float32 there, bfloat16 on the GPU")
        elif q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 0):
            reasons.append("bfloat16 needs a GPU of compute capability 8.0 or newer")
    d, dv = q.shape[-1], v.shape[-1]
    if not 1 <= d <= MAX_HEAD_DIM or not 1 <= dv <= MAX_HEAD_DIM:
        reasons.append(f"head dims (q/k {d}, v {dv}) must be in 1..{MAX_HEAD_DIM} "
                       f"(non-powers of 2 are padded inside the kernel)")
    if q.shape[0] * q.shape[1] > MAX_BATCH_HEADS:
        reasons.append(f"B * H = {q.shape[0] * q.shape[1]} exceeds {MAX_BATCH_HEADS} (grid limit)")
    if not 0.0 <= dropout_p < 1.0:
        reasons.append(f"dropout_p must be in [0, 1), got {dropout_p}")
    elif dropout_p > 0.0 and q.shape[2] > MAX_DROPOUT_SEQ:
        reasons.append(f"attention dropout needs N <= {MAX_DROPOUT_SEQ} (int32 Philox offsets), "
                       f"got {q.shape[2]}")
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


def default_config(head_dim: int, dtype: torch.dtype, device: torch.device) -> TileConfig:
    """Tiles for the GPU (H100/H200 class; chosen from ptxas register/spill counts for sm_90, no
    autotuning); small tiles under the CPU interpreter.

    16-bit inputs use tensor cores (wgmma) with 64-row tiles: real GsiT segments are short (tens of real
    tokens), so taller tiles would mostly hold padding.  fp32 inputs use IEEE fp32 products (no tensor
    cores), which need small tiles to stay in registers.
    """
    if device.type != "cuda" or interpret_mode():
        return INTERPRETER_TILES
    if dtype == torch.float32:
        w = 4 if head_dim <= 64 else 8
        return TileConfig(32, 32, w, 2, 32, 32, w, 2, 32, 32, w, 2)
    if head_dim <= 64:
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
def meta_table(key_sets: tuple[tuple[int, ...], ...], lengths: tuple[int, ...], block: int, reverse: bool,
               device: str) -> tuple[torch.Tensor, int]:
    """The packed int32 table of one kernel launch (layout in :mod:`.kernel`) and its number of tiles."""
    m = len(lengths)
    starts = [sum(lengths[:i]) for i in range(m)]
    links = _links(key_sets, lengths, reverse)
    flat = [0] * (m * m)
    for i, row in enumerate(links):
        flat[i * m:i * m + len(row)] = row
    tile_mod = [i for i, n in enumerate(lengths) for _ in range(0, n, block)]
    tile_start = [starts[i] + t for i, n in enumerate(lengths) for t in range(0, n, block)]
    table = starts + list(lengths) + [len(r) for r in links] + flat + tile_mod + tile_start
    return torch.tensor(table, dtype=torch.int32, device=device), len(tile_mod)


@functools.lru_cache(maxsize=256)
def _full_lengths(lengths: tuple[int, ...], batch: int, device: str) -> torch.Tensor:
    table = torch.tensor([list(lengths)] * batch, dtype=torch.int32, device=device)
    return table.reshape(batch, len(lengths))


def valid_length_table(mask: GraphMask, batch: int, device: torch.device) -> torch.Tensor:
    """(B, M) int32 contiguous: per (sample, segment) valid lengths clamped to [0, segment length]
    (the full lengths without padding).  Cached on the mask (GraphMask's private cache) per device."""
    lengths = tuple(int(n) for n in mask.layout.lengths)
    if mask.valid_lengths is None:
        return _full_lengths(lengths, batch, str(device))
    key = ("triton_valid_lengths", str(device))
    vl = mask._cache.get(key)
    if vl is None:
        vl = mask.valid_lengths.to(device=device, dtype=torch.int32)
        vl = torch.minimum(vl.clamp_min(0), mask.layout.lengths_tensor(device).to(torch.int32)[None])
        vl = vl.contiguous()
        mask._cache[key] = vl
    return vl


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
    seed: int
    cfg: TileConfig


def _consts(q, v, ln: _Launch, block_m: int, block_n: int, warps: int, stages: int) -> dict:
    D, DV = q.shape[-1], v.shape[-1]
    return dict(HEAD_D=D, HEAD_DV=DV, BLOCK_D=_pow2(D), BLOCK_DV=_pow2(DV), BLOCK_M=block_m, BLOCK_N=block_n,
                DROPOUT=ln.dropout_p > 0.0, DOT_PREC=_dot_precision(q.dtype),
                num_warps=warps, num_stages=stages)


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
        q, k, v, o, lse, meta, ln.vl,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        H, N, len(ln.lengths), ln.scale * kern.LOG2E, ln.dropout_p, ln.seed,
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
    strides = (q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
               v.stride(0), v.stride(1), v.stride(2))
    scalars = (H, N, len(ln.lengths), ln.scale * kern.LOG2E, ln.dropout_p, ln.seed)
    dev = str(q.device)
    # dQ first: it also writes delta = rowsum(dO * O), which the dK/dV kernel reads
    meta, tiles = meta_table(ln.key_sets, ln.lengths, cfg.dq_m, False, dev)
    kern._bwd_dq_kernel[(tiles, B * H)](
        q, k, v, o, do, lse, delta, dq, meta, ln.vl, *strides, *scalars,
        **_consts(q, v, ln, cfg.dq_m, cfg.dq_n, cfg.dq_warps, cfg.dq_stages),
    )
    meta, tiles = meta_table(ln.key_sets, ln.lengths, cfg.dkdv_n, True, dev)
    kern._bwd_dkdv_kernel[(tiles, B * H)](
        q, k, v, do, lse, delta, dk, dv, meta, ln.vl, *strides, *scalars,
        **_consts(q, v, ln, cfg.dkdv_m, cfg.dkdv_n, cfg.dkdv_warps, cfg.dkdv_stages),
    )
    return dq, dk, dv


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


class GraphAttentionFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, ln: _Launch):
        o, lse = _forward(q, k, v, ln)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.ln = ln
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward(q, k, v, o, lse, do, ctx.ln)
        return dq, dk, dv, None


def _shape_reasons(q, k, v, mask: GraphMask) -> list[str]:
    reasons = []
    if q.shape[2] != mask.total:
        reasons.append(f"sequence length {q.shape[2]} != layout total {mask.total}")
    if q.shape[:3] != k.shape[:3] or q.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        reasons.append(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        reasons.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if mask.valid_lengths is not None and mask.valid_lengths.shape[0] != q.shape[0]:
        reasons.append(f"valid_lengths batch {mask.valid_lengths.shape[0]} != q batch {q.shape[0]}")
    return reasons


def apply_unchecked(q, k, v, mask: GraphMask, *, scale: float, dropout_p: float, seed: int | None = None,
                    config: TileConfig | None = None) -> torch.Tensor:
    """Launch without re-checking (the registry's ``graph_attention`` has already run ``check``)."""
    if dropout_p > 0.0 and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    cfg = config if config is not None else default_config(max(q.shape[-1], v.shape[-1]), q.dtype, q.device)
    ln = _Launch(mask.graph.key_sets, tuple(int(n) for n in mask.layout.lengths),
                 valid_length_table(mask, q.shape[0], q.device), float(scale), float(dropout_p),
                 int(seed or 0) & 0x7FFFFFFF, cfg)
    return GraphAttentionFunction.apply(_unit_last(q), _unit_last(k), _unit_last(v), ln)


def fused_graph_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: GraphMask, *,
                          scale: float | None = None, dropout_p: float = 0.0, seed: int | None = None,
                          config: TileConfig | None = None) -> torch.Tensor:
    """The fused kernel with its knobs exposed (tile sizes, dropout seed); see the package docstring.

    ``seed``: Philox seed of the dropout mask (default: drawn from torch's CPU generator, so
    ``torch.manual_seed`` makes runs reproducible).  ``config``: tile sizes (default per head dim/dtype).
    """
    reasons = check_inputs(q, k, v, mask, dropout_p=dropout_p) + _shape_reasons(q, k, v, mask)
    if reasons:
        from gsit.attention import UnsupportedInput
        raise UnsupportedInput("triton attention cannot run this input:\n  - " + "\n  - ".join(reasons))
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return apply_unchecked(q, k, v, mask, scale=scale, dropout_p=dropout_p, seed=seed, config=config)


def dropout_keep_mask(batch_heads: int, n: int, dropout_p: float, seed: int, device) -> torch.Tensor:
    """(batch_heads, N, N) bool: the dropout keep mask the kernels apply for ``seed`` (for tests)."""
    kern = _kernels()
    out = torch.empty(batch_heads, n, n, dtype=torch.int8, device=device)
    block = 16
    kern._dropout_keep_kernel[(triton_cdiv(n, block), triton_cdiv(n, block), batch_heads)](
        out, n, float(dropout_p), int(seed) & 0x7FFFFFFF, BLOCK=block)
    return out.bool()


__all__ = ["TileConfig", "check_inputs", "fused_graph_attention", "dropout_keep_mask", "default_config",
           "INTERPRETER_TILES"]
