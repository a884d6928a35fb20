"""Vanilla: one unmasked transformer over the concatenated sequence (the paper's Table 8 "Attention"
baseline), with GsiT's front end, last-step pooling of each modality block and MLP head.  The paper does not
give its depth, width or pooling; we use GsiT's encoder settings at width d and a ``full`` graph."""

from __future__ import annotations

import torch
from torch import nn

from gsit.graph import GraphMask, ModalGraph
from gsit.models.gsit import GsiTConfig, last_steps, multimodal_sequence
from gsit.models.layers import ConvFrontEnd, GraphEncoder
from gsit.models.pretrained import PretrainedMixin


class Vanilla(PretrainedMixin, nn.Module):
    config_class = GsiTConfig

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
        x, layout, valid = multimodal_sequence(self.config, self.front_end, self.text_dropout, self.text_encoder,
                                               inputs, lengths)  # (B, N, d)
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
