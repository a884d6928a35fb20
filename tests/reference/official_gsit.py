"""A port of the official GsiT forward pass (drewjin/GsiT, commit 76332ba,
``src/MMSA-GsiT/models/custom/GSIT/``), for tests only: the reference that
``tests/models/test_parity_official_gsit.py`` compares gsit's GsiT with.

Ported, module by module, keeping the official attribute names (so state_dict keys are the official ones):

* ``GSIT.py`` lines 20-125 -- ``GsiT``: ``proj_l/proj_a/proj_v`` convs (k, no padding, no bias), the
  concatenation along time in the order [text; vision; audio] (lines 96-107), ``CrossModalGraph``, the last
  time step of each block (line 112), ``post_fusion_dropout``, ``post_fusion_layer_1`` (6d -> d), ReLU,
  ``post_fusion_layer_2`` (d -> 1).  BERT (lines 29-30, 81-85) is left out: the port takes its
  ``last_hidden_state`` (B, L, 768) as the text input, which is what gsit's GsiT receives from its text
  encoder.
* ``modules/CMG/CMG.py`` lines 10-150 -- ``CrossModalGraph`` (non-bidirectional branch): forward and backward
  encoders of width d on the concatenated sequence, their outputs joined on features, the self encoder of
  width 2d, the split back into blocks (line 148); lines 172-244 and 282-287 -- ``build_adj_masked_matrix``
  and ``get_mask_neginf_0``: the dense additive mask, 0 where allowed and -1e10 elsewhere, built row by row.
* ``modules/GraphAttentions/GraphFormer.py`` lines 12-199 -- ``GraphFormerEncoder`` (sqrt(D) scale, embedding
  dropout, ``ModuleList([layer] * layers)``: ONE layer object at every depth, final LayerNorm) and
  ``GraphFormerEncoderLayer`` (pre-LN, GELU FFN of width 4D, xavier-uniform ``Linear``s with zero biases).
* ``modules/GraphAttentions/GraphMultiheadAttention.py`` lines 12-263 -- ``GraphAttention``: packed
  ``in_proj_weight`` (3D, D) and bias, ``q = q * head_dim ** -0.5`` (line 87), then one of the two paths:

  - ``path="xformers"`` (lines 219-245, the code at HEAD): q/k/v split by block, the key/value lists
    permuted ([V, A, T] forward, [A, T, V] backward, identity for self),
    ``fmha.BlockDiagonalMask.from_tensor_lists_qkv`` and ``memory_efficient_attention`` with its default
    softmax scale 1/sqrt(head_dim) -- so logits carry 1/head_dim in all -- and no attention dropout.  Its
    dense-mask equivalent is used here: every (sample, head) row of queries of block i attends exactly the
    keys of the permuted block, which is what the -1e10 mask of
    ``build_adj_masked_matrix`` allows (T<-V, V<-A, A<-T forward; T<-A, V<-T, A<-V backward; block-diagonal
    self), so the port adds that mask to the logits;
  - ``path="naive"`` (lines 112-218, the Dec 2024 "Decomposition" path, switched off at HEAD by ``naive =
    False``): per block ``softmax(q_i k_j^T)`` (scale 1/sqrt(head_dim) once), dropout ``attn_dropout`` on the
    probabilities, ``@ v_j`` -- the paper's semantics; dense form as above.

  One deliberate difference: the official softmax casts the logits to float32 (line 181; xFormers computes
  in float32 as well); the port keeps the input dtype, so a float64 comparison is limited by float64
  rounding.

Dropout (embedding, residual, FFN, attention on the naive path, post-fusion) follows the official modules, so
the port is also correct in training mode, but the parity test runs it in eval mode.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

NEG = -10e9  # get_mask_neginf_0 (CMG.py line 283)


def build_adj_masked_matrix(split, mode: str = "cross", direction: str = "forward") -> torch.Tensor:
    """CMG.py lines 172-244 (the "Original" structure), row by row as the official code builds it; returns
    the additive mask of ``get_mask_neginf_0`` (lines 282-287): 0 = may attend, -1e10 = blocked."""
    t, v, a = split
    s1, s2, s3 = (0, t), (t, t + v), (t + v, t + v + a)
    total = sum(split)
    rows = []
    for idx, length in enumerate(split):
        for _ in range(length):
            row = torch.ones(total, dtype=torch.float32)
            if idx == 0:
                row[0 : s1[1]] = 0
                if mode == "cross":
                    if direction == "forward":
                        row[s3[0] :] = 0
                    elif direction == "backward":
                        row[s2[0] : s2[1]] = 0
            elif idx == 1:
                row[s2[0] : s2[1]] = 0
                if mode == "cross":
                    if direction == "forward":
                        row[0 : s1[1]] = 0
                    elif direction == "backward":
                        row[s3[0] :] = 0
            elif idx == 2:
                row[s3[0] : s3[1]] = 0
                if mode == "cross":
                    if direction == "forward":
                        row[s2[0] : s2[1]] = 0
                    elif direction == "backward":
                        row[0 : s1[1]] = 0
            rows.append(row)
    mask = torch.stack(rows)
    if mode == "self":
        mask = torch.abs(mask - 1)
    return torch.where(mask == 0, NEG, torch.tensor(0, dtype=torch.float32))


def _linear(in_features: int, out_features: int) -> nn.Linear:  # GraphFormer.py lines 216-221
    m = nn.Linear(in_features, out_features)
    nn.init.xavier_uniform_(m.weight)
    nn.init.constant_(m.bias, 0.0)
    return m


class GraphAttention(nn.Module):
    """GraphMultiheadAttention.py lines 12-263 (see the module docstring for the two paths)."""

    def __init__(self, embed_dim: int, num_heads: int, attn_dropout: float = 0.0, path: str = "xformers"):
        super().__init__()
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.attn_dropout, self.path = attn_dropout, path
        self.head_dim = embed_dim // num_heads
        self.scaling = self.head_dim**-0.5
        self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim))
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.xavier_uniform_(self.out_proj.weight)
        nn.init.constant_(self.in_proj_bias, 0.0)
        nn.init.constant_(self.out_proj.bias, 0.0)

    def forward(self, x: torch.Tensor, edge_mask: torch.Tensor) -> torch.Tensor:
        """x (N, B, D) self-attention over the concatenated sequence; edge_mask (N, N) additive."""
        tgt_len, bsz, embed_dim = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # in_proj_qkv
        q = q * self.scaling  # line 87
        q = q.contiguous().view(tgt_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)  # (B*H, N, hd)
        k = k.contiguous().view(-1, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        v = v.contiguous().view(-1, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        logits = torch.bmm(q, k.transpose(1, 2))  # (B*H, N, N)
        if self.path == "xformers":  # memory_efficient_attention's default scale 1/sqrt(K), K = head_dim
            logits = logits * (1.0 / math.sqrt(self.head_dim))
        elif self.path != "naive":
            raise ValueError(f"path must be 'xformers' or 'naive', not {self.path!r}")
        probs = torch.softmax(logits + edge_mask.to(logits.dtype)[None], dim=-1)
        if self.path == "naive":  # lines 191-194; the xFormers call passes no dropout
            probs = F.dropout(probs, p=self.attn_dropout, training=self.training)
        attn = torch.bmm(probs, v)  # (B*H, N, hd)
        attn = attn.transpose(0, 1).contiguous().view(tgt_len, bsz, embed_dim)
        return self.out_proj(attn)


class GraphFormerEncoderLayer(nn.Module):
    """GraphFormer.py lines 120-199: pre-LN attention and GELU FFN blocks with residual/relu dropout."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        path: str,
    ):
        super().__init__()
        self.self_attn = GraphAttention(embed_dim, num_heads, attn_dropout, path)
        self.relu_dropout, self.res_dropout = relu_dropout, res_dropout
        self.fc1 = _linear(embed_dim, 4 * embed_dim)
        self.fc2 = _linear(4 * embed_dim, embed_dim)
        self.layer_norms = nn.ModuleList([nn.LayerNorm(embed_dim) for _ in range(2)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.self_attn(self.layer_norms[0](x), mask)
        x = residual + F.dropout(x, p=self.res_dropout, training=self.training)
        residual = x
        x = F.gelu(self.fc1(self.layer_norms[1](x)))
        x = F.dropout(x, p=self.relu_dropout, training=self.training)
        x = F.dropout(self.fc2(x), p=self.res_dropout, training=self.training)
        return residual + x


class GraphFormerEncoder(nn.Module):
    """GraphFormer.py lines 12-111: ``embed_scale * x``, embedding dropout, the SAME layer ``layers`` times,
    final LayerNorm (no positional embedding: ``position_embedding=False`` is never switched on)."""

    def __init__(
        self,
        embed_dim: int,
        num_heads: int,
        layers: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        path: str,
    ):
        super().__init__()
        self.dropout = embed_dropout
        self.embed_scale = math.sqrt(embed_dim)
        self.layers = nn.ModuleList(
            [GraphFormerEncoderLayer(embed_dim, num_heads, attn_dropout, relu_dropout, res_dropout, path)]
            * layers
        )
        self.layer_norm = nn.LayerNorm(embed_dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (N, B, D)
        x = F.dropout(self.embed_scale * x, p=self.dropout, training=self.training)
        for layer in self.layers:
            x = layer(x, mask)
        return self.layer_norm(x)


class CrossModalGraph(nn.Module):
    """CMG.py lines 10-150 (``bidirectional = false``, as in every official config)."""

    def __init__(
        self,
        *,
        d: int,
        heads: int,
        nlevels: int,
        attn_dropout: float,
        relu_dropout: float,
        res_dropout: float,
        embed_dropout: float,
        path: str,
    ):
        super().__init__()
        kw = dict(
            num_heads=heads,
            layers=nlevels,
            attn_dropout=attn_dropout,
            relu_dropout=relu_dropout,
            res_dropout=res_dropout,
            embed_dropout=embed_dropout,
            path=path,
        )
        self.cross_encoder_forward = GraphFormerEncoder(d, **kw)
        self.cross_encoder_backward = GraphFormerEncoder(d, **kw)
        self.self_encoder = GraphFormerEncoder(2 * d, **kw)

    def forward(self, cat_seq: torch.Tensor, split: list[int]) -> list[torch.Tensor]:
        fwd = build_adj_masked_matrix(split, mode="cross", direction="forward")
        bwd = build_adj_masked_matrix(split, mode="cross", direction="backward")
        own = build_adj_masked_matrix(split, mode="self")
        f = self.cross_encoder_forward(cat_seq, fwd).permute(1, 0, 2)  # (B, N, d)
        b = self.cross_encoder_backward(cat_seq, bwd).permute(1, 0, 2)
        both = torch.cat([f, b], dim=-1).permute(1, 0, 2)  # (N, B, 2d)
        out = self.self_encoder(both, own)
        return [seq.permute(1, 0, 2) for seq in torch.split(out, split, dim=0)]  # (B, T_i, 2d) each


class OfficialGsiT(nn.Module):
    """GSIT.py lines 20-125 from BERT's output on: ``forward(text_states, audio, video)`` with text_states
    (B, L, 768) = ``bert_model(...).last_hidden_state``, audio (B, T_a, D_a), video (B, T_v, D_v); returns
    the prediction (B, 1) (``res['M']``)."""

    def __init__(
        self,
        *,
        text_in: int,
        audio_in: int,
        video_in: int,
        d: int = 128,
        heads: int = 4,
        nlevels: int = 4,
        kernels=(5, 5, 5),
        text_dropout: float = 0.5,
        embed_dropout: float = 0.2,
        attn_dropout: float = 0.3,
        relu_dropout: float = 0.0,
        res_dropout: float = 0.0,
        post_fusion_dropout: float = 0.0,
        path: str = "xformers",
    ):
        super().__init__()
        self.text_dropout = text_dropout
        kl, ka, kv = kernels
        self.proj_l = nn.Conv1d(text_in, d, kernel_size=kl, padding=0, bias=False)
        self.proj_a = nn.Conv1d(audio_in, d, kernel_size=ka, padding=0, bias=False)
        self.proj_v = nn.Conv1d(video_in, d, kernel_size=kv, padding=0, bias=False)
        self.cross_modal_graph = CrossModalGraph(
            d=d,
            heads=heads,
            nlevels=nlevels,
            attn_dropout=attn_dropout,
            relu_dropout=relu_dropout,
            res_dropout=res_dropout,
            embed_dropout=embed_dropout,
            path=path,
        )
        self.post_fusion_dropout = nn.Dropout(p=post_fusion_dropout)
        self.post_fusion_layer_1 = nn.Linear(6 * d, d)
        self.post_fusion_layer_2 = nn.Linear(d, 1)

    def forward(self, text_states: torch.Tensor, audio: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        x_l = F.dropout(text_states.transpose(1, 2), p=self.text_dropout, training=self.training)
        x_a, x_v = audio.transpose(1, 2), video.transpose(1, 2)
        cat_list = [
            self.proj_l(x_l).permute(2, 0, 1),
            self.proj_v(x_v).permute(2, 0, 1),
            self.proj_a(x_a).permute(2, 0, 1),
        ]  # (T_i, B, d), order text, vision, audio
        split = [seq.shape[0] for seq in cat_list]
        blocks = self.cross_modal_graph(torch.cat(cat_list, dim=0), split)
        fusion_h = torch.cat([block.permute(1, 0, 2)[-1] for block in blocks], dim=-1)  # last step: (B, 6d)
        fusion_h = F.relu(self.post_fusion_layer_1(self.post_fusion_dropout(fusion_h)))
        return self.post_fusion_layer_2(fusion_h)
