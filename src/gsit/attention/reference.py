"""The reference backend: dense masked softmax in fp32.  Slow on purpose; this is the spec.

Every other backend is tested against this function in values and gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gsit.graph import GraphMask


def check(q, k, v, mask: GraphMask, *, dropout_p: float) -> list[str]:
    return []  # handles every dtype, device, length and padding


def attention_weights(q: torch.Tensor, k: torch.Tensor, mask: GraphMask, *, scale: float) -> torch.Tensor:
    """(B, H, N, N) fp32 attention probabilities; rows with no allowed key are all zero."""
    allowed = mask.dense_mask(q.device)  # (N, N) or (B, N, N)
    if allowed.dim() == 3:
        allowed = allowed[:, None]  # (B, 1, N, N)
    logits = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale  # (B, H, N, N)
    logits = logits.masked_fill(~allowed, float("-inf"))
    row_max = logits.amax(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))  # empty rows
    weights = torch.exp(logits - row_max)  # exp(-inf) = 0 at disallowed keys
    denom = weights.sum(dim=-1, keepdim=True)
    return weights / torch.where(denom > 0, denom, torch.ones_like(denom))


def attention(q, k, v, mask: GraphMask, *, scale: float, dropout_p: float) -> torch.Tensor:
    probs = attention_weights(q, k, mask, scale=scale)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return torch.matmul(probs, v.float()).to(q.dtype)  # (B, H, N, Dv)
