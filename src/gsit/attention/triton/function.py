"""Autograd wrapper of the fused graph-attention Triton kernels: input checks, tables, launches.

Importing this module needs no Triton; the kernels (:mod:`.kernel`) are imported on the first launch.
"""

from __future__ import annotations

import functools
import os
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
        elif err is None and "gsit.attention.triton.kernel" in __import__("sys").modules \
                and not _kernels().INTERPRET:
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
        reasons.append(f"attention dropout needs N <= {MAX_DROPOUT_SEQ} (int32 Philox offsets), got {q.shape[2]}")
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
@dataclass(frozen=True)
class GraphTables:
    seg_start: torch.Tensor  # (M,) int32
    seg_len: torch.Tensor  # (M,) int32
    key_list: torch.Tensor  # (M, M) int32, row i = key segments of query segment i (padded with 0)
    key_cnt: torch.Tensor  # (M,) int32
    rev_list: torch.Tensor  # (M, M) int32, row j = query segments reading key segment j
    rev_cnt: torch.Tensor  # (M,) int32


@functools.lru_cache(maxsize=256)
def graph_tables(key_sets: tuple[tuple[int, ...], ...], lengths: tuple[int, ...], device: str) -> GraphTables:
    m = len(lengths)
    starts = [0]
    for n in lengths[:-1]:
        starts.append(starts[-1] + n)
    key_list = torch.zeros(m, m, dtype=torch.int32)
    rev_list = torch.zeros(m, m, dtype=torch.int32)
    key_cnt = torch.zeros(m, dtype=torch.int32)
    rev_cnt = torch.zeros(m, dtype=torch.int32)
    for i, keys in enumerate(key_sets):
        if lengths[i] == 0:
            continue
        for j in keys:
            if lengths[j] == 0:
                continue
            key_list[i, key_cnt[i]] = j
            key_cnt[i] += 1
            rev_list[j, rev_cnt[j]] = i
            rev_cnt[j] += 1
    as_dev = functools.partial(torch.as_tensor, dtype=torch.int32, device=device)
    return GraphTables(as_dev(starts), as_dev(list(lengths)), key_list.to(device), key_cnt.to(device),
                       rev_list.to(device), rev_cnt.to(device))


@functools.lru_cache(maxsize=512)
def tile_table(lengths: tuple[int, ...], block: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiles of ``block`` rows cut inside each segment: (segment index, first position), int32."""
    mods, starts, pos = [], [], 0
    for i, n in enumerate(lengths):
        for t in range(0, n, block):
            mods.append(i)
            starts.append(pos + t)
        pos += n
    return (torch.tensor(mods, dtype=torch.int32, device=device),
            torch.tensor(starts, dtype=torch.int32, device=device))


def valid_length_table(mask: GraphMask, tables: GraphTables, device: torch.device) -> tuple[torch.Tensor, int]:
    """(VL, row stride): per (sample, segment) valid lengths clamped to [0, segment length], int32."""
    if mask.valid_lengths is None:
        return tables.seg_len, 0
    key = ("triton_valid_lengths", str(device))
    vl = mask._cache.get(key)
    if vl is None:
        vl = mask.valid_lengths.to(device=device, dtype=torch.int32)
        vl = torch.minimum(vl.clamp_min(0), tables.seg_len[None, :]).contiguous()
        mask._cache[key] = vl
    return vl, vl.stride(0)


# --------------------------------------------------------------------------------------- launches
def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _pow2(n: int) -> int:
    return max(16, 1 << (n - 1).bit_length())


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs are multiplied in full fp32 (as torch does by default); tf32 would cost ~1e-3 accuracy
    return "ieee" if dtype == torch.float32 else "tf32"


def _strides(t: torch.Tensor) -> tuple[int, int, int]:
    return t.stride(0), t.stride(1), t.stride(2)


@dataclass
class _Launch:
    """Everything both passes need (no tensor that requires grad)."""

    tables: GraphTables
    vl: torch.Tensor
    stride_vl: int
    num_modalities: int
    lengths: tuple[int, ...]
    scale: float
    dropout_p: float
    seed: int
    cfg: TileConfig


def _forward(q, k, v, ln: _Launch):
    kern = _kernels()
    B, H, N, D = q.shape
    DV = v.shape[-1]
    o = torch.empty(B, H, N, DV, device=q.device, dtype=q.dtype)
    lse = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    cfg = ln.cfg
    tile_mod, tile_start = tile_table(ln.lengths, cfg.fwd_m, str(q.device))
    if tile_mod.numel() == 0 or B * H == 0:
        return o, lse
    t = ln.tables
    grid = (tile_mod.numel(), B * H)
    kern._fwd_kernel[grid](
        q, k, v, o, lse,
        t.seg_start, t.seg_len, t.key_list, t.key_cnt, tile_mod, tile_start,
        ln.vl, ln.stride_vl,
        *_strides(q), *_strides(k), *_strides(v), *_strides(o),
        H, N, ln.num_modalities, ln.scale * kern.LOG2E, ln.dropout_p, ln.seed,
        HEAD_D=D, HEAD_DV=DV, BLOCK_D=_pow2(D), BLOCK_DV=_pow2(DV),
        BLOCK_M=cfg.fwd_m, BLOCK_N=cfg.fwd_n, DROPOUT=ln.dropout_p > 0.0, DOT_PREC=_dot_precision(q.dtype),
        num_warps=cfg.fwd_warps, num_stages=cfg.fwd_stages,
    )
    return o, lse


def _backward(q, k, v, o, lse, do, ln: _Launch):
    kern = _kernels()
    B, H, N, D = q.shape
    DV = v.shape[-1]
    cfg = ln.cfg
    dq = torch.empty_like(q, memory_format=torch.contiguous_format)
    dk = torch.empty_like(k, memory_format=torch.contiguous_format)
    dv = torch.empty_like(v, memory_format=torch.contiguous_format)
    if N == 0 or B * H == 0:
        return dq, dk, dv
    delta = torch.empty(B, H, N, device=q.device, dtype=torch.float32)
    pre_m = 64 if not (interpret_mode() or q.device.type != "cuda") else 16
    kern._bwd_preprocess_kernel[(triton_cdiv(N, pre_m), B * H)](
        o, do, delta, *_strides(o), *_strides(do), H, N,
        HEAD_DV=DV, BLOCK_DV=_pow2(DV), BLOCK_M=pre_m,
    )
    t = ln.tables
    common = dict(HEAD_D=D, HEAD_DV=DV, BLOCK_D=_pow2(D), BLOCK_DV=_pow2(DV),
                  DROPOUT=ln.dropout_p > 0.0, DOT_PREC=_dot_precision(q.dtype))
    scalars = (H, N, ln.num_modalities, ln.scale * kern.LOG2E, ln.scale, ln.dropout_p, ln.seed)

    kt_mod, kt_start = tile_table(ln.lengths, cfg.dkdv_n, str(q.device))
    kern._bwd_dkdv_kernel[(kt_mod.numel(), B * H)](
        q, k, v, do, lse, delta, dk, dv,
        t.seg_start, t.seg_len, t.rev_list, t.rev_cnt, kt_mod, kt_start,
        ln.vl, ln.stride_vl,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dk), *_strides(dv),
        *scalars, BLOCK_M=cfg.dkdv_m, BLOCK_N=cfg.dkdv_n, **common,
        num_warps=cfg.dkdv_warps, num_stages=cfg.dkdv_stages,
    )
    qt_mod, qt_start = tile_table(ln.lengths, cfg.dq_m, str(q.device))
    kern._bwd_dq_kernel[(qt_mod.numel(), B * H)](
        q, k, v, do, lse, delta, dq,
        t.seg_start, t.seg_len, t.key_list, t.key_cnt, qt_mod, qt_start,
        ln.vl, ln.stride_vl,
        *_strides(q), *_strides(k), *_strides(v), *_strides(do), *_strides(dq),
        *scalars, BLOCK_M=cfg.dq_m, BLOCK_N=cfg.dq_n, **common,
        num_warps=cfg.dq_warps, num_stages=cfg.dq_stages,
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
        dq, dk, dv = _backward(q, k, v, o, lse, _unit_last(do), ctx.ln)
        return dq, dk, dv, None


def fused_graph_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: GraphMask, *,
                          scale: float | None = None, dropout_p: float = 0.0, seed: int | None = None,
                          config: TileConfig | None = None) -> torch.Tensor:
    """The fused kernel with its knobs exposed (tile sizes, dropout seed); see the package docstring.

    ``seed``: Philox seed of the dropout mask (default: drawn from torch's CPU generator, so
    ``torch.manual_seed`` makes runs reproducible).  ``config``: tile sizes (default per head dim/dtype).
    """
    reasons = check_inputs(q, k, v, mask, dropout_p=dropout_p)
    if q.shape[2] != mask.total:
        reasons.append(f"sequence length {q.shape[2]} != layout total {mask.total}")
    if q.shape[:3] != k.shape[:3] or q.shape[:3] != v.shape[:3] or q.shape[-1] != k.shape[-1]:
        reasons.append(f"shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        reasons.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if mask.valid_lengths is not None and mask.valid_lengths.shape[0] != q.shape[0]:
        reasons.append(f"valid_lengths batch {mask.valid_lengths.shape[0]} != q batch {q.shape[0]}")
    if reasons:
        from gsit.attention import UnsupportedInput
        raise UnsupportedInput("triton attention cannot run this input:\n  - " + "\n  - ".join(reasons))
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if dropout_p > 0.0 and seed is None:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    cfg = config if config is not None else default_config(max(q.shape[-1], v.shape[-1]), q.dtype, q.device)
    dev = str(q.device)
    tables = graph_tables(mask.graph.key_sets, tuple(int(n) for n in mask.layout.lengths), dev)
    vl, stride_vl = valid_length_table(mask, tables, q.device)
    ln = _Launch(tables, vl, stride_vl, mask.num_modalities, tuple(int(n) for n in mask.layout.lengths),
                 float(scale), float(dropout_p), int(seed or 0) & 0x7FFFFFFF, cfg)
    return GraphAttentionFunction.apply(_unit_last(q), _unit_last(k), _unit_last(v), ln)


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
