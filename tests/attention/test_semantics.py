"""Tests of gsit.attention's shared semantics on the reference and pairs backends: rows without keys, empty
segments, errors, dropout and scale, and hand-written per-pair cross-modal attention -- the paper's claim that
the interlaced-masked encoder equals separately computed cross-modal attentions (SPEC §5-6).  Every backend
against the reference, in values and gradients: test_backends.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gsit.attention import UnsupportedInput, available_backends, graph_attention
from gsit.graph import GraphMask, ModalGraph, SequenceLayout
from gsit.models.gsit import GraphEncoder

T, V, A = "text", "vision", "audio"
TVA = (T, V, A)
RAGGED = SequenceLayout(TVA, (46, 113, 203))
BACKENDS = ("reference", "pairs")


def make_qkv(batch: int, heads: int, n: int, dim: int, *, seed: int = 0, grad: bool = True):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, heads, n, dim, generator=g).requires_grad_(grad) for _ in range(3))


def run(backend: str, q, k, v, mask: GraphMask, upstream: torch.Tensor, **kw):
    """Output and the gradients of <out, upstream> with respect to q, k, v."""
    q, k, v = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    out = graph_attention(q, k, v, mask, backend=backend, **kw)
    (out * upstream).sum().backward()
    return out.detach(), q.grad, k.grad, v.grad


def per_pair_attention(q, k, v, layout: SequenceLayout, graph: ModalGraph, scale: float) -> torch.Tensor:
    """The decomposition written out by hand: for every query block i, softmax(q_i k_j^T * scale) v_j over the
    one key block j it reads (the union of its key blocks, in sequence order, if several); blocks concatenated
    in query order.  A query block with no key block yields zeros."""
    pieces = []
    for i, qm in enumerate(layout.modalities):
        qi = q[:, :, layout.segment(i)]  # (B, H, Lq, D)
        keys = [j for j, km in enumerate(layout.modalities) if (qm, km) in graph.edges]
        if not keys or qi.shape[2] == 0:
            pieces.append(torch.zeros_like(qi[..., : v.shape[-1]]))
            continue
        kj = torch.cat([k[:, :, layout.segment(j)] for j in keys], dim=2)  # (B, H, Lk, D)
        vj = torch.cat([v[:, :, layout.segment(j)] for j in keys], dim=2)
        logits = torch.einsum("bhqd,bhkd->bhqk", qi, kj) * scale
        pieces.append(torch.einsum("bhqk,bhkd->bhqd", logits.softmax(dim=-1), vj))
    return torch.cat(pieces, dim=2)


# --------------------------------------------------------------------------- rows without keys
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_zero_valid_key_block_gives_zero_rows_and_finite_gradients(backend):
    # forward graph: audio reads text; sample 0 has no valid text, so its audio queries have no key at all
    layout = SequenceLayout(TVA, (5, 6, 7))
    mask = GraphMask(ModalGraph.named("forward"), layout, torch.tensor([[0, 6, 7], [5, 6, 7]]))
    q, k, v = make_qkv(2, 2, layout.total, 8)
    out, dq, dk, dv = run(backend, q, k, v, mask, torch.randn(2, 2, layout.total, 8))
    audio = layout.segment(2)
    assert (out[0, :, audio] == 0).all()
    assert out[1, :, audio].abs().sum() > 0
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()
    assert (dq[0, :, audio] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_query_block_without_keys_returns_zeros(backend):
    layout = SequenceLayout(TVA, (5, 6, 7))
    graph = ModalGraph.named("forward").without((A,))  # only text->vision remains
    mask = GraphMask(graph, layout)
    q, k, v = make_qkv(2, 2, layout.total, 8)
    out, dq, dk, dv = run(backend, q, k, v, mask, torch.randn(2, 2, layout.total, 8))
    assert (out[:, :, layout.segment(1)] == 0).all() and (out[:, :, layout.segment(2)] == 0).all()
    assert out[:, :, layout.segment(0)].abs().sum() > 0
    for t in (out, dq, dk, dv):
        assert torch.isfinite(t).all()
    torch.testing.assert_close(out, per_pair_attention(q, k, v, layout, graph, 8**-0.5), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_zero_length_segment_is_supported(backend):
    layout = SequenceLayout(TVA, (4, 0, 6))
    graph = ModalGraph.named("forward")  # text reads the empty vision block
    q, k, v = make_qkv(1, 2, layout.total, 8)
    out, *grads = run(backend, q, k, v, GraphMask(graph, layout), torch.randn(1, 2, layout.total, 8))
    assert (out[:, :, :4] == 0).all()
    assert all(torch.isfinite(g).all() for g in grads)
    torch.testing.assert_close(out, per_pair_attention(q, k, v, layout, graph, 8**-0.5), atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------- the paper's decomposition theorem
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("graph_name", ["forward", "backward", "self", "bidirectional"])
def test_masked_attention_equals_per_pair_cross_modal_attention(backend, graph_name, seed):
    graph = ModalGraph.named(graph_name)
    q, k, v = make_qkv(2, 2, RAGGED.total, 8, grad=False)
    out = graph_attention(q, k, v, GraphMask(graph, RAGGED), backend=backend)
    torch.testing.assert_close(out, per_pair_attention(q, k, v, RAGGED, graph, 8**-0.5), atol=1e-5, rtol=1e-5)


def hand_written_encoder(
    enc: GraphEncoder, x: torch.Tensor, layout: SequenceLayout, graph: ModalGraph, num_heads: int
) -> torch.Tensor:
    """SPEC §4 with the encoder's weights, written without gsit's attention code: sqrt(D) scale, the ONE
    shared pre-LN layer applied ``num_layers`` times with per-pair cross-modal attention, final LN."""
    layer = enc.layers[0]
    B, N, D = x.shape
    hd = D // num_heads
    x = math.sqrt(D) * x
    for _ in range(enc.num_layers):
        h = F.layer_norm(x, (D,), layer.attn_norm.weight, layer.attn_norm.bias)
        w, b = layer.attn.in_proj_weight, layer.attn.in_proj_bias
        q, k, v = (h @ w[i * D : (i + 1) * D].T + b[i * D : (i + 1) * D] for i in range(3))
        q, k, v = (t.reshape(B, N, num_heads, hd).transpose(1, 2) for t in (q, k, v))  # (B, H, N, hd)
        att = per_pair_attention(q, k, v, layout, graph, hd**-0.5)  # (B, H, N, hd)
        att = att.transpose(1, 2).reshape(B, N, D) @ layer.attn.out_proj.weight.T + layer.attn.out_proj.bias
        x = x + att
        h = F.layer_norm(x, (D,), layer.ffn_norm.weight, layer.ffn_norm.bias)
        h = F.gelu(h @ layer.fc1.weight.T + layer.fc1.bias) @ layer.fc2.weight.T + layer.fc2.bias
        x = x + h
    return F.layer_norm(x, (D,), enc.final_norm.weight, enc.final_norm.bias)


@pytest.mark.parametrize("graph_name", ["forward", "backward", "self"])
def test_graph_encoder_equals_hand_written_per_pair_layers(graph_name, seed):
    layout = SequenceLayout(TVA, (7, 11, 13))
    graph = ModalGraph.named(graph_name)
    x = torch.randn(2, layout.total, 16)
    outs = {}
    for backend in BACKENDS:
        torch.manual_seed(1)  # identical weights for both backends
        enc = GraphEncoder(
            d_model=16, num_heads=2, num_layers=3, share_layers=True, attention_backend=backend
        ).eval()
        outs[backend] = enc(x, GraphMask(graph, layout))
    expected = hand_written_encoder(enc, x, layout, graph, num_heads=2)
    torch.testing.assert_close(outs["reference"], expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs["pairs"], expected, atol=1e-5, rtol=1e-5)


def test_graph_encoder_shares_one_layer_across_depth():
    enc = GraphEncoder(d_model=16, num_heads=2, num_layers=4, share_layers=True)
    assert len(enc.layers) == 1
    assert all(layer is enc.layers[0] for layer in enc.depth_layers()) and len(enc.depth_layers()) == 4
    unshared = GraphEncoder(d_model=16, num_heads=2, num_layers=4, share_layers=False)
    assert len({id(layer) for layer in unshared.depth_layers()}) == 4


# --------------------------------------------------------------------------- errors
def test_graph_attention_unknown_backend_lists_known_backends():
    layout = SequenceLayout(TVA, (1, 1, 1))
    q, k, v = make_qkv(1, 1, 3, 4, grad=False)
    with pytest.raises(ValueError) as e:
        graph_attention(q, k, v, GraphMask(ModalGraph.named("forward"), layout), backend="magic")
    for name in available_backends():
        assert name in str(e.value)
    assert "reference" in available_backends() and "pairs" in available_backends()


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_attention_mismatched_shapes_list_every_reason(backend):
    layout = SequenceLayout(TVA, (2, 3, 4))
    mask = GraphMask(ModalGraph.named("forward"), layout, torch.tensor([[1, 1, 1]] * 3))
    q, _, _ = make_qkv(2, 2, 8, 4, grad=False)  # N = 8 != 9, batch 2 != 3
    k = torch.randn(2, 2, 8, 5)  # D differs from q
    with pytest.raises(UnsupportedInput) as e:
        graph_attention(q, k, k, mask, backend=backend)
    msg = str(e.value)
    assert backend in msg
    assert "sequence length 8 != layout total 9" in msg
    assert "valid_lengths batch 3 != q batch 2" in msg
    assert "shapes must agree" in msg
    assert isinstance(e.value, ValueError)


@pytest.mark.parametrize("backend", BACKENDS)
def test_graph_attention_wrong_rank_is_unsupported(backend):
    layout = SequenceLayout(TVA, (2, 3, 4))
    x = torch.randn(2, 9, 4)
    with pytest.raises(UnsupportedInput, match=r"\(B, H, N, D\)"):
        graph_attention(x, x, x, GraphMask(ModalGraph.named("self"), layout), backend=backend)


# --------------------------------------------------------------------------- dropout and scale
@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_dropout_changes_output_and_is_unbiased(backend, seed):
    layout = SequenceLayout(TVA, (3, 4, 5))
    mask = GraphMask(ModalGraph.named("forward"), layout)
    q, k, v = make_qkv(1, 1, layout.total, 4, grad=False)
    exact = graph_attention(q, k, v, mask, backend=backend, dropout_p=0.0)
    reps = 4000
    qb, kb, vb = (t.expand(reps, -1, -1, -1).contiguous() for t in (q, k, v))
    dropped = graph_attention(qb, kb, vb, mask, backend=backend, dropout_p=0.3)
    assert not torch.allclose(dropped[0], exact[0])
    assert torch.isfinite(dropped).all()
    # E[dropout(P) V] = P V: the mean over many independent draws approaches the exact output
    err = (dropped.mean(dim=0) - exact[0]).abs().max()
    assert err < 0.1 * exact.abs().max() + 0.02, float(err)
    # and with p = 0 the output is deterministic
    torch.testing.assert_close(graph_attention(q, k, v, mask, backend=backend), exact)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_default_scale_is_inverse_sqrt_head_dim(backend, seed):
    layout = SequenceLayout(TVA, (5, 6, 7))
    graph = ModalGraph.named("backward")
    q, k, v = make_qkv(2, 2, layout.total, 8, grad=False)
    mask = GraphMask(graph, layout)
    default = graph_attention(q, k, v, mask, backend=backend)
    torch.testing.assert_close(
        default, graph_attention(q, k, v, mask, backend=backend, scale=8**-0.5), atol=0, rtol=0
    )
    torch.testing.assert_close(
        default, per_pair_attention(q, k, v, layout, graph, 8**-0.5), atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("scale", [1.0 / 8, 0.9])
def test_attention_explicit_scale_multiplies_logits(backend, scale, seed):
    layout = SequenceLayout(TVA, (5, 6, 7))
    graph = ModalGraph.named("forward")
    q, k, v = make_qkv(2, 2, layout.total, 8, grad=False)
    out = graph_attention(q, k, v, GraphMask(graph, layout), backend=backend, scale=scale)
    torch.testing.assert_close(out, per_pair_attention(q, k, v, layout, graph, scale), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, per_pair_attention(q, k, v, layout, graph, 8**-0.5), atol=1e-4)
