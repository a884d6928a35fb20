"""Generic building blocks shared by GsiT, MulT and Vanilla: conv front ends and input checks."""

from __future__ import annotations

import math

import torch
from torch import nn

from gsit.errors import DataError


class ConvFrontEnd(nn.Module):
    """One temporal ``Conv1d(in, d, k, padding=0, bias=False)`` per modality (SPEC §3).

    Output length is ``T - k + 1``.  A sample's valid length after the conv is ``len - k + 1`` (at least 1
    when ``len > 0``: a short sequence still fills position 0 through the zero padding).
    """

    def __init__(self, *, modalities: tuple[str, ...], input_dims: dict[str, int], d_model: int | dict[str, int],
                 kernel_sizes: dict[str, int]) -> None:
        super().__init__()
        self.modalities = tuple(modalities)
        self.kernel_sizes = {m: int(kernel_sizes[m]) for m in self.modalities}
        widths = d_model if isinstance(d_model, dict) else {m: int(d_model) for m in self.modalities}
        self.input_dims = {m: int(input_dims[m]) for m in self.modalities}
        self.convs = nn.ModuleDict({
            m: nn.Conv1d(self.input_dims[m], widths[m], kernel_size=self.kernel_sizes[m], padding=0, bias=False)
            for m in self.modalities
        })

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """(B, T_m, D_m) per modality -> (B, T_m - k + 1, d) per modality."""
        return {m: self.convs[m](features[m].transpose(1, 2)).transpose(1, 2) for m in self.modalities}

    def output_lengths(self, lengths: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for m in self.modalities:
            n = lengths[m].long()
            out[m] = torch.where(n > 0, (n - self.kernel_sizes[m] + 1).clamp(min=1), torch.zeros_like(n))
        return out


NAN_POLICIES = ("auto", "error", "ignore")


def check_modal_inputs(features: dict[str, torch.Tensor], *, input_dims: dict[str, int],
                       kernel_sizes: dict[str, int], nan_policy: str = "auto") -> None:
    """One clear ``DataError`` naming the modality and shapes for bad model inputs.

    ``nan_policy``: ``"auto"`` checks for NaN/inf on CPU tensors only -- on a GPU the check would force a
    device-to-host sync every forward, and data read by gsit's loaders is already rejected at load time
    with an error naming the file and key; ``"error"`` always checks; ``"ignore"`` never does."""
    if nan_policy not in NAN_POLICIES:
        raise ValueError(f"nan_policy {nan_policy!r} unknown; known: {list(NAN_POLICIES)}")
    batch = None
    for m, dim in input_dims.items():
        if m not in features:
            raise DataError(f"model input is missing modality {m!r}; got {sorted(features)}")
        x = features[m]
        if x.dim() != 3:
            raise DataError(f"modality {m!r}: expected a (B, T, {dim}) tensor, got shape {tuple(x.shape)}")
        if x.shape[-1] != dim:
            raise DataError(f"modality {m!r}: feature width {x.shape[-1]} != configured {dim} "
                            f"(shape {tuple(x.shape)})")
        if x.shape[1] < kernel_sizes[m]:
            raise DataError(f"modality {m!r}: sequence length {x.shape[1]} is shorter than the conv kernel "
                            f"{kernel_sizes[m]} (shape {tuple(x.shape)})")
        if batch is None:
            batch = (m, tuple(x.shape))
        elif x.shape[0] != batch[1][0]:
            raise DataError(f"batch sizes differ: {batch[0]!r} has shape {batch[1]}, {m!r} has shape "
                            f"{tuple(x.shape)}")
        check = nan_policy == "error" or (nan_policy == "auto" and x.device.type == "cpu")
        if check and x.is_floating_point() and not torch.isfinite(x).all():
            raise DataError(f"modality {m!r}: input contains NaN or inf (shape {tuple(x.shape)}); "
                            f"set model.nan_policy='ignore' to pass it through")


def xavier_linear_(layer: nn.Linear) -> nn.Linear:
    nn.init.xavier_uniform_(layer.weight)
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)
    return layer


def sqrt_scale(d: int) -> float:
    return math.sqrt(d)


# --------------------------------------------------------------------------- graph-masked encoder
ATTENTION_SEMANTICS = ("paper", "official_code")


def attention_scale_and_dropout(semantics: str, head_dim: int, attn_dropout: float) -> tuple[float, float]:
    """SPEC §6: ``paper`` = 1/sqrt(head_dim) and the configured attention dropout; ``official_code`` = the
    official repository's HEAD behaviour: q pre-scaled by 1/sqrt(hd) and scaled again by xFormers, i.e.
    1/head_dim, and no attention dropout."""
    if semantics == "paper":
        return head_dim ** -0.5, attn_dropout
    if semantics == "official_code":
        return 1.0 / head_dim, 0.0
    raise ValueError(f"unknown attention_semantics {semantics!r}; known: {list(ATTENTION_SEMANTICS)}")


class GraphSelfAttention(nn.Module):
    """fairseq-style multi-head attention: one packed (3D, D) QKV projection over the whole concatenated
    sequence, attention restricted by a :class:`GraphMask`, then ``out_proj``."""

    def __init__(self, *, d_model: int, num_heads: int, attn_dropout: float, semantics: str, backend: str) -> None:
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.scale, self.attn_dropout = attention_scale_and_dropout(semantics, self.head_dim, attn_dropout)
        from gsit.attention import get_backend
        get_backend(backend)  # an unknown name fails here; the module is imported now, not while tracing
        self.backend = backend
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)  # as one (3D x D) matrix, like fairseq
        xavier_linear_(self.out_proj)

    def forward(self, x: torch.Tensor, mask) -> torch.Tensor:
        B, N, D = x.shape
        qkv = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias)  # (B, N, 3D)
        qkv = qkv.view(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
        from gsit.attention import graph_attention
        out = graph_attention(qkv[0], qkv[1], qkv[2], mask, backend=self.backend, scale=self.scale,
                              dropout_p=self.attn_dropout if self.training else 0.0)  # (B, H, N, hd)
        return self.out_proj(out.transpose(1, 2).reshape(B, N, D))


class GraphEncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + MHA(LN(x)); x + FFN(LN(x)) with a GELU FFN of width 4D."""

    def __init__(self, *, d_model: int, num_heads: int, attn_dropout: float, relu_dropout: float,
                 res_dropout: float, semantics: str, backend: str) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(d_model)
        self.attn = GraphSelfAttention(d_model=d_model, num_heads=num_heads, attn_dropout=attn_dropout,
                                       semantics=semantics, backend=backend)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.fc1 = xavier_linear_(nn.Linear(d_model, 4 * d_model))
        self.fc2 = xavier_linear_(nn.Linear(4 * d_model, d_model))
        self.relu_dropout = nn.Dropout(relu_dropout)
        self.res_dropout = nn.Dropout(res_dropout)

    def forward(self, x: torch.Tensor, mask) -> torch.Tensor:  # (B, N, D)
        x = x + self.res_dropout(self.attn(self.attn_norm(x), mask))
        h = self.fc2(self.relu_dropout(nn.functional.gelu(self.fc1(self.ffn_norm(x)))))
        return x + self.res_dropout(h)


class GraphEncoder(nn.Module):
    """The encoder used three times by GsiT ("GraphFormerEncoder", SPEC §4): sqrt(D) input scale, embedding
    dropout, ``num_layers`` pre-LN layers -- ONE shared layer reused at every depth when ``share_layers``
    (the official code's default) -- and a final LayerNorm.  Which blocks interact is decided by the
    :class:`GraphMask` passed to ``forward``; the encoder itself holds no mask logic."""

    def __init__(self, *, d_model: int, num_heads: int, num_layers: int, share_layers: bool = True,
                 embed_dropout: float = 0.2, attn_dropout: float = 0.3, relu_dropout: float = 0.0,
                 res_dropout: float = 0.0, semantics: str = "paper", backend: str = "pairs") -> None:
        super().__init__()
        self.d_model = d_model
        self.num_layers = num_layers
        self.share_layers = share_layers
        self.embed_scale = math.sqrt(d_model)
        self.embed_dropout = nn.Dropout(embed_dropout)

        def make():
            return GraphEncoderLayer(d_model=d_model, num_heads=num_heads, attn_dropout=attn_dropout,
                                     relu_dropout=relu_dropout, res_dropout=res_dropout, semantics=semantics,
                                     backend=backend)
        # one module reused (shared) or a list of distinct ones; the state_dict never holds aliases
        self.layers = nn.ModuleList([make()] if share_layers else [make() for _ in range(num_layers)])
        self.final_norm = nn.LayerNorm(d_model)

    def depth_layers(self):
        return [self.layers[0]] * self.num_layers if self.share_layers else list(self.layers)

    def forward(self, x: torch.Tensor, mask) -> torch.Tensor:  # (B, N, D) -> (B, N, D)
        x = self.embed_dropout(self.embed_scale * x)
        for layer in self.depth_layers():
            x = layer(x, mask)
        return self.final_norm(x)
