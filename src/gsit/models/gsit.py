"""GsiT: the Graph-Structured and interlaced-masked multimodal Transformer (ACL 2025), SPEC §3-7.

Read top to bottom: the config, the reusable fusion block (forward + backward interlaced encoders of width
d, a self encoder of width 2d, last-step pooling), then the model (text front end, conv front ends, fusion,
MLP head).  The masks are not written here: they come from :mod:`gsit.graph`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from gsit.graph import GraphMask, ModalGraph, SequenceLayout
from gsit.models.layers import ConvFrontEnd, GraphEncoder, check_modal_inputs
from gsit.models.pretrained import PretrainedMixin
from gsit.models.text import text_lengths_from_bert


@dataclass(frozen=True)
class GsiTConfig:
    modalities: tuple[str, ...] = ("text", "vision", "audio")  # concatenation order (SPEC §3.4)
    input_dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "vision": 20, "audio": 5})
    kernel_sizes: dict[str, int] = field(default_factory=lambda: {"text": 5, "vision": 5, "audio": 5})
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    share_layers: bool = True          # one layer reused at every depth, as the official code
    text_dropout: float = 0.5          # on BERT states, before the conv
    embed_dropout: float = 0.2
    attn_dropout: float = 0.3          # applied only with attention_semantics="paper"
    relu_dropout: float = 0.0
    res_dropout: float = 0.0
    post_fusion_dropout: float = 0.0
    structure: str = "original"        # original | structure1 | structure2 | structure3 | self_only | bidirectional
    attention_semantics: str = "paper"  # paper: 1/sqrt(hd) + dropout; official_code: 1/hd, no dropout (SPEC §6)
    attention_backend: str = "pairs"   # any name in gsit.attention.available_backends()
    padding_aware: bool = False        # off = the paper (padding attends and is pooled); on = ignore padding
    output_dim: int = 1                # 1 for regression, C for classification
    nan_policy: str = "auto"           # auto: check CPU inputs only (no GPU sync) | error | ignore


def last_steps(x: torch.Tensor, layout: SequenceLayout, valid_lengths: torch.Tensor | None) -> torch.Tensor:
    """(B, N, D) -> (B, M * D): the last step of every modality block (the last *valid* step when
    ``valid_lengths`` (B, M) is given; a block with no valid step contributes zeros)."""
    if valid_lengths is None:
        return torch.cat([x[:, o + n - 1] for o, n in zip(layout.offsets, layout.lengths)], dim=-1)  # (B, M * D)
    # segment offsets/lengths enter as Python ints (no host-to-device copy: CUDA-graph and compile safe)
    valid = valid_lengths.to(x.device)
    idx = torch.stack([o + (valid[:, i].clamp(max=n) - 1).clamp(min=0)
                       for i, (o, n) in enumerate(zip(layout.offsets, layout.lengths))], dim=1)  # (B, M)
    picked = torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))  # (B, M, D)
    picked = picked * (valid > 0)[:, :, None].to(x.dtype)  # a block with no valid step -> zeros
    return picked.flatten(1)


class GraphFusion(nn.Module):
    """The paper's hierarchical modal-wise heterogeneous graph block, reusable by other models (the paper
    plugs it into Self-MM, TETFN and ALMT): interlaced forward/backward encoders (width d) over the
    concatenated sequence, their outputs joined on features (2d), an intra-modal self encoder (2d), and
    last-step pooling of every modality block -> (B, M * 2d)."""

    def __init__(self, *, modalities: tuple[str, ...], d_model: int, num_heads: int, num_layers: int,
                 share_layers: bool = True, structure: str = "original", embed_dropout: float = 0.2,
                 attn_dropout: float = 0.3, relu_dropout: float = 0.0, res_dropout: float = 0.0,
                 attention_semantics: str = "paper", attention_backend: str = "pairs") -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.forward_graph, self.backward_graph = ModalGraph.structure(structure, self.modalities)
        self.self_graph = ModalGraph.named("self", self.modalities)
        common = dict(num_heads=num_heads, num_layers=num_layers, share_layers=share_layers,
                      embed_dropout=embed_dropout, attn_dropout=attn_dropout, relu_dropout=relu_dropout,
                      res_dropout=res_dropout, semantics=attention_semantics, backend=attention_backend)
        self.forward_encoder = GraphEncoder(d_model=d_model, **common)
        self.backward_encoder = GraphEncoder(d_model=d_model, **common)
        self.self_encoder = GraphEncoder(d_model=2 * d_model, **common)
        self.out_dim = len(self.modalities) * 2 * d_model

    def forward(self, x: torch.Tensor, layout: SequenceLayout,
                valid_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, N, d) concatenated sequence; returns (B, M * 2d)."""
        fwd = GraphMask(self.forward_graph, layout, valid_lengths)
        h = torch.cat([self.forward_encoder(x, fwd),
                       self.backward_encoder(x, fwd.with_graph(self.backward_graph))], dim=-1)  # (B, N, 2d)
        h = self.self_encoder(h, fwd.with_graph(self.self_graph))  # (B, N, 2d)
        return last_steps(h, layout, valid_lengths)


def prepare_text(inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None,
                 text_encoder: nn.Module | None) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """Run the text encoder on MMSA ``text_bert`` ids (B, 3, L); precomputed features pass through."""
    text = inputs.get("text")
    if text_encoder is None:
        if text is not None and not text.is_floating_point():
            raise ValueError(f"text input of shape {tuple(text.shape)} and dtype {text.dtype} holds token ids: "
                             f"the model needs a text encoder (--text-encoder DIR)")
        return inputs, lengths
    if text is None or text.dim() != 3 or text.shape[1] != 3:
        raise ValueError(f"text: a model with a text encoder expects MMSA text_bert rows (B, 3, L), got "
                         f"{None if text is None else tuple(text.shape)}")
    lengths = dict(lengths or {})
    lengths.setdefault("text", text_lengths_from_bert(text))
    return {**inputs, "text": text_encoder(text)}, lengths  # text -> (B, L, D_t)


def _static_step() -> bool:
    """True while torch.compile traces or a CUDA graph is being captured: no host read of tensor values."""
    return torch.compiler.is_compiling() or (torch.cuda.is_available()
                                             and torch.cuda.is_current_stream_capturing())


def multimodal_sequence(c: GsiTConfig, front_end: ConvFrontEnd, text_dropout: nn.Module,
                        text_encoder: nn.Module | None, inputs: dict[str, torch.Tensor],
                        lengths: dict[str, torch.Tensor] | None):
    """The "multimodal graph embedding": text encoder (if any), text dropout, conv front ends, and the
    concatenation along time in ``c.modalities`` order.  Returns ``(x (B, N, d), layout, valid)`` where
    ``valid`` is the (B, M) valid-length tensor in padding-aware mode, else ``None``.

    In padding-aware mode each batch is first trimmed to its longest valid input per modality (at least
    the conv kernel): padding cannot change any valid output there, so the result is identical and the
    cost follows the real tokens -- combine with length-bucketed batches for the full effect."""
    inputs, lengths = prepare_text(inputs, lengths, text_encoder)
    check_modal_inputs(inputs, input_dims=c.input_dims, kernel_sizes=c.kernel_sizes, nan_policy=c.nan_policy)
    if c.padding_aware:
        if lengths is None or any(m not in lengths for m in c.modalities):
            raise ValueError(f"padding_aware=True needs lengths for {list(c.modalities)}, got "
                             f"{sorted(lengths) if lengths else None}")
        if not _static_step():  # a static step's caller has cut the inputs already (gsit.execution)
            keep = {m: max(int(lengths[m].max()), c.kernel_sizes[m]) for m in c.modalities}
            inputs = {m: inputs[m][:, :keep[m]] for m in c.modalities}  # trim padding
    feats = {**inputs, "text": text_dropout(inputs["text"])} if "text" in inputs else dict(inputs)
    conv = front_end(feats)  # modality -> (B, T_m - k + 1, d)
    layout = SequenceLayout(c.modalities, tuple(conv[m].shape[1] for m in c.modalities))
    valid = None
    if c.padding_aware:
        out_lengths = front_end.output_lengths(lengths)
        valid = torch.stack([out_lengths[m] for m in c.modalities], dim=1)  # (B, M)
    return torch.cat([conv[m] for m in c.modalities], dim=1), layout, valid  # (B, N, d)


class GsiT(PretrainedMixin, nn.Module):
    """GsiT for regression (``output_dim=1``) or classification (``output_dim=C``).

    ``forward(inputs, lengths)``: ``inputs`` maps modality -> (B, T_m, D_m) float features, except text
    which may also be MMSA ``text_bert`` rows (B, 3, L) when a ``text_encoder`` is given; ``lengths`` maps
    modality -> (B,) valid lengths (needed only with ``padding_aware``).  Returns ``{"prediction": (B,
    output_dim), "features": (B, d)}``.
    """

    config_class = GsiTConfig

    def __init__(self, config: GsiTConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = config
        c = config
        self.text_encoder = text_encoder
        if text_encoder is not None and c.input_dims.get("text") != text_encoder.out_dim:
            raise ValueError(f"input_dims['text'] = {c.input_dims.get('text')} but the text encoder outputs "
                             f"{text_encoder.out_dim} features")
        self.text_dropout = nn.Dropout(c.text_dropout)
        self.front_end = ConvFrontEnd(modalities=c.modalities, input_dims=c.input_dims, d_model=c.d_model,
                                      kernel_sizes=c.kernel_sizes)
        self.fusion = GraphFusion(modalities=c.modalities, d_model=c.d_model, num_heads=c.num_heads,
                                  num_layers=c.num_layers, share_layers=c.share_layers, structure=c.structure,
                                  embed_dropout=c.embed_dropout, attn_dropout=c.attn_dropout,
                                  relu_dropout=c.relu_dropout, res_dropout=c.res_dropout,
                                  attention_semantics=c.attention_semantics,
                                  attention_backend=c.attention_backend)
        self.post_fusion_dropout = nn.Dropout(c.post_fusion_dropout)
        self.head_hidden = nn.Linear(self.fusion.out_dim, c.d_model)  # 6d -> d
        self.head_out = nn.Linear(c.d_model, c.output_dim)

    def forward(self, inputs: dict[str, torch.Tensor],
                lengths: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        x, layout, valid = multimodal_sequence(self.config, self.front_end, self.text_dropout, self.text_encoder,
                                               inputs, lengths)  # (B, N, d)
        fused = self.post_fusion_dropout(self.fusion(x, layout, valid))  # (B, M * 2d)
        hidden = torch.relu(self.head_hidden(fused))  # (B, d)
        return {"prediction": self.head_out(hidden), "features": hidden}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by part: text_encoder, front_end (convs), fusion (graph encoders), head."""
        return {
            "text_encoder": list(self.text_encoder.parameters()) if self.text_encoder is not None else [],
            "front_end": list(self.front_end.parameters()),
            "fusion": list(self.fusion.parameters()),
            "head": list(self.head_hidden.parameters()) + list(self.head_out.parameters()),
        }
