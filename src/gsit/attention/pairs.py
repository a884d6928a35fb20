"""The ``pairs`` backend: one ``scaled_dot_product_attention`` call per query block.

For the paper's graphs every query block reads exactly one key block, so this is one SDPA call per
allowed (query block, key block) pair -- the paper's decomposition of the masked attention into MulT's
cross-modal attentions.  Query blocks that read several key blocks (``bidirectional``) attend to the
concatenation of those blocks under one softmax.  No N x N mask is ever built; in padding-aware mode
each call gets a (B, 1, Lq, Lk) key/query validity mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gsit.graph import GraphMask


def check(q, k, v, mask: GraphMask, *, dropout_p: float) -> list[str]:
    return []


def _block(x: torch.Tensor, mask: GraphMask, modalities: tuple[int, ...]) -> torch.Tensor:
    segs = [x[:, :, mask.layout.segment(j)] for j in modalities]
    if len(segs) == 1:
        return segs[0]
    # contiguous runs need no copy
    offs = [mask.layout.segment(j) for j in modalities]
    if all(a.stop == b.start for a, b in zip(offs, offs[1:])):
        return x[:, :, offs[0].start : offs[-1].stop]
    return torch.cat(segs, dim=2)


def attention(q, k, v, mask: GraphMask, *, scale: float, dropout_p: float) -> torch.Tensor:
    B, H, N, _ = q.shape
    out = q.new_zeros(B, H, N, v.shape[-1])
    valid = mask.position_valid(q.device)  # (B, N) or None
    pieces = []
    for qi, key_mods in mask.query_groups():
        qs = mask.layout.segment(qi)
        kb, vb = _block(k, mask, key_mods), _block(v, mask, key_mods)
        if kb.shape[2] == 0:
            continue
        if valid is None:
            o = F.scaled_dot_product_attention(q[:, :, qs], kb, vb, dropout_p=dropout_p, scale=scale)
        else:
            kvalid = _block(valid[:, None], mask, key_mods)[:, 0]  # (B, Lk)
            qvalid = valid[:, qs]  # (B, Lq)
            allowed = qvalid[:, :, None] & kvalid[:, None, :]  # (B, Lq, Lk)
            has_key = allowed.any(dim=-1, keepdim=True)  # (B, Lq, 1)
            # rows with no allowed key attend to everything and are then zeroed: defined, finite gradients
            allowed = allowed | ~has_key
            o = F.scaled_dot_product_attention(
                q[:, :, qs], kb, vb, attn_mask=allowed[:, None], dropout_p=dropout_p, scale=scale
            )
            o = o * has_key[:, None].to(o.dtype)
        pieces.append((qs, o))
    for qs, o in pieces:
        out[:, :, qs] = o
    return out
