"""Modal graphs and sequence layouts: the single source of truth for who may attend to whom.

A multimodal sequence is the concatenation along time of one segment per modality, e.g.
``[text; vision; audio]``.  :class:`SequenceLayout` knows the segment lengths, :class:`ModalGraph` knows
the allowed directed *query -> key* modality edges ("text->vision" means text queries read vision keys,
the paper's V -> T edge).  :class:`GraphMask` binds the two (plus optional per-sample valid lengths for
padding-aware attention) and derives every representation the attention backends need:

* ``dense_mask()``  -- boolean (N, N) or (B, N, N) "may attend" matrix (the reference backend's oracle);
* ``query_groups()`` -- per query block, the key blocks it reads (the ``pairs`` backend);
* ``mask_mod``      -- a predicate ``(b, h, q_idx, kv_idx) -> bool`` for FlexAttention.

All of them are computed from the same (M, M) adjacency and the same per-position modality ids, with
vectorised comparisons, and the static parts are cached per shape.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch

DEFAULT_MODALITIES = ("text", "vision", "audio")

# The paper's structures, written as (query, key) edges over the three canonical modalities (SPEC §5, §8).
# Each entry: (forward-encoder edges, backward-encoder edges).
_T, _V, _A = "text", "vision", "audio"
PAPER_STRUCTURES: dict[str, tuple[tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]]] = {
    "original": (((_T, _V), (_V, _A), (_A, _T)), ((_T, _A), (_V, _T), (_A, _V))),
    # Appendix C of the paper (the code comment's forward audio row is a typo; SPEC §8).
    "structure1": (((_V, _A), (_A, _V), (_T, _A)), ((_T, _V), (_V, _T), (_A, _T))),
    "structure2": (((_T, _V), (_V, _T), (_A, _V)), ((_T, _A), (_A, _T), (_V, _A))),
    "structure3": (((_T, _V), (_V, _A), (_A, _V)), ((_T, _A), (_V, _T), (_A, _T))),
    "self_only": (((_T, _T), (_V, _V), (_A, _A)), ((_T, _T), (_V, _V), (_A, _A))),
}
GRAPH_NAMES = ("forward", "backward", "self", "bidirectional", "full")
STRUCTURE_NAMES = tuple(PAPER_STRUCTURES) + ("bidirectional",)


def _edge_name(q: str, k: str) -> str:
    return f"{q}->{k}"


@dataclass(frozen=True)
class ModalGraph:
    """Allowed directed query->key edges between modalities.

    ``modalities`` is the order of the segments in the concatenated sequence; ``edges`` is a set of
    ``(query_modality, key_modality)`` pairs.  A query attends jointly (one softmax) to the union of
    the key blocks its edges name.
    """

    modalities: tuple[str, ...]
    edges: frozenset[tuple[str, str]]
    name: str = "custom"

    def __post_init__(self) -> None:
        # normalise lists/sets to hashable tuples/frozensets: graphs are cache keys
        object.__setattr__(self, "modalities", tuple(self.modalities))
        object.__setattr__(self, "edges", frozenset(tuple(e) for e in self.edges))
        if len(self.modalities) < 2:
            raise ValueError(f"a modal graph needs at least 2 modalities, got {list(self.modalities)}")
        if len(set(self.modalities)) != len(self.modalities):
            raise ValueError(f"modality names must be unique, got {list(self.modalities)}")
        unknown = sorted({m for e in self.edges for m in e} - set(self.modalities))
        if unknown:
            raise ValueError(
                f"graph {self.name!r}: edges name unknown modalities {unknown}; "
                f"known: {list(self.modalities)}"
            )

    # ----------------------------------------------------------------- named graphs
    @classmethod
    def named(cls, name: str, modalities: tuple[str, ...] = DEFAULT_MODALITIES) -> ModalGraph:
        """``forward``: each modality reads the next one in sequence order (text->vision, vision->audio,
        audio->text for the default order); ``backward``: the previous one; ``self``: itself;
        ``bidirectional``: all others jointly; ``full``: everything (the Vanilla transformer)."""
        mods = tuple(modalities)
        m = len(mods)
        if name == "forward":
            edges = {(mods[i], mods[(i + 1) % m]) for i in range(m)}
        elif name == "backward":
            edges = {(mods[i], mods[(i - 1) % m]) for i in range(m)}
        elif name == "self":
            edges = {(x, x) for x in mods}
        elif name == "bidirectional":
            edges = {(x, y) for x in mods for y in mods if x != y}
        elif name == "full":
            edges = {(x, y) for x in mods for y in mods}
        else:
            raise ValueError(
                f"unknown graph {name!r}; known graphs: {list(GRAPH_NAMES)} "
                f"(paper structures via ModalGraph.structure: {list(STRUCTURE_NAMES)})"
            )
        return cls(mods, frozenset(edges), name)

    @classmethod
    def structure(
        cls, name: str, modalities: tuple[str, ...] = DEFAULT_MODALITIES
    ) -> tuple[ModalGraph, ModalGraph]:
        """The (forward, backward) encoder graphs of a paper mask structure (Table 4)."""
        mods = tuple(modalities)
        if name == "original" and set(mods) == {_T, _V, _A}:
            # the paper's cycles are defined by modality names, whatever the concatenation order
            fwd, bwd = PAPER_STRUCTURES["original"]
            return cls(mods, frozenset(fwd), "forward"), cls(mods, frozenset(bwd), "backward")
        if name == "original":  # any other modality set: the cycles follow the sequence order
            return cls.named("forward", mods), cls.named("backward", mods)
        if name == "bidirectional":
            g = cls.named("bidirectional", mods)
            return g, g
        if name == "self_only":
            g = cls.named("self", mods)
            return ModalGraph(mods, g.edges, "self_only"), ModalGraph(mods, g.edges, "self_only")
        if name not in PAPER_STRUCTURES:
            raise ValueError(f"unknown mask structure {name!r}; known: {list(STRUCTURE_NAMES)}")
        if set(mods) != {_T, _V, _A}:
            raise ValueError(f"structure {name!r} is defined for text/vision/audio only, got {list(mods)}")
        fwd, bwd = PAPER_STRUCTURES[name]
        return (cls(mods, frozenset(fwd), f"{name}.forward"), cls(mods, frozenset(bwd), f"{name}.backward"))

    def without(self, absent: tuple[str, ...]) -> ModalGraph:
        """The same graph without the edges into and out of ``absent`` modalities (missing modalities)."""
        edges = frozenset(e for e in self.edges if e[0] not in absent and e[1] not in absent)
        return ModalGraph(self.modalities, edges, f"{self.name}-without-{'-'.join(absent)}")

    # ----------------------------------------------------------------- derived views
    @functools.cached_property
    def adjacency(self) -> torch.Tensor:
        """(M, M) bool, ``adjacency[i, j]`` = modality i's queries may read modality j's keys."""
        idx = {m: i for i, m in enumerate(self.modalities)}
        adj = torch.zeros(len(self.modalities), len(self.modalities), dtype=torch.bool)
        for q, k in self.edges:
            adj[idx[q], idx[k]] = True
        return adj

    @property
    def key_sets(self) -> tuple[tuple[int, ...], ...]:
        """For each query modality index, the sorted key modality indices it reads (plain Python over the
        edge set: cheap, and traceable by torch.compile, unlike a cached property)."""
        idx = {m: i for i, m in enumerate(self.modalities)}
        return tuple(tuple(sorted(idx[k] for q, k in self.edges if q == m)) for m in self.modalities)

    def edge_names(self) -> list[str]:
        order = {m: i for i, m in enumerate(self.modalities)}
        return [_edge_name(q, k) for q, k in sorted(self.edges, key=lambda e: (order[e[0]], order[e[1]]))]


@dataclass(frozen=True)
class SequenceLayout:
    """Segment lengths of the concatenated sequence, in sequence order."""

    modalities: tuple[str, ...]
    lengths: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.modalities) != len(self.lengths):
            raise ValueError(
                f"layout: {len(self.modalities)} modalities {list(self.modalities)} but "
                f"{len(self.lengths)} lengths {list(self.lengths)}"
            )
        if any(int(n) < 0 for n in self.lengths):
            raise ValueError(f"layout: negative segment length in {dict(zip(self.modalities, self.lengths))}")

    @property
    def total(self) -> int:
        return int(sum(self.lengths))

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for n in self.lengths:
            out.append(acc)
            acc += n
        return tuple(out)

    def segment(self, i: int) -> slice:
        start = self.offsets[i]
        return slice(start, start + self.lengths[i])

    def modality_ids(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N,) long: the modality index of every position."""
        return _modality_ids(self.lengths, str(device) if device is not None else "cpu")

    def lengths_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(M,) long segment lengths on ``device`` (cached: no host-device copy per call)."""
        return _long_tensor(self.lengths, str(device) if device is not None else "cpu")

    def offsets_tensor(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(M,) long segment offsets on ``device`` (cached)."""
        return _long_tensor(self.offsets, str(device) if device is not None else "cpu")

    def positions_in_segment(self, device: torch.device | str | None = None) -> torch.Tensor:
        """(N,) long: the position of every token inside its own segment."""
        return _positions(self.lengths, str(device) if device is not None else "cpu")


@functools.lru_cache(maxsize=256)
def _modality_ids(lengths: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths)).to(device)


@functools.lru_cache(maxsize=256)
def _positions(lengths: tuple[int, ...], device: str) -> torch.Tensor:
    return (
        torch.cat([torch.arange(n) for n in lengths]).to(device)
        if lengths
        else torch.zeros(0, dtype=torch.long)
    )


@functools.lru_cache(maxsize=256)
def _long_tensor(values: tuple[int, ...], device: str) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


@functools.lru_cache(maxsize=256)
def _adjacency_on(graph: ModalGraph, device: str) -> torch.Tensor:
    return graph.adjacency.to(device)


@functools.lru_cache(maxsize=256)
def _static_dense(graph: ModalGraph, lengths: tuple[int, ...], device: str) -> torch.Tensor:
    ids = _modality_ids(lengths, device)
    return _adjacency_on(graph, device)[ids[:, None], ids[None, :]]  # (N, N)


@dataclass(frozen=True, eq=False)
class GraphMask:
    """A modal graph bound to a sequence layout, optionally with per-sample valid lengths.

    ``valid_lengths`` is a (B, M) integer tensor: in sample b, only the first ``valid_lengths[b, m]``
    positions of segment m are real.  With it, keys at padded positions are never read and query rows
    at padded positions have no allowed key (they return zeros).  Without it every position is real
    (the paper's behaviour).
    """

    graph: ModalGraph
    layout: SequenceLayout
    valid_lengths: torch.Tensor | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.graph.modalities != self.layout.modalities:
            raise ValueError(
                f"graph modalities {list(self.graph.modalities)} differ from layout modalities "
                f"{list(self.layout.modalities)}"
            )
        vl = self.valid_lengths
        if vl is not None:
            m = len(self.layout.modalities)
            if vl.dim() != 2 or vl.shape[1] != m:
                raise ValueError(
                    f"valid_lengths must be (B, {m}) for modalities {list(self.layout.modalities)}, "
                    f"got shape {tuple(vl.shape)}"
                )
            if vl.dtype.is_floating_point or vl.dtype == torch.bool:
                raise ValueError(f"valid_lengths must be an integer tensor, got {vl.dtype}")

    @property
    def num_modalities(self) -> int:
        return len(self.layout.modalities)

    @property
    def total(self) -> int:
        return self.layout.total

    @property
    def padding_aware(self) -> bool:
        return self.valid_lengths is not None

    # --------------------------------------------------------------- position validity
    def position_valid(self, device: torch.device | str | None = None) -> torch.Tensor | None:
        """(B, N) bool: position n of sample b is real.  ``None`` when every position is real."""
        if self.valid_lengths is None:
            return None
        dev = device if device is not None else self.valid_lengths.device
        key = ("position_valid", str(dev))
        if key not in self._cache:
            ids = self.layout.modality_ids(dev)
            pos = self.layout.positions_in_segment(dev)
            vl = self.valid_lengths.to(dev)
            self._cache[key] = pos[None, :] < vl[:, ids]  # (B, N)
        return self._cache[key]

    # --------------------------------------------------------------- representations
    def dense_mask(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Boolean "may attend" mask: (N, N) without valid lengths, (B, N, N) with them."""
        dev = (
            device
            if device is not None
            else (self.valid_lengths.device if self.valid_lengths is not None else "cpu")
        )
        static = _static_dense(self.graph, self.layout.lengths, str(dev))
        valid = self.position_valid(dev)
        if valid is None:
            return static
        key = ("dense", str(dev))
        if key not in self._cache:  # built once per mask, not once per layer
            self._cache[key] = static[None] & valid[:, :, None] & valid[:, None, :]  # (B, N, N)
        return self._cache[key]

    def query_groups(self) -> list[tuple[int, tuple[int, ...]]]:
        """[(query modality index, key modality indices)] for every query modality with at least one key."""
        return [(i, ks) for i, ks in enumerate(self.graph.key_sets) if ks and self.layout.lengths[i] > 0]

    def pairs(self) -> list[tuple[str, str]]:
        """The allowed (query, key) modality pairs as names, in sequence order."""
        mods = self.layout.modalities
        return [(mods[i], mods[j]) for i, ks in self.query_groups() for j in ks]

    @property
    def mask_mod(self):
        """FlexAttention predicate ``(b, h, q_idx, kv_idx) -> bool`` derived from the same tensors."""
        dev = self.valid_lengths.device if self.valid_lengths is not None else "cpu"
        return self.mask_mod_on(dev)

    def mask_mod_on(self, device: torch.device | str):
        ids = self.layout.modality_ids(device)
        adj = _adjacency_on(self.graph, str(device))
        valid = self.position_valid(device)
        if valid is None:

            def mask_mod(b, h, q_idx, kv_idx):
                return adj[ids[q_idx], ids[kv_idx]]
        else:

            def mask_mod(b, h, q_idx, kv_idx):
                return adj[ids[q_idx], ids[kv_idx]] & valid[b, q_idx] & valid[b, kv_idx]

        return mask_mod

    def with_graph(self, graph: ModalGraph) -> GraphMask:
        return GraphMask(graph, self.layout, self.valid_lengths)
