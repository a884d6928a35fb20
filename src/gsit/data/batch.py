"""Torch side of the data layer: :class:`SplitDataset` and the :class:`Batch` it gathers.

The dataset never copies the split: ``ds[i]`` returns numpy views into the split's arrays and a batch is
gathered with one fancy-index per array (``ds.__getitems__``, which ``torch.utils.data.DataLoader`` uses
for map-style datasets, and training calls directly), so only the batch itself is materialised.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gsit.data.dataset import Split

__all__ = ["Batch", "SplitDataset"]

MODALITIES = ("text", "audio", "vision")


@dataclass
class Batch:
    """One mini-batch.

    ``inputs``: ``"text"`` float (B, L, Dt) features or long (B, 3, L) BERT rows, ``"audio"`` (B, Ta, Da),
    ``"vision"`` (B, Tv, Dv); ``lengths``: long (B,) per modality; ``labels``: float32 (B,) or long (B,);
    ``index``: long (B,) row indices in the split (``split.ids[batch.index]``); ``extra_labels``: e.g. the
    SIMS unimodal labels, float32 (B,).
    """

    inputs: dict[str, torch.Tensor]
    lengths: dict[str, torch.Tensor]
    labels: torch.Tensor
    index: torch.Tensor
    extra_labels: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def _map(self, fn) -> Batch:
        return Batch(
            inputs={k: fn(v) for k, v in self.inputs.items()},
            lengths={k: fn(v) for k, v in self.lengths.items()},
            labels=fn(self.labels),
            index=fn(self.index),
            extra_labels={k: fn(v) for k, v in self.extra_labels.items()},
        )

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:
        return self._map(lambda t: t.pin_memory())


def _text_array(split: Split, text_kind: str | None) -> tuple[str, np.ndarray]:
    kind = text_kind or split.text_kind
    if kind == "bert":
        arr = split.text_bert
    elif kind == "features":
        arr = split.text
    else:
        raise ValueError(f"text_kind must be 'features' or 'bert', not {kind!r}")
    if arr is None:
        raise ValueError(f"split '{split.name}' has no text of kind {kind!r}")
    return kind, arr


class SplitDataset(Dataset):
    """Map-style dataset over a :class:`Split`; items are dicts of numpy views (no copies)."""

    def __init__(self, split: Split, *, text_kind: str | None = None):
        split.fill_lengths()
        self.split = split
        self.text_kind, self._text = _text_array(split, text_kind)
        self._arrays = {"text": self._text, "audio": split.audio, "vision": split.vision}
        self._lengths = {
            "text": split.text_lengths,
            "audio": split.audio_lengths,
            "vision": split.vision_lengths,
        }

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for split '{self.split.name}' of size {len(self)}")
        return {
            "index": i,
            "inputs": {m: a[i] for m, a in self._arrays.items()},
            "lengths": {m: a[i] for m, a in self._lengths.items()},
            "label": self.split.labels[i],
            "extra_labels": {k: v[i] for k, v in self.split.extra_labels.items()},
        }

    def __getitems__(self, indices: Sequence[int]) -> Batch:
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and ((idx < -len(self)) | (idx >= len(self))).any():
            raise IndexError(f"batch index out of range for split '{self.split.name}' of size {len(self)}")
        idx = np.where(idx < 0, idx + len(self), idx)
        return Batch(
            inputs={m: torch.from_numpy(np.ascontiguousarray(a[idx])) for m, a in self._arrays.items()},
            lengths={m: torch.from_numpy(a[idx].astype(np.int64)) for m, a in self._lengths.items()},
            labels=_label_tensor(self.split.labels[idx]),
            index=torch.from_numpy(idx.copy()),
            extra_labels={k: _label_tensor(v[idx]) for k, v in self.split.extra_labels.items()},
        )


def _label_tensor(a: np.ndarray) -> torch.Tensor:
    a = np.asarray(a)
    if a.dtype.kind in "iu":
        return torch.from_numpy(a.astype(np.int64))
    return torch.from_numpy(a.astype(np.float32))
