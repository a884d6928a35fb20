"""GsiT: the Graph-Structured and interlaced-masked multimodal Transformer (ACL 2025), SPEC §3-7.

All of the model in one file, read top to bottom: the config; the graph-masked attention (one packed QKV
projection, attention through :func:`gsit.attention.graph_attention` with the backend named in the
config); the pre-LN layer and the depth-shared encoder ("GraphFormerEncoder"); the multimodal embedding
(text encoder, conv front ends, concatenation); the fusion block (forward + backward interlaced encoders of
width d, a self encoder of width 2d, last-step pooling); and the model (embedding -> fusion -> MLP head).
The masks are not written here: they come from :mod:`gsit.graph`.  Vanilla (models/vanilla.py) reuses the
encoder and the embedding.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from gsit.attention import DEFAULT_BACKEND, get_backend, graph_attention
from gsit.graph import GraphMask, ModalGraph, SequenceLayout
from gsit.models.layers import ConvFrontEnd, attach_view, check_modal_inputs, xavier_linear_
from gsit.models.pretrained import PretrainedMixin
from gsit.models.text import encode_text, text_lengths_from_bert


# --------------------------------------------------------------------------- config
@dataclass(frozen=True)
class GsiTConfig:
    modalities: tuple[str, ...] = ("text", "vision", "audio")  # concatenation order (SPEC §3.4)
    input_dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "vision": 20, "audio": 5})
    kernel_sizes: dict[str, int] = field(default_factory=lambda: {"text": 5, "vision": 5, "audio": 5})
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    share_layers: bool = True  # one layer reused at every depth, as the official code
    text_dropout: float = 0.5  # on BERT states, before the conv
    embed_dropout: float = 0.2
    attn_dropout: float = 0.3  # applied only with attention_semantics="paper"
    relu_dropout: float = 0.0
    res_dropout: float = 0.0
    post_fusion_dropout: float = 0.0
    structure: str = "original"  # original | structure1 | structure2 | structure3 | self_only | bidirectional
    attention_semantics: str = (
        "paper"  # paper: 1/sqrt(hd) + dropout; official_code: 1/hd, no dropout (SPEC §6)
    )
    attention_backend: str = DEFAULT_BACKEND  # any name in gsit.attention.available_backends()
    padding_aware: bool = False  # off = the paper (padding attends and is pooled); on = ignore padding
    output_dim: int = 1  # 1 for regression, C for classification
    nan_policy: str = "auto"  # auto: check CPU inputs only (no GPU sync) | error | ignore


# --------------------------------------------------------------------------- graph-masked attention
ATTENTION_SEMANTICS = ("paper", "official_code")


def attention_scale_and_dropout(semantics: str, head_dim: int, attn_dropout: float) -> tuple[float, float]:
    """SPEC §6: ``paper`` = 1/sqrt(head_dim) and the configured attention dropout; ``official_code`` = the
    official repository's HEAD behaviour: q pre-scaled by 1/sqrt(hd) and scaled again by xFormers, i.e.
    1/head_dim, and no attention dropout."""
    if semantics == "paper":
        return head_dim**-0.5, attn_dropout
    if semantics == "official_code":
        return 1.0 / head_dim, 0.0
    raise ValueError(f"unknown attention_semantics {semantics!r}; known: {list(ATTENTION_SEMANTICS)}")


class GraphSelfAttention(nn.Module):
    """fairseq-style multi-head attention: one packed (3D, D) QKV projection over the whole concatenated
    sequence, attention restricted by a :class:`GraphMask`, then ``out_proj``."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        attn_dropout: float,
        attention_semantics: str,
        attention_backend: str,
    ) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scale, self.attn_dropout = attention_scale_and_dropout(
            attention_semantics, self.head_dim, attn_dropout
        )
        # an unknown name fails here; the backend's module is imported now, not while tracing
        get_backend(attention_backend)
        self.attention_backend = attention_backend
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as one (3D x D) matrix, like fairseq
        xavier_linear_(self.out_proj)

    def forward(self, x: torch.Tensor, mask: GraphMask) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        B, N, D = x.shape
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3D)
        qkv = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        out = graph_attention(
            qkv[0],
            qkv[1],
            qkv[2],
            mask,
            backend=self.attention_backend,
            scale=self.scale,
            dropout_p=self.attn_dropout if self.training else 0.0,
        )  # (B, H, N, hd)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, D))


# --------------------------------------------------------------------------- layer and encoder
class GraphEncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + MHA(LN(x)); x + FFN(LN(x)) with a GELU FFN of width 4D."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        attention_semantics: str,
        attention_backend: str,
    ) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = GraphSelfAttention(
            d_model=d_model,
            num_heads=num_heads,
            attn_dropout=attn_dropout,
            attention_semantics=attention_semantics,
            attention_backend=attention_backend,
        )
        self.ffn_norm = nn.LayerNorm(d_model)
        self.fc1 = xavier_linear_(nn.Linear(d_model, 4 * d_model))
        self.fc2 = xavier_linear_(nn.Linear(4 * d_model, d_model))
        self.relu_dropout = nn.Dropout(relu_dropout)
        self.res_dropout = nn.Dropout(res_dropout)

    def forward(self, x: torch.Tensor, mask: GraphMask) -> torch.Tensor:  # (B, N, D)
        x = x + self.res_dropout(self.attn(self.attn_norm(x), mask))
        h = self.fc2(self.relu_dropout(nn.functional.gelu(self.fc1(self.ffn_norm(x)))))
        return x + self.res_dropout(h)


class GraphEncoder(nn.Module):
    """The encoder used three times by GsiT ("GraphFormerEncoder", SPEC §4): sqrt(D) input scale, embedding
    dropout, ``num_layers`` pre-LN layers -- ONE shared layer reused at every depth when ``share_layers``
    (the official code's default) -- and a final LayerNorm.  Which blocks interact is decided by the
    :class:`GraphMask` passed to ``forward``; the encoder itself holds no mask logic."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        num_layers: int,
        share_layers: bool = True,
        embed_dropout: float = 0.2,
        attn_dropout: float = 0.3,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        attention_semantics: str = "paper",
        attention_backend: str = DEFAULT_BACKEND,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_layers = num_layers
        self.share_layers = share_layers
        self.embed_scale = math.sqrt(d_model)
        self.embed_dropout = nn.Dropout(embed_dropout)

        def make():
            return GraphEncoderLayer(
                d_model=d_model,
                num_heads=num_heads,
                attn_dropout=attn_dropout,
                relu_dropout=relu_dropout,
                res_dropout=res_dropout,
                attention_semantics=attention_semantics,
                attention_backend=attention_backend,
            )

        # one module reused (shared) or a list of distinct ones; the state_dict never holds aliases
        self.layers = nn.ModuleList([make()] if share_layers else [make() for _ in range(num_layers)])
        self.final_norm = nn.LayerNorm(d_model)

    def depth_layers(self):
        return [self.layers[0]] * self.num_layers if self.share_layers else list(self.layers)

    def forward(self, x: torch.Tensor, mask: GraphMask) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        x = self.embed_dropout(self.embed_scale * x)
        for layer in self.depth_layers():
            x = layer(x, mask)
        return self.final_norm(x)


# --------------------------------------------------------------------------- multimodal embedding
_STATIC_SHAPES = [False]


@contextlib.contextmanager
def static_shapes():
    """Within this context the model never reads tensor values on the host (no padding trim: the caller
    has cut its inputs to a static length already; see :mod:`gsit.execution`), so every call of one input
    shape runs the same kernels -- warm-up, compilation and CUDA-graph capture alike."""
    old, _STATIC_SHAPES[0] = _STATIC_SHAPES[0], True
    try:
        yield
    finally:
        _STATIC_SHAPES[0] = old


def _static_step() -> bool:
    """True under :func:`static_shapes`, while torch.compile traces, or while a CUDA graph is captured."""
    return (
        _STATIC_SHAPES[0]
        or torch.compiler.is_compiling()
        or (torch.cuda.is_available() and torch.cuda.is_current_stream_capturing())
    )


class MultimodalEmbedding(nn.Module):
    """The "multimodal graph embedding" (SPEC §3): the text encoder (if any) on MMSA ``text_bert`` rows,
    text dropout, one conv front end per modality, and concatenation along time in ``modalities`` order.
    ``forward(inputs, lengths)`` returns ``(x (B, N, d), layout, valid)`` where ``valid`` is the (B, M)
    valid-length tensor in padding-aware mode, else ``None``.

    In padding-aware mode each batch is first trimmed to its longest valid input per modality (at least
    the conv kernel): padding cannot change any valid output there, so the result is identical and the
    cost follows the real tokens -- combine with length-bucketed batches for the full effect.

    The models register this module's parts (``text_encoder``, ``text_dropout``, ``front_end``) on
    themselves, under the names their checkpoints have always held, and keep the embedding as an
    unregistered view (:func:`attach_view`)."""

    def __init__(self, config: GsiTConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        c = self.config = config
        if text_encoder is not None and c.input_dims.get("text") != text_encoder.out_dim:
            raise ValueError(
                f"input_dims['text'] = {c.input_dims.get('text')} but the text encoder outputs "
                f"{text_encoder.out_dim} features"
            )
        self.text_encoder = text_encoder
        self.text_dropout = nn.Dropout(c.text_dropout)
        self.front_end = ConvFrontEnd(
            modalities=c.modalities, input_dims=c.input_dims, d_model=c.d_model, kernel_sizes=c.kernel_sizes
        )

    def forward(
        self, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, SequenceLayout, torch.Tensor | None]:
        c = self.config
        text = inputs.get("text")
        if text is not None or self.text_encoder is not None:
            features = encode_text(text, self.text_encoder)  # (B, L, D_t); one DataError for a wrong form
            if self.text_encoder is not None:
                lengths = dict(lengths or {})
                lengths.setdefault("text", text_lengths_from_bert(text))
            inputs = {**inputs, "text": features}
        check_modal_inputs(
            inputs, input_dims=c.input_dims, kernel_sizes=c.kernel_sizes, nan_policy=c.nan_policy
        )
        if c.padding_aware:
            if lengths is None or any(m not in lengths for m in c.modalities):
                raise ValueError(
                    f"padding_aware=True needs lengths for {list(c.modalities)}, got "
                    f"{sorted(lengths) if lengths else None}"
                )
            if not _static_step():  # a static step's caller has cut the inputs already (gsit.execution)
                keep = {m: max(int(lengths[m].max()), c.kernel_sizes[m]) for m in c.modalities}
                inputs = {m: inputs[m][:, : keep[m]] for m in c.modalities}  # trim padding
        feats = {**inputs, "text": self.text_dropout(inputs["text"])} if "text" in inputs else dict(inputs)
        conv = self.front_end(feats)  # modality -> (B, T_m - k + 1, d)
        layout = SequenceLayout(c.modalities, tuple(conv[m].shape[1] for m in c.modalities))
        valid = None
        if c.padding_aware:
            out_lengths = self.front_end.output_lengths(lengths)
            valid = torch.stack([out_lengths[m] for m in c.modalities], dim=1)  # (B, M)
        return torch.cat([conv[m] for m in c.modalities], dim=1), layout, valid  # (B, N, d)


# --------------------------------------------------------------------------- fusion
def last_steps(x: torch.Tensor, layout: SequenceLayout, valid_lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, N, D) -> (B, M * D): the last step of every modality block (the last *valid* step when
    ``valid_lengths`` (B, M) is given; a block with no valid step contributes zeros)."""
    if valid_lengths is None:
        return torch.cat(
            [x[:, o + n - 1] for o, n in zip(layout.offsets, layout.lengths)], dim=-1
        )  # (B, M * D)
    # segment offsets/lengths enter as Python ints (no host-to-device copy: CUDA-graph and compile safe)
    valid = valid_lengths.to(x.device)
    idx = torch.stack(
        [
            o + (valid[:, i].clamp(max=n) - 1).clamp(min=0)
            for i, (o, n) in enumerate(zip(layout.offsets, layout.lengths))
        ],
        dim=1,
    )  # (B, M)
    picked = torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))  # (B, M, D)
    picked = picked * (valid > 0)[:, :, None].to(x.dtype)  # a block with no valid step -> zeros
    return picked.flatten(1)


def override_graphs(
    defaults: dict[str, ModalGraph], override: dict[str, ModalGraph] | None
) -> dict[str, ModalGraph]:
    """``defaults`` with the entries of ``override`` replaced; an unknown name is an error."""
    if not override:
        return defaults
    unknown = sorted(set(override) - set(defaults))
    if unknown:
        raise ValueError(f"graphs {unknown} unknown; this model's graphs are {sorted(defaults)}")
    return {**defaults, **override}


class GraphFusion(nn.Module):
    """The paper's hierarchical modal-wise heterogeneous graph block, reusable by other models (the paper
    plugs it into Self-MM, TETFN and ALMT): interlaced forward/backward encoders (width d) over the
    concatenated sequence, their outputs joined on features (2d), an intra-modal self encoder (2d), and
    last-step pooling of every modality block -> (B, M * 2d)."""

    def __init__(
        self,
        *,
        modalities: tuple[str, ...],
        d_model: int,
        num_heads: int,
        num_layers: int,
        share_layers: bool = True,
        structure: str = "original",
        embed_dropout: float = 0.2,
        attn_dropout: float = 0.3,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        attention_semantics: str = "paper",
        attention_backend: str = DEFAULT_BACKEND,
    ) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.forward_graph, self.backward_graph = ModalGraph.structure(structure, self.modalities)
        self.self_graph = ModalGraph.named("self", self.modalities)
        common = dict(
            num_heads=num_heads,
            num_layers=num_layers,
            share_layers=share_layers,
            embed_dropout=embed_dropout,
            attn_dropout=attn_dropout,
            relu_dropout=relu_dropout,
            res_dropout=res_dropout,
            attention_semantics=attention_semantics,
            attention_backend=attention_backend,
        )
        self.forward_encoder = GraphEncoder(d_model=d_model, **common)
        self.backward_encoder = GraphEncoder(d_model=d_model, **common)
        self.self_encoder = GraphEncoder(d_model=2 * d_model, **common)
        self.out_dim = len(self.modalities) * 2 * d_model

    @property
    def graphs(self) -> dict[str, ModalGraph]:
        """The three encoders' graphs by name: ``forward``, ``backward``, ``self``."""
        return {"forward": self.forward_graph, "backward": self.backward_graph, "self": self.self_graph}

    def forward(
        self,
        x: torch.Tensor,
        layout: SequenceLayout,
        valid_lengths: torch.Tensor | None = None,
        graphs: dict[str, ModalGraph] | None = None,
    ) -> torch.Tensor:
        """x: (B, N, d) concatenated sequence; returns (B, M * 2d).  ``graphs`` replaces some of
        :attr:`graphs` for this call (e.g. a modality dropped from every graph; see analysis/robustness)."""
        g = override_graphs(self.graphs, graphs)
        fwd = GraphMask(g["forward"], layout, valid_lengths)
        h = torch.cat(
            [self.forward_encoder(x, fwd), self.backward_encoder(x, fwd.with_graph(g["backward"]))], dim=-1
        )  # (B, N, 2d)
        h = self.self_encoder(h, fwd.with_graph(g["self"]))  # (B, N, 2d)
        return last_steps(h, layout, valid_lengths)


# --------------------------------------------------------------------------- the model
class GsiT(PretrainedMixin, nn.Module):
    """GsiT for regression (``output_dim=1``) or classification (``output_dim=C``).

    ``forward(inputs, lengths)``: ``inputs`` maps modality -> (B, T_m, D_m) float features, except text
    which may also be MMSA ``text_bert`` rows (B, 3, L) when a ``text_encoder`` is given; ``lengths`` maps
    modality -> (B,) valid lengths (needed only with ``padding_aware``); ``graphs`` replaces some of the
    fusion's graphs for one call (:meth:`GraphFusion.forward`).  Returns ``{"prediction": (B,
    output_dim), "features": (B, d), "summaries": (B, M, 2d)}``; ``summaries`` is the head's input before
    ``post_fusion_dropout``, one row per modality in config order (the last step of its block after the self
    encoder), read by the optional contrastive objective (``train.contrastive_weight``).
    """

    config_class = GsiTConfig

    def __init__(self, config: GsiTConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        embedding = MultimodalEmbedding(c, text_encoder)
        # registered here under the checkpoint names (text_encoder.*, front_end.*); the embedding is a view
        self.text_encoder = embedding.text_encoder
        self.text_dropout = embedding.text_dropout
        self.front_end = embedding.front_end
        attach_view(self, "embedding", embedding)
        self.fusion = GraphFusion(
            modalities=c.modalities,
            d_model=c.d_model,
            num_heads=c.num_heads,
            num_layers=c.num_layers,
            share_layers=c.share_layers,
            structure=c.structure,
            embed_dropout=c.embed_dropout,
            attn_dropout=c.attn_dropout,
            relu_dropout=c.relu_dropout,
            res_dropout=c.res_dropout,
            attention_semantics=c.attention_semantics,
            attention_backend=c.attention_backend,
        )
        self.post_fusion_dropout = nn.Dropout(c.post_fusion_dropout)
        self.head_hidden = nn.Linear(self.fusion.out_dim, c.d_model)  # 6d -> d
        self.head_out = nn.Linear(c.d_model, c.output_dim)

    @property
    def graphs(self) -> dict[str, ModalGraph]:
        """The fusion's graphs by name (``forward``, ``backward``, ``self``)."""
        return self.fusion.graphs

    def forward(
        self,
        inputs: dict[str, torch.Tensor],
        lengths: dict[str, torch.Tensor] | None = None,
        *,
        graphs: dict[str, ModalGraph] | None = None,
    ) -> dict[str, torch.Tensor]:
        x, layout, valid = self.embedding(inputs, lengths)  # (B, N, d)
        pooled = self.fusion(x, layout, valid, graphs)  # (B, M * 2d)
        fused = self.post_fusion_dropout(pooled)  # (B, M * 2d)
        hidden = torch.relu(self.head_hidden(fused))  # (B, d)
        summaries = pooled.unflatten(1, (len(layout.modalities), -1))  # (B, M, 2d), a view
        return {"prediction": self.head_out(hidden), "features": hidden, "summaries": summaries}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part: text_encoder, front_end (convs), fusion (graph encoders), head."""
        return {
            "text_encoder": list(self.text_encoder.parameters()) if self.text_encoder is not None else [],
            "front_end": list(self.front_end.parameters()),
            "fusion": list(self.fusion.parameters()),
            "head": list(self.head_hidden.parameters()) + list(self.head_out.parameters()),
        }
