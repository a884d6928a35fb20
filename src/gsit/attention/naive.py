"""The ``naive`` backend: the paper-era "naive decomposition" (SPEC §6, official code ``cbf60e5``).

For each query block: gather the key/value blocks it may read, then one ``bmm`` for the scores, one
softmax, (dropout), one ``bmm`` with the values; the block outputs are concatenated in query order::

    out = graph_attention(q, k, v, mask, backend="naive", scale=None, dropout_p=0.0)

What it is for: a readable record of how the paper's numbers were most likely computed, and the third
curve of the memory-scaling sweep (``gsit memory-scaling``).  Unlike ``pairs`` (SDPA, which
dispatches to flash / memory-efficient kernels where it can) it *materialises* every block's
(B, H, Lq, Lk) score and probability matrices and keeps them for backward, so its memory grows with the
sum of ``Lq * Lk`` over the allowed pairs -- quadratic in sequence length, only with a smaller constant
than the dense (N, N) ``reference``.  Not a production path: use ``pairs`` or ``triton``.

Semantics (identical to the ``reference`` backend): scores ``scale * q.k`` in the input dtype, softmax in
fp32 (float64 inputs: in float64), a query row with no allowed key returns zeros with finite gradients;
in padding-aware mode padded keys are never read and padded query rows return zeros.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gsit.graph import GraphMask


def check(q, k, v, mask: GraphMask, *, dropout_p: float) -> list[str]:
    return []  # every dtype, device, length and padding


def _gather(x: torch.Tensor, mask: GraphMask, modalities: tuple[int, ...]) -> torch.Tensor:
    """The key (or value) blocks of ``modalities`` concatenated along the sequence: (B, H, Lk, D)."""
    return torch.cat([x[:, :, mask.layout.segment(j)] for j in modalities], dim=2)


def _block(q, k, v, allowed, *, scale: float, dropout_p: float) -> torch.Tensor:
    """One query block: (B, H, Lq, D) x (B, H, Lk, D) -> (B, H, Lq, Dv); ``allowed`` (B, Lq, Lk) or None."""
    B, H, Lq, D = q.shape
    Lk, Dv = k.shape[2], v.shape[-1]
    scores = torch.bmm(q.reshape(B * H, Lq, D), k.reshape(B * H, Lk, D).transpose(1, 2)) * scale
    scores = scores.view(B, H, Lq, Lk)  # the block's scores, materialised
    softmax_dtype = torch.promote_types(q.dtype, torch.float32)
    if allowed is None:
        probs = torch.softmax(scores, dim=-1, dtype=softmax_dtype)
    else:  # padding: disallowed keys get probability 0; rows with no allowed key are all zero
        logits = scores.to(softmax_dtype).masked_fill(~allowed[:, None], float("-inf"))
        row_max = logits.amax(dim=-1, keepdim=True)
        row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
        weights = torch.exp(logits - row_max)
        denom = weights.sum(dim=-1, keepdim=True)
        probs = weights / torch.where(denom > 0, denom, torch.ones_like(denom))
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    probs = probs.to(v.dtype).reshape(B * H, Lq, Lk)
    return torch.bmm(probs, v.reshape(B * H, Lk, Dv)).view(B, H, Lq, Dv)


def attention(q, k, v, mask: GraphMask, *, scale: float, dropout_p: float) -> torch.Tensor:
    B, H, N, _ = q.shape
    Dv = v.shape[-1]
    valid = mask.position_valid(q.device)  # (B, N) or None
    readers = dict(mask.query_groups())  # query modality -> key modalities
    pieces = []
    for i in range(mask.num_modalities):
        qs = mask.layout.segment(i)
        key_mods = readers.get(i, ())
        kb = _gather(k, mask, key_mods) if key_mods else k[:, :, :0]
        if kb.shape[2] == 0 or qs.stop == qs.start:  # reads nothing: zeros
            pieces.append(q.new_zeros(B, H, qs.stop - qs.start, Dv))
            continue
        allowed = None
        if valid is not None:
            kvalid = _gather(valid[:, None], mask, key_mods)[:, 0]  # (B, Lk)
            allowed = valid[:, qs, None] & kvalid[:, None, :]  # (B, Lq, Lk)
        vb = _gather(v, mask, key_mods)
        pieces.append(_block(q[:, :, qs], kb, vb, allowed, scale=scale, dropout_p=dropout_p))
    return torch.cat(pieces, dim=2)  # (B, H, N, Dv), query order
