"""Text front end: precomputed features, or a BERT-family encoder loaded from a LOCAL directory.

Two input forms reach a model as ``inputs["text"]``:

* float (B, L, D_t): precomputed token features (MMSA's ``text`` field, frozen BERT states);
* long  (B, 3, L):   MMSA's ``text_bert`` rows -- input ids / attention mask / segment ids.  These need a
  :class:`BertTextEncoder`; as in the official code only ids and the attention mask are passed (segment
  ids are left at their default of zeros) and ``last_hidden_state`` is returned.

Weights are never downloaded: ``from_pretrained`` is called with ``local_files_only=True`` on a path.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from gsit.errors import ConfigError, DataError


class BertTextEncoder(nn.Module):
    """A fine-tuned BERT-family encoder; output width is read from the checkpoint's config."""

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert
        self.out_dim = int(bert.config.hidden_size)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> BertTextEncoder:
        path = Path(path)
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError(
                f"text encoder path {str(path)!r} is not a model directory "
                f"(expected a folder with config.json and weights)"
            )
        try:
            from transformers import AutoModel
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ConfigError(
                f"a BERT text encoder needs the 'transformers' package ({e}); install gsit[text]"
            ) from e
        try:
            bert = AutoModel.from_pretrained(str(path), local_files_only=True)
        except Exception as e:  # transformers raises many types; report one clear message
            raise ConfigError(f"could not load a text encoder from {str(path)!r}: {e}") from e
        return cls(bert)

    @classmethod
    def from_config(cls, config) -> BertTextEncoder:
        """A randomly initialised encoder from a ``transformers`` config (tests, or training from scratch)."""
        from transformers import AutoModel

        return cls(AutoModel.from_config(config))

    def forward(self, text_bert: torch.Tensor) -> torch.Tensor:  # (B, 3, L) -> (B, L, D)
        ids = text_bert[:, 0].long()
        attn = text_bert[:, 1].float()
        return self.bert(input_ids=ids, attention_mask=attn).last_hidden_state


def text_lengths_from_bert(text_bert: torch.Tensor) -> torch.Tensor:
    """(B,) number of real tokens (attention-mask sum) of MMSA ``text_bert`` rows."""
    return text_bert[:, 1].round().long().sum(dim=-1)


def encode_text(text: torch.Tensor | None, text_encoder: nn.Module | None) -> torch.Tensor:
    """The text features every model reads: precomputed float (B, L, D_t) pass through without an encoder;
    MMSA ``text_bert`` rows (B, 3, L) go through ``text_encoder`` -> (B, L, D_t).  Any other pairing is
    one :class:`DataError` naming the modality and the shape."""
    if text_encoder is None:
        if text is not None and not text.is_floating_point():
            raise DataError(
                f"modality 'text': input of shape {tuple(text.shape)} and dtype {text.dtype} holds "
                f"token ids; the model needs a text encoder (--text-encoder DIR) for MMSA text_bert "
                f"rows"
            )
        return text
    if text is None or text.dim() != 3 or text.shape[1] != 3:
        raise DataError(
            f"modality 'text': with a text encoder the input must be MMSA text_bert rows (B, 3, L) "
            f"of ids / mask / segments, got shape {None if text is None else tuple(text.shape)}"
        )
    return text_encoder(text)  # (B, L, D_t)
