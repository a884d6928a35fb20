"""The fused Triton backend against the reference oracle, in values and gradients.

Without a GPU the kernels run under Triton's CPU interpreter (TRITON_INTERPRET=1, set below before
anything imports the kernels) with 16-row tiles.  With a GPU (and TRITON_INTERPRET unset) the same
tests run the compiled kernels on CUDA tensors.
"""

from __future__ import annotations

import os
import subprocess
import sys

import torch

_ON_GPU = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") != "1"
if not _ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"  # before the kernels module is imported (it is imported lazily)

import pytest  # noqa: E402

pytest.importorskip("triton")

from gsit.attention import UnsupportedInput, get_backend, graph_attention  # noqa: E402
from gsit.attention.reference import attention_weights  # noqa: E402
from gsit.attention.triton import check  # noqa: E402
from gsit.attention.triton.function import TileConfig, dropout_keep_mask, fused_graph_attention, small_tiles  # noqa: E402
from gsit.graph import GraphMask, ModalGraph, SequenceLayout  # noqa: E402

DEVICE = "cuda" if _ON_GPU else "cpu"
MODS3 = ("text", "vision", "audio")
MODS4 = ("text", "vision", "audio", "extra")
ATOL = RTOL = 2e-5


def _mask(graph: str, mods, lengths, valid=None) -> GraphMask:
    vl = None if valid is None else torch.tensor(valid, device=DEVICE)
    return GraphMask(ModalGraph.named(graph, mods), SequenceLayout(mods, lengths), vl)


def _qkv(b, h, n, d, dv=None, dtype=torch.float32, seed=0, std=1.0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(b, h, n, d), (b, h, n, d), (b, h, n, dv or d)]
    return [(torch.randn(s, generator=g) * std).to(DEVICE, dtype).requires_grad_() for s in shapes]


def _run(q, k, v, mask, fn, do):
    out = fn(q, k, v, mask)
    grads = torch.autograd.grad(out, (q, k, v), do)
    return out, grads


def _compare(q, k, v, mask, *, fn=None, scale=None, atol=ATOL, rtol=RTOL, seed=1):
    """Triton (via ``fn``, default the registry) vs the reference: outputs and dq, dk, dv."""
    if fn is None:

        def fn(q, k, v, m):
            return graph_attention(q, k, v, m, backend="triton", scale=scale)

    def ref(q, k, v, m):
        return graph_attention(q.float(), k.float(), v.float(), m, backend="reference", scale=scale)

    do = torch.randn(q.shape[:3] + v.shape[-1:], generator=torch.Generator().manual_seed(seed)).to(DEVICE)
    out, grads = _run(q, k, v, mask, fn, do.to(q.dtype))
    r_out, r_grads = _run(q, k, v, mask, ref, do)
    torch.testing.assert_close(out.float(), r_out, atol=atol, rtol=rtol)
    for name, g, rg in zip("qkv", grads, r_grads):
        assert torch.isfinite(g).all(), f"d{name} not finite"
        torch.testing.assert_close(
            g.float(), rg.float(), atol=atol, rtol=rtol, msg=lambda m, name=name: f"d{name}: {m}"
        )
    return out, grads


# --------------------------------------------------------------------------- graphs x layouts x padding
CASES = [
    (MODS3, (5, 13, 11), [[5, 0, 7], [3, 99, 11]]),  # vision empty in sample 0; 99 clamps to 13
    (MODS4, (7, 3, 17, 9), [[7, 0, 17, 4], [2, 3, 0, 9]]),
]


# head dim 32 is exercised with padding only (the costlier, more general path) to keep the file fast; three
# modalities at head dim 16 without padding are in the parity grid (test_backends.py), so not repeated here
MATRIX = [
    (c, d, padded)
    for c in range(len(CASES))
    for d in (16, 32)
    for padded in (False, True)
    if (d == 16 or padded) and (c == 1 or d == 32 or padded)
]


@pytest.mark.parametrize("graph", ["forward", "backward", "self", "bidirectional"])
@pytest.mark.parametrize(
    "case,d,padded",
    MATRIX,
    ids=[f"{'3mod' if c == 0 else '4mod'}-d{d}-{'padded' if p else 'dense'}" for c, d, p in MATRIX],
)
def test_matches_reference(graph, case, padded, d):
    mods, lengths, valid = CASES[case]
    mask = _mask(graph, mods, lengths, valid if padded else None)
    q, k, v = _qkv(2, 2, sum(lengths), d, seed=d + case)
    out, (dq, dk, dv) = _compare(q, k, v, mask)
    if padded:  # padded query rows: exact zeros; padded rows/keys: exact zero gradients
        pos_ok = mask.position_valid(DEVICE)[:, None, :, None]  # (B, 1, N, 1)
        assert (out.masked_select(~pos_ok) == 0).all()
        for g in (dq, dk, dv):
            assert (g.masked_select(~pos_ok) == 0).all()


def test_rows_without_keys_are_zero_with_finite_grads():
    # text reads only vision (forward graph); vision has valid length 0 in sample 0
    mask = _mask("forward", MODS3, (5, 13, 11), [[5, 0, 11], [5, 13, 11]])
    q, k, v = _qkv(2, 2, 29, 16, seed=3)
    out, grads = _compare(q, k, v, mask)
    assert (out[0, :, 0:5] == 0).all() and (out[1, :, 0:5] != 0).any()
    assert (grads[0][0, :, 0:5] == 0).all()
    # a modality that reads nothing at all, and a zero-length segment
    g = ModalGraph.named("bidirectional", MODS4).without(("extra",))
    mask = GraphMask(
        ModalGraph(MODS4, g.edges - {("text", "audio")} | {("extra", "text")}, "custom"),
        SequenceLayout(MODS4, (6, 0, 9, 5)),
    )
    q, k, v = _qkv(1, 2, 20, 16, seed=4)
    _compare(q, k, v, mask)


def test_many_tiles_online_softmax_and_tile_shapes():
    """Segments spanning several tiles, large logits (online-softmax rescaling), uneven tile shapes."""
    mask = _mask("bidirectional", MODS3, (40, 7, 37), [[33, 7, 0], [40, 2, 37]])
    q, k, v = _qkv(2, 1, 84, 16, seed=5, std=3.0)
    cfg = TileConfig(
        fwd_m=32,
        fwd_n=16,
        dkdv_m=16,
        dkdv_n=32,
        dq_m=16,
        dq_n=32,
        fwd_warps=1,
        fwd_stages=1,
        dkdv_warps=1,
        dkdv_stages=1,
        dq_warps=1,
        dq_stages=1,
    )
    _compare(q, k, v, mask, fn=lambda q, k, v, m: fused_graph_attention(q, k, v, m, config=cfg))
    q, k, v = _qkv(1, 1, 84, 16, seed=5, std=3.0)
    full = GraphMask(ModalGraph.named("full", MODS3), mask.layout, mask.valid_lengths[:1])
    _compare(q, k, v, full, scale=1.0, atol=5e-5, rtol=5e-5)


def test_full_graph_five_modalities_and_custom_edges():
    mods = ("a", "b", "c", "d", "e")
    lengths = (4, 9, 1, 17, 6)
    edges = {
        ("a", "e"),
        ("a", "b"),
        ("b", "b"),
        ("c", "a"),
        ("c", "d"),
        ("d", "c"),
        ("e", "a"),
        ("e", "b"),
        ("e", "c"),
        ("e", "d"),
    }
    mask = GraphMask(
        ModalGraph(mods, frozenset(edges), "custom"),
        SequenceLayout(mods, lengths),
        torch.tensor([[4, 3, 1, 0, 6], [1, 9, 0, 17, 2]], device=DEVICE),
    )
    q, k, v = _qkv(2, 2, sum(lengths), 16, seed=6)
    _compare(q, k, v, mask)
    q, k, v = _qkv(1, 1, 12, 16, seed=7)
    _compare(q, k, v, GraphMask(ModalGraph.named("full", mods), SequenceLayout(mods, (3, 1, 2, 4, 2))))


def test_non_power_of_two_head_dims_and_strided_inputs():
    mask = _mask("forward", MODS3, (5, 13, 11), [[5, 4, 7], [3, 13, 0]])
    q, k, v = _qkv(2, 2, 29, 24, dv=40, seed=8)
    out, _ = _compare(q, k, v, mask)
    assert out.shape == (2, 2, 29, 40)
    # (B, N, H, D) storage viewed as (B, H, N, D)
    g = torch.Generator().manual_seed(9)
    base = [torch.randn(2, 29, 2, 16, generator=g).to(DEVICE).requires_grad_() for _ in range(3)]
    q, k, v = [t.transpose(1, 2) for t in base]
    assert not q.is_contiguous()
    out = graph_attention(q, k, v, mask, backend="triton")
    ref = graph_attention(q, k, v, mask, backend="reference")
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=RTOL)
    do = torch.randn_like(out)
    for a, b in zip(torch.autograd.grad(out, base, do), torch.autograd.grad(ref, base, do)):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_half_precision_close_to_reference():
    mask = _mask("bidirectional", MODS3, (5, 13, 11), [[5, 0, 7], [3, 13, 11]])
    q, k, v = _qkv(2, 2, 29, 16, dtype=torch.float16, seed=10)
    out, _ = _compare(q, k, v, mask, atol=3e-3, rtol=3e-3)
    assert out.dtype == torch.float16


def test_dropout_matches_reference_with_the_kernel_mask():
    p, seed = 0.3, 1234
    mask = _mask("bidirectional", MODS3, (5, 13, 11), [[5, 0, 7], [3, 13, 11]])
    q, k, v = _qkv(2, 2, 29, 16, seed=11)
    keep = dropout_keep_mask(4, 29, p, seed, DEVICE).view(2, 2, 29, 29)
    assert 0.55 < keep.float().mean().item() < 0.85

    def ref(q, k, v, m):
        return torch.matmul(attention_weights(q, k, m, scale=16**-0.5) * keep / (1 - p), v)

    def tri(q, k, v, m):
        return fused_graph_attention(q, k, v, m, dropout_p=p, seed=seed)

    do = torch.randn(2, 2, 29, 16, generator=torch.Generator().manual_seed(12)).to(DEVICE)
    out, grads = _run(q, k, v, mask, tri, do)
    r_out, r_grads = _run(q, k, v, mask, ref, do)
    torch.testing.assert_close(out, r_out, atol=ATOL, rtol=RTOL)
    for g, rg in zip(grads, r_grads):
        torch.testing.assert_close(g, rg, atol=ATOL, rtol=RTOL)
    # same seed, same mask; the registry path draws its seed from torch's generator
    mask = _mask("self", MODS3, (3, 4, 5))
    q, k, v = [t[:1, :1, :12].detach() for t in (q, k, v)]
    torch.testing.assert_close(tri(q, k, v, mask), tri(q, k, v, mask), atol=0, rtol=0)
    torch.manual_seed(0)
    a = graph_attention(q, k, v, mask, backend="triton", dropout_p=p)
    torch.manual_seed(0)
    b = graph_attention(q, k, v, mask, backend="triton", dropout_p=p)
    torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.equal(a, graph_attention(q, k, v, mask, backend="triton", dropout_p=p))


def test_empty_batch_heads_and_backend_registry():
    assert get_backend("triton").check is check
    mask = _mask("forward", MODS3, (5, 13, 11))
    q, k, v = _qkv(1, 1, 29, 16, seed=13)
    q.grad = None
    out = graph_attention(q, k, v, mask, backend="triton")
    out.sum().backward()  # expanded (stride-0) upstream gradient
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------- refusals
def test_check_reasons(monkeypatch):
    mask = _mask("forward", MODS3, (5, 13, 11))
    q = torch.randn(1, 1, 29, 16, device=DEVICE)
    assert check(q, q, q, mask, dropout_p=0.0) == []
    assert check(q, q, q, mask, dropout_p=0.1) == []
    assert any("dropout_p" in r for r in check(q, q, q, mask, dropout_p=1.0))
    assert any("dtype" in r for r in check(q.double(), q.double(), q.double(), mask, dropout_p=0.0))
    big = torch.randn(1, 1, 29, 160, device=DEVICE)
    assert any("head dims" in r for r in check(big, big, big, mask, dropout_p=0.0))
    with pytest.raises(UnsupportedInput, match="head dims"):
        graph_attention(big, big, big, mask, backend="triton")
    for bad_scale in (0.0, -0.5):  # the forward kernel scales the row max of the raw logits
        with pytest.raises(UnsupportedInput, match="positive scale"):
            graph_attention(q, q, q, mask, backend="triton", scale=bad_scale)
    if not _ON_GPU:
        qb = q.bfloat16()
        assert any("bfloat16" in r for r in check(qb, qb, qb, mask, dropout_p=0.0))
    cpu = torch.randn(1, 1, 29, 16)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reasons = check(cpu, cpu, cpu, mask, dropout_p=0.0)
    assert any("CUDA" in r and "TRITON_INTERPRET" in r for r in reasons), reasons
    with pytest.raises(UnsupportedInput, match="CUDA"):
        graph_attention(cpu, cpu, cpu, mask, backend="triton")


def test_check_reports_missing_triton(monkeypatch):
    mask = _mask("forward", MODS3, (5, 13, 11))
    q = torch.randn(1, 1, 29, 16, device=DEVICE)
    monkeypatch.setitem(sys.modules, "triton", None)
    reasons = check(q, q, q, mask, dropout_p=0.0)
    assert any("triton is not importable" in r and "Error" in r for r in reasons), reasons


def test_package_imports_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None; import torch\n"
        "from gsit.graph import GraphMask, ModalGraph, SequenceLayout\n"
        "import gsit.attention.triton as t\n"
        "lay = SequenceLayout(('text', 'vision', 'audio'), (1, 2, 3))\n"
        "m = GraphMask(ModalGraph.named('forward'), lay)\n"
        "q = torch.zeros(1, 1, 6, 16)\n"
        "print(t.check(q, q, q, m, dropout_p=0.0))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "triton is not importable" in res.stdout


def test_small_tiles_helper():
    cfg = small_tiles(32, 16)
    assert (cfg.fwd_m, cfg.fwd_n, cfg.dq_m, cfg.dkdv_n) == (32, 16, 32, 16)
    with pytest.raises(ValueError):
        TileConfig(fwd_m=24)


# ------------------------------------------------------------------------------ torch.compile
def _fusion(backend: str, attn_dropout: float = 0.0):
    from gsit.models.gsit import GraphFusion

    torch.manual_seed(0)
    return GraphFusion(
        modalities=MODS3,
        d_model=16,
        num_heads=2,
        num_layers=2,
        attention_backend=backend,
        embed_dropout=0.0,
        attn_dropout=attn_dropout,
    ).to(DEVICE)


@pytest.mark.parametrize("aware", [False, True])
def test_compiled_fusion_is_one_graph_and_matches_eager(aware):
    """The kernels are custom operators: a GsiT fusion block with the triton backend compiles with
    ``fullgraph=True`` (no graph break around attention) and gives the eager values and gradients."""
    fusion = _fusion("triton").eval()
    layout = SequenceLayout(MODS3, (5, 9, 7))
    vl = torch.tensor([[5, 9, 7], [3, 4, 6]], device=DEVICE) if aware else None
    x = torch.randn(2, 21, 16, device=DEVICE, requires_grad=True)
    compiled = torch.compile(fusion, fullgraph=True, backend="aot_eager")  # raises on any graph break
    g = torch.randn(2, 3 * 32, device=DEVICE)
    want = fusion(x, layout, vl)
    (want_dx,) = torch.autograd.grad(want, x, g)
    got = compiled(x, layout, vl)
    (got_dx,) = torch.autograd.grad(got, x, g)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got_dx, want_dx, atol=1e-5, rtol=1e-5)
    torch._dynamo.reset()


def test_compiled_dropout_draws_a_fresh_mask_per_call():
    """The dropout seed is a device tensor drawn inside the graph: a compiled step does not freeze one
    mask at trace time, and torch.manual_seed still makes it reproducible."""
    mask = _mask("forward", MODS3, (3, 4, 5))
    q, k, v = [t.detach() for t in _qkv(1, 2, 12, 16, seed=21)]

    def fn(q, k, v):
        return graph_attention(q, k, v, mask, backend="triton", dropout_p=0.5)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    torch.manual_seed(3)
    a = compiled(q, k, v)
    b = compiled(q, k, v)
    assert not torch.equal(a, b)
    torch.manual_seed(3)
    torch.testing.assert_close(compiled(q, k, v), a, atol=0, rtol=0)
    torch._dynamo.reset()


@pytest.mark.parametrize("dropout", [0.0, 0.4])
def test_eager_path_and_custom_operator_give_identical_results(dropout):
    """Eager calls skip the custom-operator layer (an autograd.Function over the same launches); the
    operator, used under torch.compile, must give bit-identical outputs and gradients."""
    from gsit.attention.triton import function as F

    mask = _mask("forward", MODS3, (5, 9, 7), valid=[[5, 9, 7], [2, 0, 6]])
    q, k, v = _qkv(2, 2, 21, 16, seed=31)
    do = torch.randn(2, 2, 21, 16, generator=torch.Generator().manual_seed(32)).to(DEVICE)
    lengths = (5, 9, 7)
    ln = F._Launch(
        mask.graph.key_sets,
        lengths,
        None,
        0.25,
        dropout,
        F._seed_tensor(7, DEVICE) if dropout else None,
        F.default_config(16, q.dtype, q.device),
    )
    vl = F._valid_lengths(mask, lengths, q.device)
    eager = _run(q, k, v, mask, lambda q, k, v, m: F._graph_attention_op(q, k, v, vl, ln), do)
    adj, lens, tiles = F._pack(ln)
    op = _run(
        q,
        k,
        v,
        mask,
        lambda q, k, v, m: F._fwd_op(q, k, v, vl, adj, lens, ln.scale, ln.dropout_p, ln.seed, tiles)[0],
        do,
    )
    for a, b in zip([eager[0], *eager[1]], [op[0], *op[1]]):
        assert torch.equal(a, b)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the interpreter's numpy NaNs
def test_large_logits_with_padding_keep_padded_key_gradients_zero_and_finite():
    """Padded key rows inside a partial tile are not masked per tile in the dK/dV kernel (their rows are
    zeroed once at the end): with large logits their recomputed probabilities overflow, and dK/dV must
    still be exactly zero there and match the reference elsewhere."""
    mask = _mask("forward", MODS3, (5, 13, 11), valid=[[5, 6, 3], [2, 9, 7]])
    g = torch.Generator().manual_seed(51)
    # every real logit is about -400 (x log2 e): lse is far below 0, so a zero key's exp2(0 - lse) = inf
    q = (-(torch.rand(2, 2, 29, 16, generator=g) + 1.0) * 4).to(DEVICE).requires_grad_()
    k = ((torch.rand(2, 2, 29, 16, generator=g) + 1.0) * 4).to(DEVICE).requires_grad_()
    v = torch.randn(2, 2, 29, 16, generator=g).to(DEVICE).requires_grad_()
    out, (dq, dk, dv) = _compare(q, k, v, mask, atol=1e-4, rtol=1e-4)
    pos_ok = mask.position_valid(DEVICE)[:, None, :, None]
    for g in (dq, dk, dv):
        assert torch.isfinite(g).all() and (g.masked_select(~pos_ok) == 0).all()


def test_pack_and_key_sets_round_trip():
    from gsit.attention.triton import function as F

    for graph in ("forward", "backward", "self", "bidirectional", "full"):
        key_sets = ModalGraph.named(graph, MODS4).key_sets
        ln = F._Launch(key_sets, (3, 4, 5, 6), None, 1.0, 0.0, None, F.INTERPRETER_TILES)
        adj, lengths, tiles = F._pack(ln)
        assert F._key_sets(adj, 4) == key_sets and tuple(lengths) == (3, 4, 5, 6)
        assert F.TileConfig(*tiles) == F.INTERPRETER_TILES


# ------------------------------------------------------------------------------ the two autograd routes
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_eager_and_custom_op_routes_agree(dropout_p):
    """Eager calls run ``_EagerFunction``, compiled graphs the ``gsit::graph_attention_fwd/bwd`` custom
    operators: called directly on the same launch (padding, dropout with one seed), their outputs and
    dq/dk/dv are identical."""
    from gsit.attention.triton import function as fn

    mask = _mask("forward", MODS3, (5, 9, 7), valid=[[5, 9, 7], [3, 4, 6]])
    q, k, v = _qkv(2, 2, 21, 16, seed=5)
    do = _qkv(2, 2, 21, 16, seed=6)[0].detach()
    seed = torch.tensor([11], dtype=torch.int64, device=DEVICE) if dropout_p else None
    lengths = mask.layout.lengths
    ln = fn._Launch(
        mask.graph.key_sets,
        lengths,
        None,
        0.25,
        dropout_p,
        seed,
        fn.default_config(16, q.dtype, q.device, lengths),
    )
    vl = fn._valid_lengths(mask, lengths, q.device)
    eager = fn._graph_attention_op(q, k, v, vl, ln)  # not compiling: the autograd.Function route
    eager_grads = torch.autograd.grad(eager, (q, k, v), do)
    adj, lens, tiles = fn._pack(ln)
    op, _ = fn._fwd_op(q, k, v, vl, adj, lens, 0.25, dropout_p, seed, tiles)
    op_grads = torch.autograd.grad(op, (q, k, v), do)
    torch.testing.assert_close(op, eager, rtol=0, atol=0)
    for a, b in zip(op_grads, eager_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_triton_options_go_through_the_one_public_entry():
    """``graph_attention(..., backend="triton", seed=, config=)`` is the public entry; the old name is the
    same call; options a backend does not declare are refused by name."""
    mask = _mask("forward", MODS3, (3, 4, 5))
    q, k, v = [t.detach() for t in _qkv(1, 2, 12, 16, seed=21)]
    a = graph_attention(q, k, v, mask, backend="triton", dropout_p=0.5, seed=7, config=small_tiles())
    b = fused_graph_attention(q, k, v, mask, dropout_p=0.5, seed=7, config=small_tiles())
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"'pairs' takes no options \['seed'\]"):
        graph_attention(q, k, v, mask, backend="pairs", seed=7)
    with pytest.raises(UnsupportedInput, match="sequence length 11 != layout total 12"):
        fused_graph_attention(q[:, :, :11], k[:, :, :11], v[:, :, :11], mask)
