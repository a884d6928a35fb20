"""One parity grid: every registered attention backend against the ``reference`` oracle.

Backends (``available_backends()`` but the oracle itself) x graphs x padded / unpadded x dtype x autograd on
/ off, on ragged lengths that are no multiple of any tile (5/9/7 and 13/20/3; the padded samples include an
empty block, so some query rows read no key at all).  Compared: the output and, with autograd, dq, dk, dv
(padded query rows, their dq and padded keys' dk/dv exactly zero).  A case a backend cannot run is skipped
with the reasons of the registry's own :func:`check_backend` (flex has no CPU backward; triton takes no
float64; without triton installed, or on a GPU machine for these CPU tensors, triton is skipped) -- the
grid never decides for a backend what it supports.

The oracle computes its softmax in fp32 (its spec), so float64 cases are held to fp32 tolerances: they check
that a backend accepts float64 and returns float64 values and gradients that agree.  Kernel specifics (tile
configs, dropout masks, the interpreter, GPU precision) stay in the per-backend files.
"""

from __future__ import annotations

import pytest
import torch

from gsit.attention import available_backends, check_backend, graph_attention
from gsit.graph import GraphMask, ModalGraph, SequenceLayout

MODALITIES = ("text", "vision", "audio")
# lengths, then per-sample valid lengths for the padded cases (an empty block in each layout)
LAYOUTS = {
    "5-9-7": ((5, 9, 7), ((5, 0, 4), (1, 9, 7))),
    "13-20-3": ((13, 20, 3), ((2, 20, 0), (13, 7, 3))),
}
GRAPHS = ("forward", "backward", "self", "bidirectional", "full")
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}
TOL = {"atol": 2e-5, "rtol": 2e-5}
B, H, D = 2, 2, 16

# flex on CPU is torch's unfused eager FlexAttention, on purpose (the point is the values)
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def _cases():
    """The grid.  Triton runs under Triton's CPU interpreter here (slow): it gets the autograd cases only,
    which compare the values too."""
    cases = []
    for backend in available_backends():
        if backend == "reference":
            continue  # the oracle
        for autograd in (True, False):
            if backend == "triton" and not autograd:
                continue
            for graph in GRAPHS:
                for layout in LAYOUTS:
                    for padded in (False, True):
                        for dtype in DTYPES:
                            mode = "grad" if autograd else "nograd"
                            pad = "padded" if padded else "dense"
                            cases.append(
                                pytest.param(
                                    backend,
                                    graph,
                                    layout,
                                    padded,
                                    dtype,
                                    autograd,
                                    id=f"{backend}-{graph}-{layout}-{pad}-{dtype}-{mode}",
                                )
                            )
    return cases


def test_grid_covers_every_registered_backend_but_the_oracle():
    assert "reference" in available_backends()
    covered = {case.values[0] for case in _cases()}
    assert covered == set(available_backends()) - {"reference"}
    assert {"pairs", "flex", "triton"} <= covered


def _inputs(total: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    q, k, v, upstream = (torch.randn(B, H, total, D, generator=g, dtype=torch.float64) for _ in range(4))
    return [t.to(dtype) for t in (q, k, v)], upstream.to(dtype)


def _run(backend: str, q, k, v, mask: GraphMask, upstream, autograd: bool):
    """Output and, with autograd, the gradients of <out, upstream> with respect to q, k, v."""
    if not autograd:
        with torch.no_grad():
            return (graph_attention(q, k, v, mask, backend=backend),)
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = graph_attention(q, k, v, mask, backend=backend)
    return (out.detach(), *torch.autograd.grad(out, (q, k, v), upstream))


@pytest.mark.parametrize("backend,graph,layout,padded,dtype,autograd", _cases())
def test_backend_matches_reference(backend, graph, layout, padded, dtype, autograd):
    lengths, valid = LAYOUTS[layout]
    mask = GraphMask(
        ModalGraph.named(graph, MODALITIES),
        SequenceLayout(MODALITIES, lengths),
        torch.tensor(valid) if padded else None,
    )
    (q, k, v), upstream = _inputs(sum(lengths), DTYPES[dtype], seed=sum(lengths) + len(graph))
    probe = [t.detach().requires_grad_(autograd) for t in (q, k, v)]
    with torch.set_grad_enabled(autograd):
        reasons = check_backend(backend, *probe, mask)
    if reasons:
        pytest.skip(f"{backend} refuses: " + "; ".join(reasons))

    got = _run(backend, q, k, v, mask, upstream, autograd)
    ref = _run("reference", q, k, v, mask, upstream, autograd)
    for name, a, b in zip(("out", "dq", "dk", "dv"), got, ref):
        assert a.dtype == DTYPES[dtype], f"{name} dtype {a.dtype}"
        assert torch.isfinite(a).all(), f"{name} not finite"
        torch.testing.assert_close(a, b, **TOL, msg=lambda m, name=name: f"{name}: {m}")
    if padded:
        padding = ~mask.position_valid()  # (B, N): padded query rows and padded keys
        for name, t in zip(("out", "dq", "dk", "dv"), got):
            assert (t.transpose(1, 2)[padding] == 0).all(), f"{name} is not exactly zero at padding"
    if padded and graph in ("forward", "backward"):  # a real block that reads only an empty one: zero rows
        zero_rows = (got[0] == 0).all(dim=-1).transpose(1, 2)  # (B, N, H)
        assert zero_rows[mask.position_valid()].any()
