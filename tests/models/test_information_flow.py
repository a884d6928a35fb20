"""Which input positions each output position of GsiT's graph-masked encoders can depend on (issue 16, 3a).

One encoder layer (pre-LN: ``x + MHA(LN(x))``, then ``x + FFN(LN(x))``): LayerNorm, the QKV projection and
the FFN act on each position alone, so output position p of sample b depends on input position p' of
sample b' exactly when b == b' and either p == p' (the residual) or the mask lets p read p' (p's modality
has an edge to p''s modality and, in padding-aware mode, both positions are real).  With A the (B, N, N)
"may attend" mask and I the identity, the support of the Jacobian d out / d in is ``A | I``, per sample.

Depth composes: an encoder of L layers has support ``(A | I)^L`` (boolean matrix power), i.e. information
travels along graph paths of at most L edges.  So the paper's "no information disorder" (every query reads
ONE key block per softmax) is a one-layer statement: in GsiT's forward encoder (the 3-cycle T<-V<-A<-T)
text output already depends on audio after two layers, through vision (SPEC §5).  The fusion (forward and
backward encoders side by side, then the block-diagonal self encoder, each L layers) has support
``S^L (F^L | B^L)``.

How a support is measured (each is compared for equality with the expected one, so a missing dependency
fails too, not only a forbidden one):

* ``jacobian_support``: ``torch.autograd.functional.jacobian`` in float64 (reference, pairs);
* ``vjp_support``: one vector-Jacobian product with a random cotangent per output position (a row block of
  the Jacobian; exact zeros stay exact zeros) -- the cheaper form for deep stacks and Triton;
* ``perturbation_support``: the input at one position replaced by large noise, output positions that
  changed *at all* (bit-wise) -- for backends without a CPU backward (flex) and for the bit-identity claim.

Flex on CPU has no backward (its own ``check`` refuses inputs that need grad; those cases skip with its
reasons) and Triton runs under its CPU interpreter (fp32 only; slow: its position-level cases are marked
slow, a block-level perturbation case stays in the default run).  Negative controls: a mask with one extra
edge, and a mask that ignores padding, must make the checker fail.
"""

from __future__ import annotations

import pytest
import torch

from gsit.attention import available_backends, check_backend
from gsit.graph import STRUCTURE_NAMES, GraphMask, ModalGraph, SequenceLayout
from gsit.models.gsit import GraphEncoder, GraphEncoderLayer, GraphFusion

MODS = ("text", "vision", "audio")
LAYOUT = SequenceLayout(MODS, (3, 5, 4))
# sample 0: the last text and audio positions are padding; sample 1: one text token, no vision at all
VALID = ((2, 5, 3), (1, 0, 4))
D, HEADS = 8, 2
GRAPHS = {
    f"{s}.{enc}": g
    for s in STRUCTURE_NAMES
    for enc, g in zip(("forward", "backward"), ModalGraph.structure(s))
}

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


# ----------------------------------------------------------------------------- expected supports
def one_step(mask: GraphMask, batch: int) -> torch.Tensor:
    """(B, N, N) bool: ``A | I`` -- output position p may depend on input position p' in one layer."""
    a = mask.dense_mask("cpu")
    a = a.expand(batch, -1, -1) if a.dim() == 2 else a
    return a | torch.eye(mask.total, dtype=torch.bool)


def bool_power(step: torch.Tensor, times: int) -> torch.Tensor:
    """``step`` composed ``times`` times (boolean matrix product): paths of at most ``times`` edges."""
    out = torch.eye(step.shape[-1], dtype=torch.bool).expand_as(step)
    for _ in range(times):
        out = (step.double() @ out.double()) > 0
    return out


def across_samples(per_sample: torch.Tensor) -> torch.Tensor:
    """(B, N, N) -> (B, N, B, N): no position depends on another sample."""
    b, n, _ = per_sample.shape
    out = torch.zeros(b, n, b, n, dtype=torch.bool)
    for i in range(b):
        out[i, :, i, :] = per_sample[i]
    return out


# ----------------------------------------------------------------------------- measured supports
def jacobian_support(fn, x: torch.Tensor) -> torch.Tensor:
    """(B, N, B, N) bool from the full Jacobian (B, N, D, B, N, D) of ``fn`` at ``x``."""
    jac = torch.autograd.functional.jacobian(fn, x, vectorize=True)
    return jac.abs().amax(dim=(2, 5)) > 0


def vjp_support(fn, x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(B, N, B, N) bool: one vjp per output position with a random cotangent on that position."""
    g = torch.Generator().manual_seed(seed)
    x = x.detach().requires_grad_(True)
    out = fn(x)
    b, n = out.shape[:2]
    sup = torch.zeros(b, n, *x.shape[:2], dtype=torch.bool)
    for i in range(b):
        for p in range(n):
            u = torch.zeros_like(out)
            u[i, p] = torch.randn(out.shape[-1], generator=g, dtype=out.dtype)
            (grad,) = torch.autograd.grad(out, x, u, retain_graph=True)
            sup[i, p] = grad.abs().amax(dim=-1) > 0
    return sup


@torch.no_grad()
def perturbation_support(fn, x: torch.Tensor, scale: float = 100.0, seed: int = 0) -> torch.Tensor:
    """(B, N, B, N) bool: output positions that change at all when one input position gets large noise."""
    g = torch.Generator().manual_seed(seed)
    base = fn(x)
    b, n = x.shape[:2]
    sup = torch.zeros(*base.shape[:2], b, n, dtype=torch.bool)
    for i in range(b):
        for p in range(n):
            x2 = x.clone()
            x2[i, p] += scale * torch.randn(x.shape[-1], generator=g, dtype=x.dtype)
            sup[:, :, i, p] = (fn(x2) != base).any(dim=-1)
    return sup


def assert_flow(got: torch.Tensor, expected: torch.Tensor, layout: SequenceLayout) -> None:
    """Equal (B, N, B, N) supports, or an AssertionError naming the first offending positions."""
    if torch.equal(got, expected):
        return
    ids = layout.modality_ids().tolist()
    pos = layout.positions_in_segment().tolist()

    def name(i):
        return f"{layout.modalities[ids[i]]}[{pos[i]}]"

    lines = []
    for kind, bad in (("forbidden", got & ~expected), ("missing", expected & ~got)):
        for b, p, b2, p2 in bad.nonzero().tolist()[:5]:
            lines.append(f"{kind}: sample {b} {name(p)} <- sample {b2} {name(p2)}")
    raise AssertionError(f"{int((got != expected).sum())} dependencies differ:\n  " + "\n  ".join(lines))


# ----------------------------------------------------------------------------- builders
def _mask(graph: ModalGraph, padded: bool) -> GraphMask:
    return GraphMask(graph, LAYOUT, torch.tensor(VALID) if padded else None)


def _layer(backend: str, dtype: torch.dtype, seed: int = 0) -> GraphEncoderLayer:
    torch.manual_seed(seed)
    layer = GraphEncoderLayer(
        d_model=D,
        num_heads=HEADS,
        attn_dropout=0.0,
        relu_dropout=0.0,
        res_dropout=0.0,
        attention_semantics="paper",
        attention_backend=backend,
    )
    return layer.to(dtype).eval()


def _x(dtype: torch.dtype, width: int = D, batch: int = len(VALID), n: int = LAYOUT.total) -> torch.Tensor:
    return torch.randn(batch, n, width, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(
        dtype
    )


def _dtype(backend: str) -> torch.dtype:
    return torch.float32 if backend == "triton" else torch.float64  # triton takes no float64


def _skip_if_refused(backend: str, mask: GraphMask, x: torch.Tensor, *, grad: bool) -> None:
    """Skip only where the backend's own check refuses (flex: no CPU backward); the probe itself must pass
    the checks every backend shares (the oracle accepts it), so a wrong probe cannot turn into a skip."""
    q = torch.zeros(x.shape[0], HEADS, mask.total, D // HEADS, dtype=x.dtype, requires_grad=grad)
    with torch.set_grad_enabled(grad):
        assert check_backend("reference", q, q, q, mask) == []
        reasons = check_backend(backend, q, q, q, mask)
    if reasons:
        pytest.skip(f"{backend} refuses: " + "; ".join(reasons))


def _case(backend: str, graph: str, padding: str):
    """Triton (interpreter) cases are slow; flex (unfused eager on CPU) keeps the original forward graph
    in the default run; reference and pairs run every case."""
    slow = backend == "triton" or (backend == "flex" and graph != "original.forward")
    marks = [pytest.mark.slow] if slow else []
    return pytest.param(backend, graph, padding, marks=marks, id=f"{backend}-{graph}-{padding}")


BACKENDS = tuple(available_backends())
PADDING = ("dense", "padded")


# ----------------------------------------------------------------------------- one layer
@pytest.mark.parametrize(
    "backend,graph,padding", [_case(b, g, p) for b in BACKENDS for g in GRAPHS for p in PADDING]
)
def test_layer_jacobian_support_is_the_graph(backend, graph, padding):
    dtype = _dtype(backend)
    mask = _mask(GRAPHS[graph], padding == "padded")
    x = _x(dtype)
    _skip_if_refused(backend, mask, x, grad=True)
    layer = _layer(backend, dtype)
    support = vjp_support if backend == "triton" else jacobian_support
    got = support(lambda t: layer(t, mask), x)
    assert_flow(got, across_samples(one_step(mask, x.shape[0])), LAYOUT)


@pytest.mark.parametrize(
    "backend,graph,padding", [_case(b, g, p) for b in BACKENDS for g in GRAPHS for p in PADDING]
)
def test_layer_output_is_bit_identical_when_a_forbidden_position_changes(backend, graph, padding):
    dtype = _dtype(backend)
    mask = _mask(GRAPHS[graph], padding == "padded")
    x = _x(dtype)
    _skip_if_refused(backend, mask, x, grad=False)
    layer = _layer(backend, dtype)
    got = perturbation_support(lambda t: layer(t, mask), x)
    assert_flow(got, across_samples(one_step(mask, x.shape[0])), LAYOUT)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("structure", ("original", "bidirectional"))
def test_layer_blocks_unchanged_when_every_forbidden_block_gets_large_noise(backend, structure):
    """Block level, all at once: the real rows of each output block are bit-identical when all the blocks
    its edges do not name and every padded position get noise of std 1e3 -- and change when a named
    block's real positions do."""
    mods, lengths, valid = MODS, (2, 3, 2), torch.tensor([[2, 3, 1]])
    layout = SequenceLayout(mods, lengths)
    dtype = _dtype(backend)
    graph = ModalGraph.structure(structure)[0]
    mask = GraphMask(graph, layout, valid)
    x = _x(dtype, batch=1, n=layout.total)
    _skip_if_refused(backend, mask, x, grad=False)
    layer = _layer(backend, dtype)
    real = mask.position_valid("cpu")[0]  # (N,)
    ids = layout.modality_ids()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        base = layer(x, mask)
        for i, m in enumerate(mods):
            out_block = layout.segment(i)
            readable = {i} | set(graph.key_sets[i])
            forbidden = ~torch.isin(ids, torch.tensor(sorted(readable))) | ~real
            x2 = x.clone()
            x2[0, forbidden] += 1e3 * torch.randn(int(forbidden.sum()), D, generator=g, dtype=dtype)
            rows = torch.arange(layout.total)[out_block][real[out_block]]  # the block's real rows
            assert torch.equal(layer(x2, mask)[:, rows], base[:, rows]), (m, graph.edge_names())
            for j in graph.key_sets[i]:  # a named, real key block does reach the block's real rows
                x3 = x.clone()
                sel = (ids == j) & real
                x3[0, sel] += torch.randn(int(sel.sum()), D, generator=g, dtype=dtype)  # (not a constant:
                # LayerNorm removes a shift shared by all features)
                changed = (layer(x3, mask) != base)[0].any(-1)  # (N,)
                assert changed[out_block][real[out_block]].all(), (m, mods[j])


def test_graphs_each_query_reads_one_key_block_in_the_paper_structures():
    """The paper's "no information disorder": every query block reads exactly one other block per layer
    in the original and Appendix-C structures; bidirectional (the paper's counter-example) reads two."""
    for name, graph in GRAPHS.items():
        sizes = {len(ks) for ks in graph.key_sets}
        if name.startswith("bidirectional"):
            assert sizes == {2}
        elif name.startswith("self_only"):
            assert graph.adjacency.equal(torch.eye(3, dtype=torch.bool))
        else:
            assert sizes == {1} and not graph.adjacency.diagonal().any(), name


# ----------------------------------------------------------------------------- the checker itself
def test_vjp_and_perturbation_supports_agree_with_the_full_jacobian():
    mask = _mask(GRAPHS["original.forward"], True)
    layer = _layer("reference", torch.float64)
    x = _x(torch.float64)
    full = jacobian_support(lambda t: layer(t, mask), x)
    assert torch.equal(vjp_support(lambda t: layer(t, mask), x), full)
    assert torch.equal(perturbation_support(lambda t: layer(t, mask), x), full)
    assert full.sum() > full.shape[0] * full.shape[1]  # not just the residual diagonal


@pytest.mark.parametrize(
    "support", (jacobian_support, perturbation_support), ids=("jacobian", "perturbation")
)
@pytest.mark.parametrize("backend", ("reference", "pairs"))
def test_checker_fails_on_an_extra_edge_or_ignored_padding(backend, support):
    declared = GRAPHS["original.forward"]  # text<-vision, vision<-audio, audio<-text
    extra = ModalGraph(MODS, declared.edges | {("text", "audio")}, "forward+text->audio")
    layer = _layer(backend, torch.float64)
    x = _x(torch.float64)
    expected = across_samples(one_step(_mask(declared, True), x.shape[0]))
    got = support(lambda t: layer(t, _mask(extra, True)), x)
    with pytest.raises(AssertionError, match=r"forbidden: sample 0 text\[0\] <- sample 0 audio\[0\]"):
        assert_flow(got, expected, LAYOUT)
    got = support(lambda t: layer(t, _mask(declared, False)), x)  # padding read as real positions
    with pytest.raises(AssertionError, match="forbidden"):
        assert_flow(got, expected, LAYOUT)


# ----------------------------------------------------------------------------- depth and the fusion
def _encoder(backend: str, num_layers: int, share: bool, width: int = D) -> GraphEncoder:
    torch.manual_seed(0)
    enc = GraphEncoder(
        d_model=width,
        num_heads=HEADS,
        num_layers=num_layers,
        share_layers=share,
        embed_dropout=0.0,
        attn_dropout=0.0,
        attention_backend=backend,
    )
    return enc.double().eval()


@pytest.mark.parametrize("backend", ("reference", "pairs"))
@pytest.mark.parametrize("num_layers,share", ((1, True), (2, True), (3, True), (2, False)))
@pytest.mark.parametrize("graph", ("original.forward", "structure1.backward", "self_only.forward"))
def test_encoder_support_is_the_graphs_reachability_in_L_steps(backend, num_layers, share, graph):
    mask = _mask(GRAPHS[graph], True)
    enc = _encoder(backend, num_layers, share)
    x = _x(torch.float64)
    got = vjp_support(lambda t: enc(t, mask), x)
    assert_flow(got, across_samples(bool_power(one_step(mask, x.shape[0]), num_layers)), LAYOUT)


def test_forward_cycle_reaches_every_block_after_two_layers_not_one():
    """What depth does to the forward encoder (text<-vision<-audio<-text): block reachability."""
    mask = GraphMask(GRAPHS["original.forward"], LAYOUT)
    ids = LAYOUT.modality_ids()
    for layers, text_reads in ((1, {"text", "vision"}), (2, {"text", "vision", "audio"})):
        reach = bool_power(one_step(mask, 1), layers)[0]  # (N, N)
        blocks = {MODS[j] for j in ids[reach[ids == 0].any(0)].tolist()}
        assert blocks == text_reads, layers


def _fusion_support(
    fusion: GraphFusion, x: torch.Tensor, layout: SequenceLayout, valid: torch.Tensor | None
) -> torch.Tensor:
    """Support of the self encoder's output (B, N, 2d) -- the fusion's last sequence-shaped state, captured
    by a hook while ``fusion.forward`` runs as it is -- with respect to the fusion input (B, N, d)."""
    captured = {}
    hook = fusion.self_encoder.register_forward_hook(lambda mod, args, out: captured.update(out=out))
    try:

        def fn(t):
            fusion(t, layout, valid)
            return captured["out"]

        return vjp_support(fn, x)
    finally:
        hook.remove()


MODS4 = ("text", "vision", "audio", "extra")
LAYOUT_FOR = {3: LAYOUT, 4: SequenceLayout(MODS4, (2, 3, 2, 3))}
VALID_FOR = {3: torch.tensor(VALID), 4: torch.tensor([[2, 2, 1, 3], [1, 3, 0, 2]])}


@pytest.mark.parametrize("backend", ("reference", "pairs"))
@pytest.mark.parametrize("num_layers", (1, 2))
@pytest.mark.parametrize(
    "mods,structure", ((MODS, "original"), (MODS, "self_only"), (MODS, "structure2"), (MODS4, "original"))
)
def test_fusion_support_is_self_after_forward_or_backward(backend, num_layers, mods, structure):
    torch.manual_seed(0)
    fusion = GraphFusion(
        modalities=mods,
        d_model=D,
        num_heads=HEADS,
        num_layers=num_layers,
        structure=structure,
        embed_dropout=0.0,
        attn_dropout=0.0,
        attention_backend=backend,
    )
    fusion = fusion.double().eval()
    layout, valid = LAYOUT_FOR[len(mods)], VALID_FOR[len(mods)]
    x = _x(torch.float64, n=layout.total)
    b = x.shape[0]
    masks = {n: GraphMask(g, layout, valid) for n, g in fusion.graphs.items()}
    cross = bool_power(one_step(masks["forward"], b), num_layers) | bool_power(
        one_step(masks["backward"], b), num_layers
    )
    expected = (bool_power(one_step(masks["self"], b), num_layers).double() @ cross.double()) > 0
    got = _fusion_support(fusion, x, layout, valid)
    assert_flow(got, across_samples(expected), layout)
    if len(mods) == 4 and num_layers == 1:  # a 4-cycle: text never reads audio (two steps away) in one layer
        ids = layout.modality_ids()
        assert not got[:, ids == 0][:, :, :, ids == 2].any()
        assert got[0, ids == 0][:, 0, ids == 1].any()
