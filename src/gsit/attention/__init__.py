"""Graph-masked attention with a backend registry.

One entry point, :func:`graph_attention`, one signature for every backend::

    out = graph_attention(q, k, v, mask, backend=DEFAULT_BACKEND, scale=None, dropout_p=0.0)

``q, k, v`` are (B, H, N, D) over the concatenated sequence; ``mask`` is a :class:`gsit.graph.GraphMask`
that says which query block may read which key block (and, in padding-aware mode, which positions are
real).  Semantics, identical for every backend:

* a query attends (one softmax, computed in fp32) over exactly the keys the mask allows;
* a query row with no allowed key returns zeros, with finite gradients;
* ``scale`` multiplies the logits (default ``1/sqrt(D)``); ``dropout_p`` is applied to the probabilities.

Backends live in their own modules and are looked up by name.  A backend that cannot handle an input
raises :class:`UnsupportedInput` listing every reason; nothing falls back silently to another backend.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import torch

from gsit.errors import UnsupportedInput
from gsit.graph import GraphMask

__all__ = [
    "DEFAULT_BACKEND",
    "UnsupportedInput",
    "available_backends",
    "check_backend",
    "get_backend",
    "graph_attention",
    "register_backend",
]


@dataclass(frozen=True)
class Backend:
    """A registered backend: its name, the module that implements it (imported on first use), a line."""

    name: str
    module: str  # imported lazily, so `import gsit` never needs Triton or CUDA
    description: str

    def load(self):
        module = _LOADED.get(self.name)
        if module is None:
            module = _LOADED[self.name] = importlib.import_module(self.module)
        return module


_REGISTRY: dict[str, Backend] = {}
_LOADED: dict[str, object] = {}  # backend name -> imported module (no import machinery per call)


def register_backend(name: str, module: str, description: str) -> None:
    """Register a backend module that defines ``check(q, k, v, mask, *, dropout_p) -> list[str]`` and
    ``attention(q, k, v, mask, *, scale, dropout_p, **options) -> Tensor``; a backend with options lists
    their names in a module-level ``OPTIONS`` tuple (triton: ``seed``, ``config``)."""
    _REGISTRY[name] = Backend(name, module, description)
    _LOADED.pop(name, None)


register_backend("reference", "gsit.attention.reference", "dense masked softmax in fp32 (the oracle)")
register_backend("pairs", "gsit.attention.pairs", "one scaled_dot_product_attention call per query block")
register_backend("flex", "gsit.attention.flex", "FlexAttention with a BlockMask from the graph")
register_backend("triton", "gsit.attention.triton", "fused Triton kernel over all allowed block pairs")
register_backend(
    "naive",
    "gsit.attention.naive",
    "paper-era naive decomposition: per query block bmm + softmax + bmm (stores the block scores)",
)


# The one default, used by graph_attention and by the models' configs: ``pairs`` is exact (one SDPA call per
# query block, no approximation), runs on CPU and on every GPU without a compile step, and never builds the
# dense (N, N) mask.  ``reference`` is the oracle (dense, fp32, slow on purpose): tests name it explicitly.
DEFAULT_BACKEND = "pairs"


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def get_backend(name: str):
    if name not in _REGISTRY:
        raise ValueError(f"unknown attention backend {name!r}; known backends: {available_backends()}")
    return _REGISTRY[name].load()


def _common_checks(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: GraphMask) -> list[str]:
    """The shape, dtype and layout checks every backend shares (each backend's ``check`` adds its own)."""
    reasons = []
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        reasons.append(
            f"q, k, v must be (B, H, N, D); got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
        return reasons
    if q.shape != k.shape or q.shape[:3] != v.shape[:3]:
        reasons.append(
            f"q, k, v shapes must agree on (B, H, N) and q/k on D; got {tuple(q.shape)}, "
            f"{tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[2] != mask.total:
        reasons.append(
            f"sequence length {q.shape[2]} != layout total {mask.total} "
            f"({dict(zip(mask.layout.modalities, mask.layout.lengths))})"
        )
    if mask.valid_lengths is not None and mask.valid_lengths.shape[0] != q.shape[0]:
        reasons.append(f"valid_lengths batch {mask.valid_lengths.shape[0]} != q batch {q.shape[0]}")
    if not (q.dtype == k.dtype == v.dtype):
        reasons.append(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not q.dtype.is_floating_point:
        reasons.append(f"q must be floating point, got {q.dtype}")
    return reasons


def check_backend(
    name: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: GraphMask, *, dropout_p: float = 0.0
) -> list[str]:
    """Every reason backend ``name`` cannot run these inputs (empty: it can): the common checks, then the
    backend's own.  :func:`graph_attention` raises :class:`UnsupportedInput` with exactly these."""
    return _reasons(get_backend(name), q, k, v, mask, dropout_p)


def _reasons(impl, q, k, v, mask: GraphMask, dropout_p: float) -> list[str]:
    return _common_checks(q, k, v, mask) + impl.check(q, k, v, mask, dropout_p=dropout_p)


def graph_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: GraphMask,
    *,
    backend: str = DEFAULT_BACKEND,
    scale: float | None = None,
    dropout_p: float = 0.0,
    **options: Any,
) -> torch.Tensor:
    """Attention of (B, H, N, D) ``q`` over ``k, v`` restricted by ``mask``; returns (B, H, N, Dv).

    ``options`` go to the backend (triton: ``seed`` of the dropout mask, ``config`` tile sizes); a backend
    that declares none refuses them by name."""
    impl = get_backend(backend)
    unknown = sorted(set(options) - set(getattr(impl, "OPTIONS", ())))
    if unknown:
        raise ValueError(
            f"attention backend {backend!r} takes no options {unknown}; its options: "
            f"{list(getattr(impl, 'OPTIONS', ()))}"
        )
    reasons = _reasons(impl, q, k, v, mask, dropout_p)
    if reasons:
        raise UnsupportedInput(
            f"attention backend {backend!r} cannot run this input:\n  - " + "\n  - ".join(reasons)
        )
    if scale is None:
        scale = q.shape[-1] ** -0.5
    return impl.attention(q, k, v, mask, scale=scale, dropout_p=dropout_p, **options)
