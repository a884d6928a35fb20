"""Tests of gsit.graph: the named modal graphs (SPEC §5, §8) and the agreement of every mask representation
(dense bool mask, pair list, FlexAttention mask_mod) with an independent oracle built from the edge set."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gsit.graph import GRAPH_NAMES, STRUCTURE_NAMES, GraphMask, ModalGraph, SequenceLayout

T, V, A = "text", "vision", "audio"
TVA = (T, V, A)
CROSS_PAIRS = {(x, y) for x in TVA for y in TVA if x != y}


# --------------------------------------------------------------------------- helpers
def oracle_mask(graph: ModalGraph, layout: SequenceLayout, valid_lengths: torch.Tensor | None) -> np.ndarray:
    """(B, N, N) bool from the edge set and each position's owner name (independent of gsit's tensors)."""
    owner = np.array([m for m, n in zip(layout.modalities, layout.lengths) for _ in range(n)], dtype=object)
    pos = np.array([i for n in layout.lengths for i in range(n)], dtype=np.int64)
    n_total = len(owner)
    edge = np.zeros((n_total, n_total), dtype=bool)
    for q, k in graph.edges:
        edge |= (owner == q)[:, None] & (owner == k)[None, :]
    if valid_lengths is None:
        return edge[None]
    out = []
    for row in valid_lengths.tolist():
        limit = np.array([row[layout.modalities.index(o)] for o in owner], dtype=np.int64)
        real = pos < limit if n_total else np.zeros(0, dtype=bool)
        out.append(edge & real[:, None] & real[None, :])
    return np.stack(out) if out else np.zeros((0, n_total, n_total), dtype=bool)


def mask_from_pairs(mask: GraphMask, batch: int) -> torch.Tensor:
    """(B, N, N) bool from query_groups() (the pairs backend's view) plus position validity."""
    n = mask.total
    out = torch.zeros(n, n, dtype=torch.bool)
    for qi, key_mods in mask.query_groups():
        for kj in key_mods:
            out[mask.layout.segment(qi), mask.layout.segment(kj)] = True
    # pairs() is the same list, spelt with names
    names = [
        (mask.layout.modalities[qi], mask.layout.modalities[kj])
        for qi, ks in mask.query_groups()
        for kj in ks
    ]
    assert mask.pairs() == names
    valid = mask.position_valid()
    if valid is None:
        return out[None].expand(batch, n, n)
    return out[None] & valid[:, :, None] & valid[:, None, :]


def mask_from_mask_mod(mask: GraphMask, batch: int) -> torch.Tensor:
    """(B, N, N) bool by evaluating mask_mod on every (b, q, kv) through broadcasting."""
    n = mask.total
    b = torch.arange(batch)[:, None, None]
    h = torch.zeros(1, 1, 1, dtype=torch.long)
    q = torch.arange(n)[None, :, None]
    kv = torch.arange(n)[None, None, :]
    return mask.mask_mod(b, h, q, kv).expand(batch, n, n)


def dense_batched(mask: GraphMask, batch: int) -> torch.Tensor:
    d = mask.dense_mask()
    return d[None].expand(batch, *d.shape) if d.dim() == 2 else d


def all_graphs(modalities: tuple[str, ...]) -> list[ModalGraph]:
    graphs = [ModalGraph.named(name, modalities) for name in GRAPH_NAMES]
    for name in STRUCTURE_NAMES:
        if name.startswith("structure") and set(modalities) != set(TVA):
            continue
        graphs.extend(ModalGraph.structure(name, modalities))
    graphs.append(ModalGraph.named("forward", modalities).without((modalities[-1],)))
    return graphs


LAYOUTS = [
    SequenceLayout(TVA, (46, 113, 203)),
    SequenceLayout(TVA, (3, 0, 5)),  # a zero-length segment
    SequenceLayout((T, V, A, "pose"), (4, 7, 2, 5)),  # four modalities
    SequenceLayout((A, T), (6, 3)),  # two modalities, another order
]


def valid_lengths_for(layout: SequenceLayout) -> torch.Tensor:
    g = torch.Generator().manual_seed(sum(layout.lengths))
    rows = [[int(torch.randint(0, n + 1, (1,), generator=g)) for n in layout.lengths] for _ in range(3)]
    rows[0] = list(layout.lengths)  # one sample without padding
    rows[1] = [0] + list(layout.lengths[1:])  # one sample whose first modality is empty
    return torch.tensor(rows, dtype=torch.long)


# --------------------------------------------------------------------------- named graphs
def test_named_forward_edges_are_the_paper_ifm_forward_cycle():
    assert ModalGraph.named("forward").edges == {(T, V), (V, A), (A, T)}


def test_named_backward_edges_are_the_paper_ifm_backward_cycle():
    assert ModalGraph.named("backward").edges == {(T, A), (V, T), (A, V)}


def test_named_self_edges_are_block_diagonal():
    g = ModalGraph.named("self")
    assert g.edges == {(T, T), (V, V), (A, A)}
    assert torch.equal(g.adjacency, torch.eye(3, dtype=torch.bool))


def test_named_bidirectional_edges_are_all_other_modalities():
    assert ModalGraph.named("bidirectional").edges == CROSS_PAIRS


def test_named_full_edges_are_everything():
    assert ModalGraph.named("full").edges == set(itertools.product(TVA, TVA))


def test_forward_backward_cover_each_cross_pair_exactly_once():
    fwd, bwd = ModalGraph.named("forward").edges, ModalGraph.named("backward").edges
    assert fwd.isdisjoint(bwd)
    assert fwd | bwd == CROSS_PAIRS
    assert len(fwd) + len(bwd) == 6


@pytest.mark.parametrize(
    "name, forward, backward",
    [
        ("original", {(T, V), (V, A), (A, T)}, {(T, A), (V, T), (A, V)}),
        ("structure1", {(V, A), (A, V), (T, A)}, {(T, V), (V, T), (A, T)}),
        ("structure2", {(T, V), (V, T), (A, V)}, {(T, A), (A, T), (V, A)}),
        ("structure3", {(T, V), (V, A), (A, V)}, {(T, A), (V, T), (A, T)}),
        ("self_only", {(T, T), (V, V), (A, A)}, {(T, T), (V, V), (A, A)}),
        ("bidirectional", CROSS_PAIRS, CROSS_PAIRS),
    ],
)
def test_structure_edges_match_paper_table4(name, forward, backward):
    fwd, bwd = ModalGraph.structure(name)
    assert fwd.edges == forward
    assert bwd.edges == backward
    if name.startswith("structure") or name == "original":
        # every ablation still covers the six cross pairs exactly once across its two encoders
        assert fwd.edges.isdisjoint(bwd.edges) and fwd.edges | bwd.edges == CROSS_PAIRS


def test_structure_original_follows_modality_names_in_any_order():
    for order in itertools.permutations(TVA):
        fwd, bwd = ModalGraph.structure("original", order)
        assert fwd.edges == {(T, V), (V, A), (A, T)}, order
        assert bwd.edges == {(T, A), (V, T), (A, V)}, order
        assert fwd.modalities == order


def test_structure_paper_ablations_follow_modality_names_in_any_order():
    for name in ("structure1", "structure2", "structure3"):
        ref = ModalGraph.structure(name)
        for order in itertools.permutations(TVA):
            got = ModalGraph.structure(name, order)
            assert got[0].edges == ref[0].edges and got[1].edges == ref[1].edges


def test_edge_names_use_arrow_spelling_in_sequence_order():
    assert ModalGraph.named("forward").edge_names() == ["text->vision", "vision->audio", "audio->text"]


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_named_cycles_any_number_of_modalities(m):
    mods = tuple(f"m{i}" for i in range(m))
    fwd, bwd = ModalGraph.named("forward", mods), ModalGraph.named("backward", mods)
    assert fwd.edges == {(mods[i], mods[(i + 1) % m]) for i in range(m)}
    assert bwd.edges == {(mods[i], mods[(i - 1) % m]) for i in range(m)}
    # every query modality reads exactly one other modality
    assert all(len(ks) == 1 and ks[0] != i for i, ks in enumerate(fwd.key_sets))
    assert all(len(ks) == 1 and ks[0] != i for i, ks in enumerate(bwd.key_sets))
    if m >= 3:
        assert fwd.edges.isdisjoint(bwd.edges)
    assert ModalGraph.named("bidirectional", mods).edges == {(x, y) for x in mods for y in mods if x != y}


def test_without_removes_edges_of_absent_modalities():
    g = ModalGraph.named("forward").without((A,))
    assert g.edges == {(T, V)}
    assert g.modalities == TVA


# --------------------------------------------------------------------------- errors
def test_named_unknown_graph_lists_known_names():
    with pytest.raises(ValueError) as e:
        ModalGraph.named("sideways")
    for name in GRAPH_NAMES:
        assert name in str(e.value)


def test_structure_unknown_name_lists_known_names():
    with pytest.raises(ValueError) as e:
        ModalGraph.structure("structure9")
    for name in STRUCTURE_NAMES:
        assert name in str(e.value)


def test_structure_paper_ablation_needs_text_vision_audio():
    with pytest.raises(ValueError, match="text/vision/audio"):
        ModalGraph.structure("structure2", (T, V, A, "pose"))


def test_graph_fewer_than_two_modalities_is_an_error():
    with pytest.raises(ValueError, match="at least 2"):
        ModalGraph.named("forward", (T,))


def test_graph_duplicate_modalities_is_an_error():
    with pytest.raises(ValueError, match="unique"):
        ModalGraph.named("self", (T, T, A))


def test_graph_edge_with_unknown_modality_is_an_error():
    with pytest.raises(ValueError, match="pose"):
        ModalGraph(TVA, frozenset({(T, "pose")}))


def test_layout_length_count_mismatch_is_an_error():
    with pytest.raises(ValueError, match="lengths"):
        SequenceLayout(TVA, (1, 2))


def test_layout_negative_length_is_an_error():
    with pytest.raises(ValueError, match="negative"):
        SequenceLayout(TVA, (1, -2, 3))


def test_graphmask_mismatched_layout_and_graph_is_an_error():
    with pytest.raises(ValueError, match="differ"):
        GraphMask(ModalGraph.named("forward"), SequenceLayout((T, A, V), (1, 2, 3)))


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(2, 2, dtype=torch.long),  # wrong number of modalities
        torch.zeros(2, dtype=torch.long),  # wrong rank
        torch.zeros(2, 3, 1, dtype=torch.long),
    ],
)
def test_graphmask_bad_valid_lengths_shape_is_an_error(bad):
    with pytest.raises(ValueError, match="valid_lengths"):
        GraphMask(ModalGraph.named("forward"), SequenceLayout(TVA, (1, 2, 3)), bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bool])
def test_graphmask_non_integer_valid_lengths_is_an_error(dtype):
    with pytest.raises(ValueError, match="integer"):
        GraphMask(ModalGraph.named("forward"), SequenceLayout(TVA, (1, 2, 3)), torch.ones(2, 3, dtype=dtype))


# --------------------------------------------------------------------------- representations agree
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda lay: "-".join(map(str, lay.lengths)))
@pytest.mark.parametrize("padded", [False, True], ids=["nopad", "validlen"])
def test_representations_agree_with_oracle_for_every_graph(layout, padded):
    valid = valid_lengths_for(layout) if padded else None
    batch = 3 if padded else 2
    for graph in all_graphs(layout.modalities):
        mask = GraphMask(graph, layout, valid)
        expected = torch.from_numpy(oracle_mask(graph, layout, valid)).expand(
            batch, layout.total, layout.total
        )
        dense = dense_batched(mask, batch)
        assert dense.dtype == torch.bool
        assert torch.equal(dense, expected), graph.name
        assert torch.equal(mask_from_pairs(mask, batch), expected), graph.name
        assert torch.equal(mask_from_mask_mod(mask, batch), expected), graph.name


def test_dense_mask_shapes_with_and_without_valid_lengths():
    layout = SequenceLayout(TVA, (2, 3, 4))
    g = ModalGraph.named("forward")
    assert GraphMask(g, layout).dense_mask().shape == (9, 9)
    assert GraphMask(g, layout, torch.tensor([[1, 2, 3], [2, 3, 4]])).dense_mask().shape == (2, 9, 9)


def test_query_groups_skip_empty_query_blocks_and_keyless_queries():
    layout = SequenceLayout(TVA, (3, 0, 5))
    groups = GraphMask(ModalGraph.named("forward"), layout).query_groups()
    assert groups == [(0, (1,)), (2, (0,))]  # vision is empty
    groups = GraphMask(
        ModalGraph.named("forward").without((A,)), SequenceLayout(TVA, (2, 2, 2))
    ).query_groups()
    assert groups == [(0, (1,))]


def test_position_valid_marks_the_first_valid_lengths_positions():
    layout = SequenceLayout(TVA, (2, 3, 1))
    mask = GraphMask(ModalGraph.named("self"), layout, torch.tensor([[1, 3, 0]]))
    assert mask.position_valid().tolist() == [[True, False, True, True, True, False]]


# --------------------------------------------------------------------------- caching
def test_dense_mask_is_cached_per_graph_lengths_and_device():
    g = ModalGraph.named("forward")
    first = GraphMask(g, SequenceLayout(TVA, (46, 113, 203))).dense_mask()
    again = GraphMask(ModalGraph.named("forward"), SequenceLayout(TVA, (46, 113, 203))).dense_mask("cpu")
    assert again is first
    other = GraphMask(g, SequenceLayout(TVA, (46, 113, 204))).dense_mask()
    assert other is not first
    assert (
        GraphMask(ModalGraph.named("backward"), SequenceLayout(TVA, (46, 113, 203))).dense_mask() is not first
    )


def test_position_valid_and_padded_dense_mask_are_cached_on_the_mask():
    mask = GraphMask(ModalGraph.named("forward"), SequenceLayout(TVA, (2, 3, 4)), torch.tensor([[1, 2, 3]]))
    assert mask.position_valid() is mask.position_valid()
    assert mask.dense_mask() is mask.dense_mask()


def test_graph_from_lists_and_sets_is_hashable_and_equal():
    g = ModalGraph([T, V, A], {(T, V), (V, A), (A, T)})  # type: ignore[arg-type]
    assert g.modalities == TVA and isinstance(g.edges, frozenset)
    assert g.edges == ModalGraph.named("forward").edges
    assert GraphMask(g, SequenceLayout(TVA, (1, 2, 3))).dense_mask().shape == (6, 6)


# --------------------------------------------------------------------------- property test
@st.composite
def layouts_and_lengths(draw):
    m = draw(st.integers(2, 4))
    mods = tuple(draw(st.permutations(["text", "vision", "audio", "pose"]))[:m])
    lengths = tuple(draw(st.lists(st.integers(0, 9), min_size=m, max_size=m)))
    batch = draw(st.integers(1, 3))
    valid = draw(
        st.one_of(
            st.none(),
            st.lists(st.tuples(*[st.integers(0, n) for n in lengths]), min_size=batch, max_size=batch),
        )
    )
    edges = draw(
        st.one_of(
            st.sampled_from(GRAPH_NAMES),
            st.sets(st.tuples(st.sampled_from(mods), st.sampled_from(mods)), max_size=m * m),
        )
    )
    return mods, lengths, valid, edges


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(layouts_and_lengths())
def test_property_pairs_and_mask_mod_agree_with_dense(case):
    mods, lengths, valid, edges = case
    graph = ModalGraph.named(edges, mods) if isinstance(edges, str) else ModalGraph(mods, frozenset(edges))
    layout = SequenceLayout(mods, lengths)
    vl = torch.tensor(valid, dtype=torch.long).reshape(-1, len(mods)) if valid is not None else None
    mask = GraphMask(graph, layout, vl)
    batch = vl.shape[0] if vl is not None else 2
    dense = dense_batched(mask, batch)
    assert torch.equal(dense, torch.from_numpy(oracle_mask(graph, layout, vl)).expand_as(dense))
    assert torch.equal(mask_from_pairs(mask, batch), dense)
    assert torch.equal(mask_from_mask_mod(mask, batch), dense)
    if vl is not None:
        real = mask.position_valid()  # (B, N)
        assert not dense[~real].any(), "a padded query row may attend to something"
        assert not dense.transpose(1, 2)[~real].any(), "a padded key column is readable"
