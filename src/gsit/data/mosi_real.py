"""Build a CMU-MOSI :class:`MultimodalData` from a transcript/label CSV (+ optional utterance-level features).

The CSV needs the columns ``utterance_id, split (train/valid/test), text, label``; other columns are
ignored.  Text is tokenized with a local (uncased BERT-vocabulary) tokenizer into ``text_bert`` rows
(N, 3, max_text_len).  ``features_npz`` (arrays ``utterance_id`` (M,), ``audio`` (M, Da), ``video``
(M, Dv), read with ``allow_pickle=False``) is joined on ``utterance_id`` and stored as length-1 sequences
(N, 1, Da) / (N, 1, Dv); without it, audio and vision are one zero frame of width 1 (length 1).
"""

from __future__ import annotations

import csv
import math
import os
import zipfile
from pathlib import Path

import numpy as np

from gsit.data._text import load_local_tokenizer, tokenize_to_rows
from gsit.data._util import detail
from gsit.data.dataset import SPLIT_NAMES, MultimodalData, Split
from gsit.errors import DataError

__all__ = ["build_mosi_from_csv", "read_utterance_csv", "read_features_npz"]

_REQUIRED = ("utterance_id", "split", "text", "label")


def read_utterance_csv(csv_path: str | os.PathLike) -> list[dict[str, str]]:
    path = Path(csv_path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            fieldnames = reader.fieldnames or []
            missing = [c for c in _REQUIRED if c not in fieldnames]
            if missing:
                raise DataError(f"{path}: the header lacks the column '{missing[0]}'.")
            rows = [dict(r, _line=str(i)) for i, r in enumerate(reader, start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as a CSV file ({detail(exc)}).") from None
    if not rows:
        raise DataError(f"{path}: the file has no data rows.")
    return rows


def read_features_npz(npz_path: str | os.PathLike) -> dict[str, np.ndarray]:
    path = Path(npz_path)
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {}
            for key in ("utterance_id", "audio", "video"):
                if key not in npz.files:
                    raise DataError(
                        f"{path}: the archive lacks the array '{key}' (found: {', '.join(npz.files)})."
                    )
                out[key] = npz[key]
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError) as exc:
        raise DataError(f"{path}: is not a readable npz archive ({detail(exc)}).") from None
    ids = out["utterance_id"]
    if ids.ndim != 1 or ids.dtype.kind not in "US":
        raise DataError(
            f"{path}: array 'utterance_id' has shape {tuple(ids.shape)} and dtype {ids.dtype}; "
            "(M,) strings are expected."
        )
    m = ids.shape[0]
    for key in ("audio", "video"):
        a = out[key]
        if a.ndim != 2 or a.shape[0] != m or a.dtype.kind != "f":
            raise DataError(
                f"{path}: array '{key}' has shape {tuple(a.shape)} and dtype {a.dtype}; "
                f"({m}, D) floats are expected."
            )
        if not np.isfinite(a).all():
            i = int(np.argwhere(~np.isfinite(a))[0][0])
            raise DataError(
                f"{path}: array '{key}' has a non-finite value in the row of utterance {str(ids[i])!r}."
            )
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: array 'utterance_id' holds {str(uniq[counts > 1][0])!r} more than once.")
    return out


def build_mosi_from_csv(
    csv_path: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None,
    features_npz: str | os.PathLike | None = None,
    max_text_len: int = 50,
) -> MultimodalData:
    """Build MOSI (regression, labels in [-3, 3]) from ``utterances.csv``; see the module docstring."""
    path = Path(csv_path)
    rows = read_utterance_csv(path)
    by_split: dict[str, list[dict[str, str]]] = {name: [] for name in SPLIT_NAMES}
    for r in rows:
        split = r["split"].strip().lower()
        if split == "dev":
            split = "valid"
        if split not in by_split:
            raise DataError(
                f"{path}: row {r['_line']} has the unknown split {r['split']!r} "
                "(expected train, valid or test)."
            )
        try:
            value = float(r["label"])
        except (TypeError, ValueError):
            value = math.nan
        if not math.isfinite(value):
            raise DataError(
                f"{path}: row {r['_line']} has the label {r['label']!r}, which is not a finite number."
            )
        r["_label"] = value
        by_split[split].append(r)
    feats = None
    feat_index: dict[str, int] = {}
    if features_npz is not None:
        feats = read_features_npz(features_npz)
        feat_index = {str(u): i for i, u in enumerate(feats["utterance_id"].tolist())}
    tokenizer = load_local_tokenizer(tokenizer_dir)
    splits: dict[str, Split] = {}
    for name, srows in by_split.items():
        n = len(srows)
        ids = np.array([r["utterance_id"].strip() for r in srows]) if n else np.zeros(0, dtype="<U1")
        texts = [r["text"] for r in srows]
        if feats is not None:
            idx = []
            for u in ids.tolist():
                if u not in feat_index:
                    raise DataError(
                        f"{features_npz}: has no features for the utterance id {u!r} (split '{name}')."
                    )
                idx.append(feat_index[u])
            idx_arr = np.asarray(idx, dtype=np.int64)
            audio = feats["audio"][idx_arr].astype(np.float32)[:, None, :]
            vision = feats["video"][idx_arr].astype(np.float32)[:, None, :]
        else:
            audio = np.zeros((n, 1, 1), dtype=np.float32)
            vision = np.zeros((n, 1, 1), dtype=np.float32)
        text_bert = tokenize_to_rows(tokenizer, texts, max_text_len)
        splits[name] = Split(
            name=name,
            audio=audio,
            vision=vision,
            labels=np.array([r["_label"] for r in srows], dtype=np.float32),
            ids=ids,
            text_bert=text_bert,
            text_lengths=text_bert[:, 1].sum(axis=1),
            audio_lengths=np.ones(n, dtype=np.int64),
            vision_lengths=np.ones(n, dtype=np.int64),
            raw_text=np.array(texts) if n else np.zeros(0, dtype="<U1"),
        )
    return MultimodalData(splits=splits, source=str(path), task="regression", dataset="mosi")
