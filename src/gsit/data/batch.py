"""Torch side of the data layer: :class:`SplitDataset` and the :class:`Batch` it gathers.

The dataset never copies the split: ``ds[i]`` returns numpy views into the split's arrays and a batch is
gathered with one fancy-index per array (``ds.__getitems__``, which ``torch.utils.data.DataLoader`` uses
for map-style datasets, and training calls directly), so only the batch itself is materialised.
"""

from __future__ import annotations

import math
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


# ----------------------------------------------------------------------------- which rows, which shapes

# padding-aware mode: an input is cut to the smallest level x padded length that holds every valid step
LENGTH_LEVELS = (0.125, 0.25, 0.5, 1.0)


def epoch_batches(
    n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int, sizes: np.ndarray | None = None
) -> list[np.ndarray]:
    """Global batches of row indices; the permutation depends only on (seed, epoch), so a resumed run and
    every DDP rank see the same batches.  With ``sizes`` (per-row total valid length), rows are bucketed:
    each chunk of 32 batches is sorted by size before batching, and the batch order is shuffled."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).numpy()
    else:
        g, order = None, np.arange(n)
    if sizes is not None:
        chunk = 32 * batch_size
        order = np.concatenate(
            [
                c[np.argsort(sizes[c], kind="stable")]
                for c in (order[i : i + chunk] for i in range(0, n, chunk))
            ]
        )
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if sizes is not None and g is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def total_lengths(split) -> np.ndarray:
    """Per-row sum of valid lengths over the modalities (for length bucketing)."""
    split.fill_lengths()
    return (
        np.asarray(split.text_lengths) + np.asarray(split.audio_lengths) + np.asarray(split.vision_lengths)
    ).astype(np.int64)


def padded_rows(rows: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``rows`` padded to ``size`` with copies of its first row; weights 1 for real rows, 0 for copies."""
    n = len(rows)
    if n > size:
        raise ValueError(f"a batch of {n} rows does not fit the static batch size {size}")
    if n == 0:
        raise ValueError("an empty batch cannot be padded")
    idx = np.concatenate([rows, np.full(size - n, rows[0], dtype=rows.dtype)])
    weights = np.zeros(size, dtype=np.float32)
    weights[:n] = 1.0
    return idx, weights


def level_length(full: int, needed: int, levels: tuple[float, ...] = LENGTH_LEVELS) -> int:
    """The smallest ``ceil(f * full)`` over ``levels`` that is >= ``needed`` (``full`` if none is)."""
    for f in levels:
        n = min(full, math.ceil(f * full))
        if n >= needed:
            return n
    return full


def cut_to_level(
    batch,
    *,
    modalities: tuple[str, ...],
    kernel_sizes: dict[str, int],
    levels: tuple[float, ...] = LENGTH_LEVELS,
):
    """Padding-aware mode: cut the CPU batch's time axes to one shared length level (see module doc).
    Text given as ``text_bert`` token rows (B, 3, L) is left whole (BERT runs on it first)."""
    fraction = 0.0
    for m in modalities:
        x = batch.inputs[m]
        if m == "text" and not x.is_floating_point():
            continue
        full = x.shape[1]
        need = max(int(batch.lengths[m].max()) if len(batch.lengths[m]) else 0, int(kernel_sizes[m]))
        fraction = max(fraction, next((f for f in levels if min(full, math.ceil(f * full)) >= need), 1.0))
    for m in modalities:
        x = batch.inputs[m]
        if m == "text" and not x.is_floating_point():
            continue
        keep = level_length(x.shape[1], math.ceil(fraction * x.shape[1]), levels)
        batch.inputs[m] = x[:, :keep]
    return batch
