"""Triton kernels of the fused graph-attention backend (imported lazily: this module needs Triton).

Layout and tables (built in :mod:`gsit.attention.triton.launch`)
------------------------------------------------------------------
``q, k, v`` are (B, H, N, D|Dv) with unit stride on the last dimension and any other strides; every
tensor the kernels allocate (O, dO, dQ, dK, dV) is contiguous (B, H, N, D|Dv), so only the inputs'
strides are passed.  Logsumexp and delta are (B, H, N) fp32, contiguous.

The sequence is the concatenation of M segments.  One int32 table ``META`` describes the graph and the
tiling of one kernel (offsets computed in-kernel from M and T = the number of tiles = grid axis 0):

* ``META[0:M]``            segment start positions;
* ``META[M:2M]``           segment lengths;
* ``META[2M:3M]``          count of linked segments: for the forward and dQ kernels, the key segments
  query segment i reads (under ONE softmax); for the dK/dV kernel, the query segments reading key
  segment j (the reverse adjacency);
* ``META[3M:3M+M*M]``      row i: those linked segments;
* ``META[3M+M*M:][:T]``    segment of each tile; ``[...][T:2T]`` first position of each tile.  Tiles of
  BLOCK rows are cut *inside* each segment: a tile never straddles two segments and the last tile of
  a segment is partial.

``VL`` is (B, M) int32: the valid length of segment m in sample b, already clamped to [0, length]
(the full lengths when there is no padding).

Every kernel runs on a grid (tiles, B * H): axis 0 walks the tiles of one (batch, head) so that the
programs running together share K/V in L2.  Loops over key (or query) tiles stop at the *valid* end of
each segment, so the work follows the real tokens, not the padded length; a tile wholly in padding
writes zeros and returns.

Numerics: logits are scaled by ``scale * log2(e)`` and exponentiated with exp2; the stored logsumexp is
in that base-2 domain and is ``+inf`` for rows that are padding or have no allowed key, which makes
every recomputed probability of those rows exactly 0 in the backward kernels.  The backward is
flash-attention-2 style: the dQ kernel (launched first) also computes ``delta = rowsum(dO * O)`` of
its rows and stores it for the dK/dV kernel; no atomics, deterministic.

Dropout: the keep mask of element (row, col) of head ``bh`` is ``rand(key, row * N + col) >= p`` with
the Philox key ``(bh << 32) + seed``; it depends only on global positions, so the forward and both
backward kernels regenerate the same mask whatever their tile sizes.

(Pointer arithmetic is written out in each kernel rather than in helper functions: nested jit calls
cost nothing when compiled but dominate the run time under the CPU interpreter used by the tests.)
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
LOG2E = 1.4426950408889634


@triton.jit
def _dim_mask(HEAD: tl.constexpr, BLOCK: tl.constexpr):
    """Mask of the head dimension padded from HEAD to BLOCK (a constant all-true mask when equal)."""
    if HEAD == BLOCK:
        mask = tl.full([BLOCK], 1, tl.int1)
    else:
        mask = tl.arange(0, BLOCK) < HEAD
    return mask


@triton.jit
def _keep(SEED, bh, rows, cols, N, p_drop):
    """Dropout keep mask (True = kept) for the broadcast grid of global positions rows x cols; the seed
    is read from device memory (a one-element int64 tensor), so a compiled or CUDA-graph-captured step
    draws a fresh mask each replay."""
    key = (bh.to(tl.int64) << 32) + tl.load(SEED)
    return tl.rand(key, rows * N + cols) >= p_drop


# ----------------------------------------------------------------------------------------- forward
@triton.jit
def _fwd_kernel(
    Q,
    K,
    V,
    O,
    LSE,
    META,
    VL,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    H,
    N,
    M,
    qk_scale,
    p_drop,
    SEED,
    HEAD_D: tl.constexpr,
    HEAD_DV: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    tiles = META + 3 * M + M * M
    qmod = tl.load(tiles + tile)
    m0 = tl.load(tiles + tl.num_programs(0) + tile)
    q_seg = tl.load(META + qmod)
    q_seg_end = q_seg + tl.load(META + M + qmod)
    q_end = q_seg + tl.load(VL + b * M + qmod)  # end of the real rows of this segment

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = _dim_mask(HEAD_D, BLOCK_D)
    dv_ok = _dim_mask(HEAD_DV, BLOCK_DV)
    in_seg = offs_m < q_seg_end  # rows this program owns (real or padding)
    o_ptrs = O + bh.to(tl.int64) * N * HEAD_DV + offs_m[:, None] * HEAD_DV + offs_dv[None, :]
    lse_ptrs = LSE + bh.to(tl.int64) * N + offs_m

    if m0 >= q_end:  # the whole tile is padding: zeros, no work
        tl.store(
            o_ptrs,
            tl.zeros([BLOCK_M, BLOCK_DV], dtype=O.dtype.element_ty),
            mask=in_seg[:, None] & dv_ok[None, :],
        )
        tl.store(lse_ptrs, tl.full([BLOCK_M], float("inf"), tl.float32), mask=in_seg)
        return

    row_ok = offs_m < q_end
    q_ptrs = (
        Q
        + b.to(tl.int64) * stride_qb
        + h.to(tl.int64) * stride_qh
        + offs_m[:, None] * stride_qn
        + offs_d[None, :]
    )
    q = tl.load(q_ptrs, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + offs_d[None, :]
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + offs_dv[None, :]

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    inv_keep = 1.0 / (1.0 - p_drop)

    n_keys = tl.load(META + 2 * M + qmod)
    for j in range(0, n_keys):
        kmod = tl.load(META + 3 * M + qmod * M + j)
        k_seg = tl.load(META + kmod)
        k_end = k_seg + tl.load(VL + b * M + kmod)
        # only key tiles that hold at least one real key; the last one is masked
        for n0 in range(k_seg, k_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            col_ok = offs_n < k_end
            k = tl.load(k_base + offs_n[:, None] * stride_kn, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(
                v_base + offs_n[:, None] * stride_vn, mask=col_ok[:, None] & dv_ok[None, :], other=0.0
            )
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            if n0 + BLOCK_N > k_end:  # only the last key tile of a segment is partial
                s = tl.where(col_ok[None, :], s, float("-inf"))
            # column n0 is real, so every row has a finite logit here and m_new is finite
            m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s * qk_scale - m_new[:, None])  # one FMA + exp2 per logit
            l_i = l_i * alpha + tl.sum(p, 1)
            if DROPOUT:
                keep = _keep(SEED, bh, offs_m[:, None], offs_n[None, :], N, p_drop)
                p = tl.where(keep, p * inv_keep, 0.0)
            acc = acc * alpha[:, None]
            acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
            m_i = m_new

    has_key = row_ok & (l_i > 0.0)
    l_safe = tl.where(has_key, l_i, 1.0)
    out = tl.where(has_key[:, None], acc / l_safe[:, None], 0.0)
    lse = tl.where(has_key, m_i + tl.log2(l_safe), float("inf"))
    tl.store(o_ptrs, out.to(O.dtype.element_ty), mask=in_seg[:, None] & dv_ok[None, :])
    tl.store(lse_ptrs, lse, mask=in_seg)


# ---------------------------------------------------------------------------------------- backward
@triton.jit
def _bwd_dq_kernel(
    Q,
    K,
    V,
    O,
    DO,
    LSE,
    DELTA,
    DQ,
    META,
    VL,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    H,
    N,
    M,
    qk_scale,
    p_drop,
    SEED,
    HEAD_D: tl.constexpr,
    HEAD_DV: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """One program per query tile: delta = rowsum(dO * O) (stored for the dK/dV kernel), then dQ over
    the same key tiles the forward read (no atomics)."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    tiles = META + 3 * M + M * M
    qmod = tl.load(tiles + tile)
    m0 = tl.load(tiles + tl.num_programs(0) + tile)
    q_seg = tl.load(META + qmod)
    q_seg_end = q_seg + tl.load(META + M + qmod)
    q_end = q_seg + tl.load(VL + b * M + qmod)

    offs_m = m0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = _dim_mask(HEAD_D, BLOCK_D)
    dv_ok = _dim_mask(HEAD_DV, BLOCK_DV)
    in_seg = offs_m < q_seg_end
    dq_ptrs = DQ + bh.to(tl.int64) * N * HEAD_D + offs_m[:, None] * HEAD_D + offs_d[None, :]

    if m0 >= q_end:
        tl.store(
            dq_ptrs,
            tl.zeros([BLOCK_M, BLOCK_D], dtype=DQ.dtype.element_ty),
            mask=in_seg[:, None] & d_ok[None, :],
        )
        return

    row_ok = offs_m < q_end
    q = tl.load(
        Q
        + b.to(tl.int64) * stride_qb
        + h.to(tl.int64) * stride_qh
        + offs_m[:, None] * stride_qn
        + offs_d[None, :],
        mask=row_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    ov_off = bh.to(tl.int64) * N * HEAD_DV + offs_m[:, None] * HEAD_DV + offs_dv[None, :]
    ov_mask = row_ok[:, None] & dv_ok[None, :]
    do = tl.load(DO + ov_off, mask=ov_mask, other=0.0)
    o = tl.load(O + ov_off, mask=ov_mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * N + offs_m, delta, mask=row_ok)
    lse = tl.load(LSE + bh.to(tl.int64) * N + offs_m, mask=row_ok, other=float("inf"))
    k_base = K + b.to(tl.int64) * stride_kb + h.to(tl.int64) * stride_kh + offs_d[None, :]
    v_base = V + b.to(tl.int64) * stride_vb + h.to(tl.int64) * stride_vh + offs_dv[None, :]

    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    inv_keep = 1.0 / (1.0 - p_drop)

    n_keys = tl.load(META + 2 * M + qmod)
    for j in range(0, n_keys):
        kmod = tl.load(META + 3 * M + qmod * M + j)
        k_seg = tl.load(META + kmod)
        k_end = k_seg + tl.load(VL + b * M + kmod)
        for n0 in range(k_seg, k_end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            col_ok = offs_n < k_end
            k = tl.load(k_base + offs_n[:, None] * stride_kn, mask=col_ok[:, None] & d_ok[None, :], other=0.0)
            v = tl.load(
                v_base + offs_n[:, None] * stride_vn, mask=col_ok[:, None] & dv_ok[None, :], other=0.0
            )
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            p = tl.exp2(s * qk_scale - lse[:, None])
            if n0 + BLOCK_N > k_end:  # only the last key tile of a segment is partial
                p = tl.where(col_ok[None, :], p, 0.0)
            dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
            if DROPOUT:
                keep = _keep(SEED, bh, offs_m[:, None], offs_n[None, :], N, p_drop)
                dp = tl.where(keep, dp * inv_keep, 0.0)
            ds = p * (dp - delta[:, None])
            dq = tl.dot(ds.to(k.dtype), k, dq, input_precision=DOT_PREC)

    tl.store(
        dq_ptrs,
        (dq * (qk_scale / 1.4426950408889634)).to(DQ.dtype.element_ty),
        mask=in_seg[:, None] & d_ok[None, :],
    )


@triton.jit
def _bwd_dkdv_kernel(
    Q,
    K,
    V,
    DO,
    LSE,
    DELTA,
    DK,
    DV,
    META,
    VL,
    stride_qb,
    stride_qh,
    stride_qn,
    stride_kb,
    stride_kh,
    stride_kn,
    stride_vb,
    stride_vh,
    stride_vn,
    H,
    N,
    M,
    qk_scale,
    p_drop,
    SEED,
    HEAD_D: tl.constexpr,
    HEAD_DV: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DROPOUT: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """One program per key tile: dK, dV over every query tile of every query segment reading it
    (``META`` holds the reverse adjacency here)."""
    tile = tl.program_id(0)
    bh = tl.program_id(1)
    b = bh // H
    h = bh % H
    tiles = META + 3 * M + M * M
    kmod = tl.load(tiles + tile)
    n0 = tl.load(tiles + tl.num_programs(0) + tile)
    k_seg = tl.load(META + kmod)
    k_seg_end = k_seg + tl.load(META + M + kmod)
    k_end = k_seg + tl.load(VL + b * M + kmod)

    offs_n = n0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    offs_dv = tl.arange(0, BLOCK_DV)
    d_ok = _dim_mask(HEAD_D, BLOCK_D)
    dv_ok = _dim_mask(HEAD_DV, BLOCK_DV)
    in_seg = offs_n < k_seg_end
    dk_ptrs = DK + bh.to(tl.int64) * N * HEAD_D + offs_n[:, None] * HEAD_D + offs_d[None, :]
    dv_ptrs = DV + bh.to(tl.int64) * N * HEAD_DV + offs_n[:, None] * HEAD_DV + offs_dv[None, :]

    if n0 >= k_end:  # padded keys are never read: zero gradient
        tl.store(
            dk_ptrs,
            tl.zeros([BLOCK_N, BLOCK_D], dtype=DK.dtype.element_ty),
            mask=in_seg[:, None] & d_ok[None, :],
        )
        tl.store(
            dv_ptrs,
            tl.zeros([BLOCK_N, BLOCK_DV], dtype=DV.dtype.element_ty),
            mask=in_seg[:, None] & dv_ok[None, :],
        )
        return

    col_ok = offs_n < k_end
    k = tl.load(
        K
        + b.to(tl.int64) * stride_kb
        + h.to(tl.int64) * stride_kh
        + offs_n[:, None] * stride_kn
        + offs_d[None, :],
        mask=col_ok[:, None] & d_ok[None, :],
        other=0.0,
    )
    v = tl.load(
        V
        + b.to(tl.int64) * stride_vb
        + h.to(tl.int64) * stride_vh
        + offs_n[:, None] * stride_vn
        + offs_dv[None, :],
        mask=col_ok[:, None] & dv_ok[None, :],
        other=0.0,
    )
    q_base = Q + b.to(tl.int64) * stride_qb + h.to(tl.int64) * stride_qh + offs_d[None, :]
    do_base = DO + bh.to(tl.int64) * N * HEAD_DV + offs_dv[None, :]
    lse_base = LSE + bh.to(tl.int64) * N
    delta_base = DELTA + bh.to(tl.int64) * N

    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_DV], dtype=tl.float32)
    inv_keep = 1.0 / (1.0 - p_drop)

    n_readers = tl.load(META + 2 * M + kmod)
    for i in range(0, n_readers):
        qmod = tl.load(META + 3 * M + kmod * M + i)
        q_seg = tl.load(META + qmod)
        q_end = q_seg + tl.load(VL + b * M + qmod)
        for m0 in range(q_seg, q_end, BLOCK_M):
            offs_m = m0 + tl.arange(0, BLOCK_M)
            row_ok = offs_m < q_end
            q = tl.load(q_base + offs_m[:, None] * stride_qn, mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            do = tl.load(
                do_base + offs_m[:, None] * HEAD_DV, mask=row_ok[:, None] & dv_ok[None, :], other=0.0
            )
            lse = tl.load(lse_base + offs_m, mask=row_ok, other=float("inf"))
            delta = tl.load(delta_base + offs_m, mask=row_ok, other=0.0)
            # (BLOCK_N, BLOCK_M); padded query rows have lse = +inf, so their p is exactly 0.  Key rows
            # past k_end (k loaded as 0) get garbage here, but only in their own dK/dV rows, which are
            # zeroed once at the end instead of masking every tile
            s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC)
            p_t = tl.exp2(s_t * qk_scale - lse[None, :])
            dp_t = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
            if DROPOUT:
                keep = _keep(SEED, bh, offs_m[None, :], offs_n[:, None], N, p_drop)
                pd_t = tl.where(keep, p_t * inv_keep, 0.0)
                dp_t = tl.where(keep, dp_t * inv_keep, 0.0)
            else:
                pd_t = p_t
            dv = tl.dot(pd_t.to(do.dtype), do, dv, input_precision=DOT_PREC)
            ds_t = p_t * (dp_t - delta[None, :])
            dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=DOT_PREC)

    dk = tl.where(col_ok[:, None], dk * (qk_scale / 1.4426950408889634), 0.0)
    dv = tl.where(col_ok[:, None], dv, 0.0)
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=in_seg[:, None] & d_ok[None, :])
    tl.store(dv_ptrs, dv.to(DV.dtype.element_ty), mask=in_seg[:, None] & dv_ok[None, :])


# ------------------------------------------------------------------------------------------ testing
@triton.jit
def _dropout_keep_kernel(OUT, N, p_drop, SEED, BLOCK: tl.constexpr):
    """Materialise the (B*H, N, N) keep mask the attention kernels use (int8; for tests only)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    bh = tl.program_id(2)
    keep = _keep(SEED, bh, rows[:, None], cols[None, :], N, p_drop)
    ptrs = OUT + bh.to(tl.int64) * N * N + rows[:, None] * N + cols[None, :]
    tl.store(ptrs, keep.to(tl.int8), mask=(rows[:, None] < N) & (cols[None, :] < N))
