"""MulT (Tsai et al., ACL 2019) as MMSA implements it (``models/singleTask/MULT.py``): GsiT's baseline.

The story, for the three modalities in config order (MMSA's own order: text, audio, vision):

1. text features (precomputed, or a BERT encoder's ``last_hidden_state``) get dropout ``text_dropout``;
2. one ``Conv1d(D_m, d, k_m, padding=0, bias=False)`` per modality, (B, T_m, D_m) -> (B, T_m - k_m + 1, d);
3. six cross-modal encoders of width d: for every ordered pair "q->k" the queries of modality q read the
   keys/values of modality k (MMSA's ``trans_l_with_a`` is ``"text->audio"``);
4. per modality q, its two cross outputs are concatenated (in config order of k) to width 2d and run through a
   "mem" self-attention encoder of width 2d with ``max(num_layers, 3)`` layers;
5. the last time step of each mem output (padded or not: MMSA uses no padding information) is concatenated to
   ``last_hs`` (B, 6d); a residual block ``proj2(dropout(relu(proj1(h)))) + h`` and ``out_layer`` -> (B, out).

Every encoder is MMSA's fairseq-derived ``TransformerEncoder``: inputs scaled by sqrt(D), sinusoidal
positions only when asked (``positional``; MMSA >= 2.2.0 has none), embedding dropout, pre-LN layers in which
the SAME first LayerNorm normalises the queries and the keys/values, a ReLU FFN of width 4D, and a final
LayerNorm.  The GsiT repository's MulT-dagger variant (model ``mult_dagger``) is this model with
``share_layers=True`` and, on MOSI/MOSEI, d=128, 4 heads (SPEC §13).
``tests/models/test_parity_mmsa.py`` checks this file against the ``mmsa`` package itself (weights copied,
float64).

Parameter arithmetic (SPEC §12): one layer of width D has 12D^2 + 13D parameters, an encoder adds a final
LN (2D); fusion = 6 cross encoders (D=d) + 3 mem encoders (D=2d); head = 2(36d^2 + 6d) + 6d*out + out.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from gsit.errors import ConfigError, DataError
from gsit.models.layers import NAN_POLICIES, ConvFrontEnd, attach_view, check_modal_inputs, xavier_linear_
from gsit.models.pretrained import PretrainedMixin
from gsit.models.text import encode_text

MULT_MODALITIES = ("text", "audio", "vision")
FFN_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


@dataclass(frozen=True)
class MulTConfig:
    # Concatenation order of the cross outputs and of last_hs; MMSA's order is l, a, v.
    modalities: tuple[str, ...] = MULT_MODALITIES
    # Feature widths of the inputs (MOSI: BERT 768, COVAREP 5, Facet 20); text = the text encoder's width.
    input_dims: dict[str, int] = field(default_factory=lambda: {"text": 768, "audio": 5, "vision": 20})
    # defaults: mmsa==2.2.1 config_regression.json "mult" mosi
    d_model: int = 50  # dst_feature_dim_nheads = [50, 10]
    num_heads: int = 10
    num_layers: int = 4  # MMSA "nlevels"; the mem encoders use max(num_layers, 3)
    share_layers: bool = False  # True: one layer reused at every depth (the GsiT repo's MulT-dagger)
    kernel_sizes: dict[str, int] = field(default_factory=lambda: {"text": 5, "audio": 5, "vision": 5})
    # Attention dropout is chosen by the KEY modality of a cross encoder (MMSA's get_network: "la" -> _a);
    # the mem encoders use attn_dropout.
    attn_dropout: float = 0.3
    attn_dropout_a: float = 0.2
    attn_dropout_v: float = 0.0
    relu_dropout: float = 0.0
    res_dropout: float = 0.0
    embed_dropout: float = 0.2
    text_dropout: float = 0.5
    output_dropout: float = 0.5
    causal: bool = True  # MMSA "attn_mask" (true in its config): future mask, also between sequences
    #                              of unequal length
    # sinusoidal positions: MMSA <= 2.1 and the original MulT add them; MMSA >= 2.2.0 (its TransformerEncoder
    # defaults to position_embedding=False) and MulT-dagger do not
    positional: bool = False
    ffn_activation: str = "relu"
    output_dim: int = 1  # 1 = regression; num_classes for classification
    nan_policy: str = "auto"  # auto: check CPU inputs only (no GPU sync) | error: always | ignore

    def __post_init__(self) -> None:
        if sorted(self.modalities) != sorted(MULT_MODALITIES):
            raise ConfigError(
                f"MulT needs exactly the modalities {list(MULT_MODALITIES)} (any order); "
                f"got {list(self.modalities)}"
            )
        for name in ("input_dims", "kernel_sizes"):
            missing = [m for m in self.modalities if m not in getattr(self, name)]
            if missing:
                raise ConfigError(f"MulT config {name} lacks {missing}; got {dict(getattr(self, name))}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"MulT d_model {self.d_model} is not divisible by num_heads {self.num_heads}")
        if self.num_layers < 1:
            raise ConfigError(f"MulT num_layers must be >= 1, got {self.num_layers}")
        if self.ffn_activation not in FFN_ACTIVATIONS:
            raise ConfigError(
                f"MulT ffn_activation {self.ffn_activation!r} unknown; known: {list(FFN_ACTIVATIONS)}"
            )
        if self.nan_policy not in NAN_POLICIES:
            raise ConfigError(f"MulT nan_policy {self.nan_policy!r} unknown; known: {list(NAN_POLICIES)}")

    def key_attn_dropout(self, key_modality: str) -> float:
        by_key = {"text": self.attn_dropout, "audio": self.attn_dropout_a, "vision": self.attn_dropout_v}
        return by_key[key_modality]

    @property
    def mem_layers(self) -> int:
        return max(self.num_layers, 3)


# --------------------------------------------------------------------------- positions and the future mask
@functools.lru_cache(maxsize=64)
def sinusoidal_table(num_positions: int, dim: int, device: str = "cpu") -> torch.Tensor:
    """(num_positions, dim) fairseq/tensor2tensor table: row p = [sin(p w), cos(p w)] (two halves, not
    interleaved), w_i = 10000^(-i / (dim/2 - 1)); an odd ``dim`` gets a zero last column; row 0 (the padding
    index) is zero."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000.0) / (half - 1)))  # (half,)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * freq[None, :]  # (P, half)
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)  # (P, 2 * half)
    if dim % 2:
        table = torch.cat([table, torch.zeros(num_positions, 1, dtype=table.dtype)], dim=1)
    table[0] = 0.0
    return table.to(device)  # float64; cast to the input's dtype at use


def sinusoidal_positions(x: torch.Tensor) -> torch.Tensor:
    """(B, T, D) -> (B, T, D) positional embedding as MMSA adds it: token t gets row t + 1 of the table,
    except tokens whose FIRST feature is exactly 0 (fairseq's padding test on ``x[..., 0]``), which get
    zeros.  After a bias-free conv an all-zero padded window is exactly 0, so padded frames of audio/vision
    get no position."""
    B, T, D = x.shape
    table = sinusoidal_table(T + 1, D, str(x.device))[1:].to(x.dtype)  # (T, D)
    is_token = (x[..., 0] != 0).to(x.dtype)  # (B, T)
    return is_token[..., None] * table[None]  # (B, T, D)


@functools.lru_cache(maxsize=256)
def future_mask(q_len: int, k_len: int, device: str = "cpu") -> torch.Tensor:
    """(q_len, k_len) bool "may attend" of MMSA's ``buffered_future_mask``: query i reads key j iff
    j <= i + |k_len - q_len| (``triu(-inf, diagonal=1 + |k_len - q_len|)``).  Square: plain causal.  Every
    row allows key 0, so no row is empty."""
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(k_len, device=device)[None, :]
    return j <= i + abs(k_len - q_len)


# --------------------------------------------------------------------------- the encoder
class MulTAttention(nn.Module):
    """fairseq multi-head attention: one packed (3D, D) in-projection (rows: q, k, v) with bias,
    xavier-uniform over the whole (3D, D) matrix, zero biases; logits scaled by head_dim^-0.5; dropout on
    the probabilities."""

    def __init__(self, *, d_model: int, num_heads: int, attn_dropout: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.attn_dropout = attn_dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        xavier_linear_(self.out_proj)

    def project(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
        """(B, Tq, D), (B, Tk, D), (B, Tk, D) -> q (B, H, Tq, hd), k, v (B, H, Tk, hd)."""
        D, W, b = self.d_model, self.in_proj_weight, self.in_proj_bias
        q = F.linear(query, W[:D], b[:D])  # (B, Tq, D)
        k = F.linear(key, W[D : 2 * D], b[D : 2 * D])  # (B, Tk, D)
        v = F.linear(value, W[2 * D :], b[2 * D :])  # (B, Tk, D)

        def heads(t):
            return t.view(t.shape[0], t.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

        return heads(q), heads(k), heads(v)

    def forward(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, allowed: torch.Tensor | None
    ) -> torch.Tensor:
        """``allowed``: (Tq, Tk) bool "may attend" or None (all).  Returns (B, Tq, D)."""
        B, Tq, D = query.shape
        q, k, v = self.project(query, key, value)
        out = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=allowed,
            dropout_p=self.attn_dropout if self.training else 0.0,
            scale=self.head_dim**-0.5,
        )  # (B, H, Tq, hd)
        return self.out_proj(out.transpose(1, 2).reshape(B, Tq, D))


class MulTEncoderLayer(nn.Module):
    """Pre-LN layer: x + MHA(LN0(x), LN0(k), LN0(v)); x + fc2(act(fc1(LN1(x)))).  LN0 is one module applied to
    queries and keys/values alike; fc1/fc2 are xavier-uniform with zero biases."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        ffn_activation: str,
    ) -> None:
        super().__init__()
        self.attn = MulTAttention(d_model=d_model, num_heads=num_heads, attn_dropout=attn_dropout)
        self.fc1 = xavier_linear_(nn.Linear(d_model, 4 * d_model))
        self.fc2 = xavier_linear_(nn.Linear(4 * d_model, d_model))
        self.attn_norm = nn.LayerNorm(d_model)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.activation = FFN_ACTIVATIONS[ffn_activation]
        self.relu_dropout = nn.Dropout(relu_dropout)
        self.res_dropout = nn.Dropout(res_dropout)

    def forward(
        self,
        x: torch.Tensor,
        key: torch.Tensor | None,
        value: torch.Tensor | None,
        allowed: torch.Tensor | None,
    ) -> torch.Tensor:  # (B, Tq, D) -> (B, Tq, D)
        h = self.attn_norm(x)
        if key is None:  # self-attention
            k_in = v_in = h
        else:
            k_in = self.attn_norm(key)
            v_in = k_in if value is key else self.attn_norm(value)
        x = x + self.res_dropout(self.attn(h, k_in, v_in, allowed))
        h = self.fc2(self.relu_dropout(self.activation(self.fc1(self.ffn_norm(x)))))
        return x + self.res_dropout(h)


class MulTEncoder(nn.Module):
    """MMSA's ``TransformerEncoder``: ``forward(x)`` is self-attention, ``forward(x, source)`` is cross-modal
    attention with queries from x and keys/values from source (which is scaled, given positions and dropped
    out like x -- keys and values with independent dropout masks -- and fed unchanged to every layer)."""

    def __init__(
        self,
        *,
        d_model: int,
        num_heads: int,
        num_layers: int,
        share_layers: bool,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        causal: bool,
        positional: bool,
        ffn_activation: str,
    ) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.share_layers = share_layers
        self.causal = causal
        self.positional = positional
        self.embed_scale = math.sqrt(d_model)
        self.embed_dropout = nn.Dropout(embed_dropout)

        def make():
            return MulTEncoderLayer(
                d_model=d_model,
                num_heads=num_heads,
                attn_dropout=attn_dropout,
                relu_dropout=relu_dropout,
                res_dropout=res_dropout,
                ffn_activation=ffn_activation,
            )

        # one module reused at every depth (shared) or distinct ones; the state_dict never holds aliases
        self.layers = nn.ModuleList([make()] if share_layers else [make() for _ in range(num_layers)])
        self.final_norm = nn.LayerNorm(d_model)

    def depth_layers(self) -> list[MulTEncoderLayer]:
        return [self.layers[0]] * self.num_layers if self.share_layers else list(self.layers)

    def embed(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, D), before dropout
        out = self.embed_scale * x
        return out + sinusoidal_positions(x) if self.positional else out

    def forward(self, x: torch.Tensor, source: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, Tq, D), source (B, Tk, D) or None -> (B, Tq, D)."""
        h = self.embed_dropout(self.embed(x))  # (B, Tq, D)
        key = value = None
        if source is not None:
            src = self.embed(source)  # (B, Tk, D)
            key = self.embed_dropout(src)
            value = self.embed_dropout(src) if self.training and self.embed_dropout.p > 0 else key
        k_len = x.shape[1] if source is None else source.shape[1]
        allowed = future_mask(x.shape[1], k_len, str(x.device)) if self.causal else None
        for layer in self.depth_layers():
            h = layer(h, key, value, allowed)
        return self.final_norm(h)


# --------------------------------------------------------------------------- the fusion block
class MulTFusion(nn.Module):
    """MulT's fusion (steps 3-5 of the module docstring): for every modality q, its cross encoders (queries
    q, keys/values k != q, in config order) concatenated to 2d, through q's mem encoder; the last step of
    each mem output, concatenated -> (B, 6d).  ``forward`` takes the conv outputs m -> (B, T_m, d)."""

    def __init__(self, config: MulTConfig) -> None:
        super().__init__()
        c = config
        self.modalities = tuple(c.modalities)
        d = c.d_model
        common = dict(
            num_heads=c.num_heads,
            share_layers=c.share_layers,
            relu_dropout=c.relu_dropout,
            res_dropout=c.res_dropout,
            embed_dropout=c.embed_dropout,
            causal=c.causal,
            positional=c.positional,
            ffn_activation=c.ffn_activation,
        )
        # "q->k": queries of q read keys/values of k; attention dropout follows the key modality (MMSA)
        self.pairs = [(q, k) for q in self.modalities for k in self.modalities if k != q]
        self.cross = nn.ModuleDict(
            {
                f"{q}->{k}": MulTEncoder(
                    d_model=d, num_layers=c.num_layers, attn_dropout=c.key_attn_dropout(k), **common
                )
                for q, k in self.pairs
            }
        )
        mem_width = (len(self.modalities) - 1) * d  # 2d
        self.mem = nn.ModuleDict(
            {
                m: MulTEncoder(
                    d_model=mem_width, num_layers=c.mem_layers, attn_dropout=c.attn_dropout, **common
                )
                for m in self.modalities
            }
        )
        self.out_dim = len(self.modalities) * mem_width  # 6d

    def forward(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        last = []
        for q in self.modalities:
            crossed = [self.cross[f"{q}->{k}"](x[q], x[k]) for k in self.modalities if k != q]  # (B, T_q, d)
            h = self.mem[q](torch.cat(crossed, dim=-1))  # (B, T_q, 2d)
            last.append(h[:, -1])  # (B, 2d)
        return torch.cat(last, dim=-1)  # (B, 6d)


# --------------------------------------------------------------------------- the model
class MulT(PretrainedMixin, nn.Module):
    """MMSA's MULT behind gsit's model interface.

    ``inputs``: ``{"text": (B, L, D_t) float features, or (B, 3, L) MMSA text_bert rows when a text encoder is
    given, "audio": (B, T_a, D_a), "vision": (B, T_v, D_v)}``.  ``lengths`` is accepted for interface parity
    with GsiT and ignored: MulT, as in MMSA, reads padded frames and pools the last (possibly padded) step.
    Returns ``{"prediction": (B, output_dim), "features": (B, 6d), "summaries": (B, 3, 2d)}`` where features
    is the residual block's output (the input of ``out_layer``) and summaries the last steps of the three mem
    encoders (``last_hs`` per modality, config order), read by the optional contrastive objective.
    """

    config_class = MulTConfig

    def __init__(self, config: MulTConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.config = c = config
        if text_encoder is not None and int(text_encoder.out_dim) != int(c.input_dims["text"]):
            raise ConfigError(
                f"text encoder width {text_encoder.out_dim} != MulT input_dims['text'] {c.input_dims['text']}"
            )
        self.text_encoder = text_encoder
        self.modalities = tuple(c.modalities)
        self.input_dims = {m: int(c.input_dims[m]) for m in self.modalities}
        self.kernel_sizes = {m: int(c.kernel_sizes[m]) for m in self.modalities}
        d = c.d_model
        self.text_dropout = nn.Dropout(c.text_dropout)
        self.front_end = ConvFrontEnd(
            modalities=self.modalities, input_dims=self.input_dims, d_model=d, kernel_sizes=self.kernel_sizes
        )
        # MulT registers the fusion's two encoder dicts itself, under the names checkpoints hold ("cross.*",
        # "mem.*"); ``fusion`` is kept outside ``_modules`` so every parameter is registered once.  The fusion
        # holds no parameters or dropout of its own, so nothing it stores can go stale under .to() / .eval().
        fusion = MulTFusion(c)
        self.pairs = fusion.pairs
        self.cross = fusion.cross
        self.mem = fusion.mem
        attach_view(self, "fusion", fusion)
        mem_width = (len(self.modalities) - 1) * d  # 2d
        combined = len(self.modalities) * mem_width  # 6d
        self.proj1 = nn.Linear(combined, combined)
        self.proj2 = nn.Linear(combined, combined)
        self.output_dropout = nn.Dropout(c.output_dropout)
        self.out_layer = nn.Linear(combined, c.output_dim)

    def forward(
        self, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        if "text" not in inputs:
            raise DataError(f"model input is missing modality 'text'; got {sorted(inputs)}")
        features = {m: inputs[m] for m in self.modalities if m in inputs}
        features["text"] = encode_text(inputs["text"], self.text_encoder)
        check_modal_inputs(
            features,
            input_dims=self.input_dims,
            kernel_sizes=self.kernel_sizes,
            nan_policy=self.config.nan_policy,
        )
        features["text"] = self.text_dropout(features["text"])
        x = self.front_end(features)  # m -> (B, T_m - k_m + 1, d)

        last_hs = self.fusion(x)  # (B, 6d)

        h = self.proj2(self.output_dropout(F.relu(self.proj1(last_hs)))) + last_hs  # (B, 6d)
        summaries = last_hs.unflatten(1, (len(self.modalities), -1))  # (B, 3, 2d), a view
        return {"prediction": self.out_layer(h), "features": h, "summaries": summaries}

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint groups covering every parameter: text encoder (empty without one), conv front end,
        fusion (cross + mem encoders) and head (proj1, proj2, out_layer)."""
        return {
            "text_encoder": list(self.text_encoder.parameters()) if self.text_encoder is not None else [],
            "front_end": list(self.front_end.parameters()),
            "fusion": list(self.cross.parameters()) + list(self.mem.parameters()),
            "head": [p for mod in (self.proj1, self.proj2, self.out_layer) for p in mod.parameters()],
        }
