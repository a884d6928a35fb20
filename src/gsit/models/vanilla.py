"""Vanilla: one unmasked transformer over the concatenated sequence (the paper's Table 8 "Attention"
baseline), with GsiT's front end, last-step pooling of each modality block and MLP head.  The paper does not
give its depth, width or pooling; we use GsiT's encoder settings at width d and a ``full`` graph."""

from __future__ import annotations

import torch
from torch import nn

from gsit.graph import GraphMask, ModalGraph, SequenceLayout
from gsit.models.gsit import GsiTConfig, last_steps, prepare_text
from gsit.models.layers import ConvFrontEnd, GraphEncoder, check_modal_inputs


class Vanilla(nn.Module):
    def __init__(self, config: GsiTConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        c = self.config = config
        self.text_encoder = text_encoder
        self.text_dropout = nn.Dropout(c.text_dropout)
        self.front_end = ConvFrontEnd(modalities=c.modalities, input_dims=c.input_dims, d_model=c.d_model,
                                      kernel_sizes=c.kernel_sizes)
        self.graph = ModalGraph.named("full", c.modalities)
        self.encoder = GraphEncoder(d_model=c.d_model, num_heads=c.num_heads, num_layers=c.num_layers,
                                    share_layers=c.share_layers, embed_dropout=c.embed_dropout,
                                    attn_dropout=c.attn_dropout, relu_dropout=c.relu_dropout,
                                    res_dropout=c.res_dropout, semantics=c.attention_semantics,
                                    backend=c.attention_backend)
        self.head_hidden = nn.Linear(len(c.modalities) * c.d_model, c.d_model)
        self.head_out = nn.Linear(c.d_model, c.output_dim)

    def forward(self, inputs, lengths=None):
        c = self.config
        inputs, lengths = prepare_text(inputs, lengths, self.text_encoder)
        check_modal_inputs(inputs, input_dims=c.input_dims, kernel_sizes=c.kernel_sizes, nan_policy=c.nan_policy)
        feats = {**inputs, "text": self.text_dropout(inputs["text"])} if "text" in inputs else dict(inputs)
        conv = self.front_end(feats)
        layout = SequenceLayout(c.modalities, tuple(conv[m].shape[1] for m in c.modalities))
        valid = None
        if c.padding_aware:
            if lengths is None or any(m not in lengths for m in c.modalities):
                raise ValueError(f"padding_aware=True needs lengths for {list(c.modalities)}, got "
                                 f"{sorted(lengths) if lengths else None}")
            out_lengths = self.front_end.output_lengths(lengths)
            valid = torch.stack([out_lengths[m] for m in c.modalities], dim=1)
        x = torch.cat([conv[m] for m in c.modalities], dim=1)  # (B, N, d)
        h = self.encoder(x, GraphMask(self.graph, layout, valid))
        hidden = torch.relu(self.head_hidden(last_steps(h, layout, valid)))
        return {"prediction": self.head_out(hidden), "features": hidden}

    def parameter_groups(self):
        return {
            "text_encoder": list(self.text_encoder.parameters()) if self.text_encoder is not None else [],
            "front_end": list(self.front_end.parameters()),
            "fusion": list(self.encoder.parameters()),
            "head": list(self.head_hidden.parameters()) + list(self.head_out.parameters()),
        }
