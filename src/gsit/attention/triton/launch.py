"""Tables and launches of the fused graph-attention Triton kernels: tile configurations, the packed
per-launch tables (layout in :mod:`.kernel`) and the forward / backward launch sequences.

Importing this module needs no Triton; the kernels are imported on the first launch.  The autograd and
custom-operator layers above these launches live in :mod:`.function`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch


def interpret_mode() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _kernels():
    from gsit.attention.triton import kernel

    return kernel


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
