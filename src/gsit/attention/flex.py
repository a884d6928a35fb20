"""The ``flex`` backend: PyTorch FlexAttention with a BlockMask derived from the graph.

Usage (through the registry)::

    out = graph_attention(q, k, v, mask, backend="flex", scale=None, dropout_p=0.0)

Shapes: ``q, k`` (B, H, N, D), ``v`` (B, H, N, Dv), ``N = mask.total``; returns (B, H, N, Dv) in q's dtype.

How it works: the mask is written once, as the predicate ``mask.mask_mod_on(device)`` of
:class:`gsit.graph.GraphMask` (the same adjacency and modality ids as the dense mask of the ``reference``
backend).  ``torch.nn.attention.flex_attention.create_block_mask`` turns it into a BlockMask: tiles that
the graph forbids entirely are skipped, tiles it allows entirely run without evaluating the predicate,
and only the tiles on a segment border evaluate it per element.

* Static graphs (no ``valid_lengths``): one BlockMask per (graph, segment lengths, device), cached for the
  life of the process -- every layer and every step reuses it.
* Padding-aware masks (``valid_lengths`` (B, M)): the predicate depends on the sample ``b`` and on the
  *values* of ``valid_lengths``, so nothing is shared between masks.  A BlockMask is built once per
  :class:`GraphMask` object (one model forward builds three: forward, backward and self graphs, each
  reused by all the layers of its encoder and by the backward pass) and dropped with it.  Like
  ``GraphMask``'s own caches this assumes ``valid_lengths`` is not modified in place afterwards.

Semantics (identical to the ``reference`` backend): softmax in fp32 over exactly the allowed keys; a
query row with no allowed key returns zeros with zero, finite gradients (FlexAttention's own behaviour
for fully masked rows: its log-sum-exp is -inf and the output 0; the tests check it against the
reference).

Limits (``check`` reports them): no attention dropout (FlexAttention has none); on CUDA the head dims
must be >= 16 (Triton's ``tl.dot``); on CPU only inference (torch's FlexAttention has no CPU backward),
and it runs the unfused eager implementation, which materialises the scores -- CPU is for tests only.
On CUDA ``flex_attention`` is wrapped in ``torch.compile`` once, lazily, at the first call (no
compile at import); without the compile it would be the slow unfused fallback.  Padding-aware BlockMasks are
built by a compiled ``create_block_mask`` on CUDA (compiled per shape; new valid lengths of the same shape
reuse it).
"""

from __future__ import annotations

import functools
import weakref

import torch

from gsit.graph import GraphMask, ModalGraph, SequenceLayout

try:  # torch >= 2.5
    from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention
except ImportError as exc:  # pragma: no cover - depends on the installed torch
    BlockMask = create_block_mask = flex_attention = None
    _IMPORT_ERROR: str | None = f"torch {torch.__version__} has no FlexAttention ({exc})"
else:
    _IMPORT_ERROR = None

MIN_CUDA_HEAD_DIM = 16  # tl.dot in FlexAttention's Triton template needs K, N >= 16


def check(q, k, v, mask: GraphMask, *, dropout_p: float) -> list[str]:
    """Every reason this backend cannot run the input (empty list: it can)."""
    reasons = []
    if _IMPORT_ERROR is not None:
        reasons.append(_IMPORT_ERROR)
    if dropout_p > 0.0:
        reasons.append(
            f"FlexAttention has no attention dropout, but dropout_p={dropout_p} was requested "
            f"(use attention_semantics='official_code' or attn_dropout=0, or the 'pairs' / "
            f"'triton' backends)"
        )
    dev = q.device.type
    if dev == "cpu":
        if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
            reasons.append(
                f"FlexAttention in torch {torch.__version__} has no backward on CPU, and the "
                f"inputs require grad (run on CUDA, or under torch.no_grad() for inference)"
            )
    elif dev == "cuda":
        if min(q.shape[-1], v.shape[-1]) < MIN_CUDA_HEAD_DIM:
            reasons.append(
                f"FlexAttention on CUDA needs head dims >= {MIN_CUDA_HEAD_DIM}, got "
                f"D={q.shape[-1]}, Dv={v.shape[-1]}"
            )
    else:
        reasons.append(f"the flex backend runs on CUDA (and CPU for inference), not on {q.device}")
    return reasons


# --------------------------------------------------------------------------- compiled once, lazily
_COMPILED: dict = {}


def _compiled(name: str):
    """``torch.compile`` of ``flex_attention`` / ``create_block_mask``, made once, at first use."""
    if name not in _COMPILED:
        _COMPILED[name] = torch.compile(
            {"flex_attention": flex_attention, "create_block_mask": create_block_mask}[name]
        )
    return _COMPILED[name]


def _flex_for(device: torch.device):
    """The compiled kernel on CUDA; the eager (unfused, forward-only) op elsewhere."""
    return _compiled("flex_attention") if device.type == "cuda" else flex_attention


# --------------------------------------------------------------------------- BlockMask construction
@functools.lru_cache(maxsize=64)
def _static_block_mask(graph: ModalGraph, lengths: tuple[int, ...], device: str) -> BlockMask:
    """BlockMask of a static mask: the same for every sample and head (B = H = None broadcast)."""
    mask = GraphMask(graph, SequenceLayout(graph.modalities, lengths))
    n = mask.total
    return create_block_mask(mask.mask_mod_on(device), None, None, n, n, device=device)


# one BlockMask per padding-aware GraphMask object, released with the mask
_PER_MASK: weakref.WeakKeyDictionary[GraphMask, dict[str, BlockMask]] = weakref.WeakKeyDictionary()


@torch.compiler.disable  # a cache lookup: run it eagerly even inside a compiled model (one graph break)
def block_mask(mask: GraphMask, device: torch.device | str) -> BlockMask:
    """The BlockMask of ``mask`` on ``device`` (cached; see the module docstring)."""
    dev = str(torch.device(device))
    if mask.valid_lengths is None:
        return _static_block_mask(mask.graph, mask.layout.lengths, dev)
    per_device = _PER_MASK.setdefault(mask, {})
    if dev not in per_device:
        n = mask.total
        # built every forward, so on CUDA the construction is compiled (a few fused kernels instead of a
        # vmap over (B, N, N) with dozens of launches); it recompiles for new shapes, not new valid lengths
        make = _compiled("create_block_mask") if dev.startswith("cuda") else create_block_mask
        per_device[dev] = make(mask.mask_mod_on(dev), mask.valid_lengths.shape[0], None, n, n, device=dev)
    return per_device[dev]


# --------------------------------------------------------------------------- the backend
def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: GraphMask, *, scale: float, dropout_p: float
) -> torch.Tensor:
    """Graph-masked attention of (B, H, N, D) ``q`` over ``k``, (B, H, N, Dv) ``v``: returns (B, H, N, Dv).

    ``dropout_p`` must be 0 (``check`` refuses anything else)."""
    if dropout_p > 0.0:
        raise ValueError(f"the flex backend has no attention dropout (dropout_p={dropout_p})")
    B, H, N, _ = q.shape
    if N == 0 or not mask.query_groups():  # nothing to attend to: every row is empty
        return q.new_zeros(B, H, N, v.shape[-1])
    bm = block_mask(mask, q.device)
    return _flex_for(q.device)(q, k, v, block_mask=bm, scale=scale)  # (B, H, N, Dv)
