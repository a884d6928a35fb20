"""Vanilla: one unmasked transformer over the concatenated sequence (the paper's Table 8 "Attention"
baseline), with GsiT's front end, last-step pooling of each modality block and MLP head.  The paper does not
give its depth, width or pooling; we use GsiT's encoder settings at width d and a ``full`` graph."""

from __future__ import annotations

import torch
from torch import nn

from gsit.graph import GraphMask, ModalGraph
from gsit.models.gsit import GraphEncoder, GsiTConfig, MultimodalEmbedding, last_steps, override_graphs
from gsit.models.layers import attach_view
from gsit.models.pretrained import PretrainedMixin


class Vanilla(PretrainedMixin, nn.Module):
    """GsiT's embedding, one encoder over the ``full`` graph (every block reads every block), GsiT's head."""

    config_class = GsiTConfig

    def __init__(self, config: GsiTConfig, text_encoder: nn.Module | None = None) -> None:
        super().__init__()
        c = self.config = config
        embedding = MultimodalEmbedding(c, text_encoder)
        # registered here under the checkpoint names (text_encoder.*, front_end.*); the embedding is a view
        self.text_encoder = embedding.text_encoder
        self.text_dropout = embedding.text_dropout
        self.front_end = embedding.front_end
        attach_view(self, "embedding", embedding)
        self.graph = ModalGraph.named("full", c.modalities)
        self.encoder = GraphEncoder(
            d_model=c.d_model,
            num_heads=c.num_heads,
            num_layers=c.num_layers,
            share_layers=c.share_layers,
            embed_dropout=c.embed_dropout,
            attn_dropout=c.attn_dropout,
            relu_dropout=c.relu_dropout,
            res_dropout=c.res_dropout,
            attention_semantics=c.attention_semantics,
            attention_backend=c.attention_backend,
        )
        self.head_hidden = nn.Linear(len(c.modalities) * c.d_model, c.d_model)
        self.head_out = nn.Linear(c.d_model, c.output_dim)

    @property
    def graphs(self) -> dict[str, ModalGraph]:
        """The encoder's graph by name (``full``)."""
        return {"full": self.graph}

    def forward(self, inputs, lengths=None, *, graphs: dict[str, ModalGraph] | None = None):
        """As :meth:`GsiT.forward`; ``graphs`` may replace ``full`` for one call."""
        x, layout, valid = self.embedding(inputs, lengths)  # (B, N, d)
        h = self.encoder(x, GraphMask(override_graphs(self.graphs, graphs)["full"], layout, valid))
        pooled = last_steps(h, layout, valid)  # (B, M * d)
        hidden = torch.relu(self.head_hidden(pooled))
        summaries = pooled.unflatten(1, (len(layout.modalities), -1))  # (B, M, d), a view
        return {"prediction": self.head_out(hidden), "features": hidden, "summaries": summaries}

    def parameter_groups(self):
        return {
            "text_encoder": list(self.text_encoder.parameters()) if self.text_encoder is not None else [],
            "front_end": list(self.front_end.parameters()),
            "fusion": list(self.encoder.parameters()),
            "head": list(self.head_hidden.parameters()) + list(self.head_out.parameters()),
        }
