"""The FlexAttention backend against the reference oracle.

On CPU, torch's FlexAttention runs forward only (it has no CPU backward), unfused: its values under
``torch.no_grad()`` are compared in the parity grid (test_backends.py); the CPU tests here check rows without
keys, the cached block masks, and that ``check`` refuses dropout and inputs that need gradients.  The
``gpu``-marked tests compare values and all gradients on CUDA, through the compiled kernel, in fp32 and
bf16, on awkward (non-tile-multiple) lengths, with and without padding.
"""

from __future__ import annotations

import pytest
import torch

from gsit.attention import UnsupportedInput, graph_attention
from gsit.graph import GraphMask, ModalGraph, SequenceLayout

flex = pytest.importorskip("gsit.attention.flex")
if flex._IMPORT_ERROR is not None:  # pragma: no cover - depends on the installed torch
    pytest.skip(flex._IMPORT_ERROR, allow_module_level=True)

# the CPU path is torch's unfused eager FlexAttention on purpose (the tests' point is the values)
pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")

T, V, A = "text", "vision", "audio"
TVA = (T, V, A)
GRAPHS = ("forward", "backward", "self", "bidirectional")
SMALL = SequenceLayout(TVA, (7, 19, 13))  # CPU: the unfused eager path materialises (B, H, N, N)
RAGGED = SequenceLayout(TVA, (46, 113, 203))  # GPU: partial 128-tiles and segment borders inside tiles


def _valid(layout: SequenceLayout, device) -> torch.Tensor:
    """Two samples: one with an empty vision block, one with single-token text."""
    t, v, a = layout.lengths
    return torch.tensor([[t - 2, 0, a], [1, v, a // 2]], device=device)


def _qkv(b, h, n, d, *, device, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(device, dtype) for _ in range(3)]


# --------------------------------------------------------------------------- CPU: rows, refusals, caching
def test_flex_query_block_without_keys_returns_zeros_on_cpu():
    graph = ModalGraph.named("forward").without((A,))  # only text->vision remains
    mask = GraphMask(graph, SMALL)
    q, k, v = _qkv(1, 2, SMALL.total, 8, device="cpu")
    with torch.no_grad():
        out = graph_attention(q, k, v, mask, backend="flex")
        ref = graph_attention(q, k, v, mask, backend="reference")
    assert (out[:, :, SMALL.lengths[0] :] == 0).all()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_flex_refuses_dropout_with_reason():
    mask = GraphMask(ModalGraph.named("forward"), SMALL)
    q, k, v = _qkv(1, 2, SMALL.total, 8, device="cpu")
    with torch.no_grad(), pytest.raises(UnsupportedInput, match="no attention dropout"):
        graph_attention(q, k, v, mask, backend="flex", dropout_p=0.3)


def test_flex_refuses_cpu_backward_with_reason():
    mask = GraphMask(ModalGraph.named("forward"), SMALL)
    q, k, v = (t.requires_grad_() for t in _qkv(1, 2, SMALL.total, 8, device="cpu"))
    with pytest.raises(UnsupportedInput, match="no backward on CPU"):
        graph_attention(q, k, v, mask, backend="flex")


def test_flex_static_block_mask_is_cached_and_padding_aware_is_per_mask():
    graph = ModalGraph.named("forward")
    assert flex.block_mask(GraphMask(graph, SMALL), "cpu") is flex.block_mask(GraphMask(graph, SMALL), "cpu")
    m1 = GraphMask(graph, SMALL, _valid(SMALL, "cpu"))
    m2 = GraphMask(graph, SMALL, _valid(SMALL, "cpu") - 1)
    b1 = flex.block_mask(m1, "cpu")
    assert flex.block_mask(m1, "cpu") is b1  # reused by every layer of one forward
    assert flex.block_mask(m2, "cpu") is not b1  # other valid lengths: never shared


# --------------------------------------------------------------------------- GPU: values and gradients
def _grads(backend, q, k, v, mask, upstream):
    q, k, v = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = graph_attention(q, k, v, mask, backend=backend)
    dq, dk, dv = torch.autograd.grad(out, (q, k, v), upstream)
    return out.detach(), dq, dk, dv


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("graph_name", GRAPHS)
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "validlen"])
def test_flex_matches_reference_values_and_gradients_on_gpu(graph_name, padded, dtype):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = "cuda"
    mask = GraphMask(ModalGraph.named(graph_name), RAGGED, _valid(RAGGED, dev) if padded else None)
    q, k, v = _qkv(2, 3, RAGGED.total, 32, device=dev)
    upstream = torch.randn(2, 3, RAGGED.total, 32, device=dev)
    ref = _grads("reference", q, k, v, mask, upstream)  # fp32 oracle
    got = _grads("flex", q.to(dtype), k.to(dtype), v.to(dtype), mask, upstream.to(dtype))
    if dtype == torch.float32:
        tol = {"atol": 2e-5, "rtol": 2e-5}
    else:  # at most ~2x PyTorch's own bf16 error: the reference run on bf16 inputs
        low = _grads("reference", q.to(dtype), k.to(dtype), v.to(dtype), mask, upstream.to(dtype))
    for i, name in enumerate(("out", "dq", "dk", "dv")):
        assert torch.isfinite(got[i]).all(), name
        if dtype == torch.float32:
            torch.testing.assert_close(got[i], ref[i], **tol, msg=f"{graph_name} {name}")
        else:
            err = (got[i].float() - ref[i]).abs().max().item()
            base = (low[i].float() - ref[i]).abs().max().item()
            assert err <= 2 * base + 1e-3, f"{graph_name} {name}: flex bf16 error {err} vs torch's {base}"
    if padded:
        real = mask.position_valid(dev)  # (B, N)
        out, dq, dk, dv = got
        assert (out.transpose(1, 2)[~real] == 0).all() and (dq.transpose(1, 2)[~real] == 0).all()
        assert (dk.transpose(1, 2)[~real] == 0).all() and (dv.transpose(1, 2)[~real] == 0).all()


@pytest.mark.gpu
def test_flex_rows_without_keys_are_zero_with_finite_gradients_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    dev = "cuda"
    # forward graph: audio reads text; sample 0 has no valid text, so its audio rows have no key at all
    valid = torch.tensor([[0, 113, 203], [46, 113, 203]], device=dev)
    mask = GraphMask(ModalGraph.named("forward"), RAGGED, valid)
    q, k, v = _qkv(2, 2, RAGGED.total, 16, device=dev)
    upstream = torch.randn(2, 2, RAGGED.total, 16, device=dev)
    ref = _grads("reference", q, k, v, mask, upstream)
    got = _grads("flex", q, k, v, mask, upstream)
    audio = RAGGED.segment(2)
    assert (got[0][0, :, audio] == 0).all() and (got[1][0, :, audio] == 0).all()
    for a, b in zip(got, ref):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


@pytest.mark.gpu
def test_flex_padding_aware_does_not_recompile_per_batch_on_gpu():
    """New valid lengths of the same shape must reuse the compiled kernel (else each step would compile)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from torch._dynamo.utils import counters

    dev = "cuda"
    graph = ModalGraph.named("forward")
    q, k, v = _qkv(2, 2, RAGGED.total, 32, device=dev)
    graph_attention(q, k, v, GraphMask(graph, RAGGED, _valid(RAGGED, dev)), backend="flex")
    before = counters["stats"]["unique_graphs"]
    for shift in (1, 2, 3):
        mask = GraphMask(graph, RAGGED, (_valid(RAGGED, dev) - shift).clamp(min=0))
        out = graph_attention(q, k, v, mask, backend="flex")
        ref = graph_attention(q, k, v, mask, backend="reference")
        torch.testing.assert_close(out, ref, atol=2e-5, rtol=2e-5)
    assert counters["stats"]["unique_graphs"] == before, "flex recompiled for new valid lengths"
