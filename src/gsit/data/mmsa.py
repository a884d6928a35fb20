"""Reader for MMSA processed pickles (``unaligned_50.pkl`` etc.; SPEC Part B §1.1).

Top level ``{"train", "valid", "test"}`` (``"dev"`` accepted for ``"valid"``); per split the keys
``raw_text, id, text (N,L,768) and/or text_bert (N,3,L), audio, vision, audio_lengths, vision_lengths,
regression_labels`` (+ SIMS ``regression_labels_T/_A/_V``; ``classification_labels`` and ``annotations``
are ignored).  Loaded through the restricted unpickler only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from gsit.data._util import detail
from gsit.data.dataset import SPLIT_NAMES, MultimodalData, Split, normalize_dataset_name
from gsit.data.safe_pickle import load_pickle
from gsit.errors import DataError

__all__ = ["load_mmsa", "read_mmsa_splits", "MODALITY_KEYS"]

MODALITY_KEYS = {
    "text": ("text", "text_bert"),
    "audio": ("audio", "audio_lengths"),
    "vision": ("vision", "vision_lengths"),
}
EXTRA_LABEL_KEYS = ("regression_labels_T", "regression_labels_A", "regression_labels_V")


def read_mmsa_splits(path: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """Safely unpickle an MMSA file; return its train/valid/test dicts (``dev`` becomes ``valid``)."""
    src = str(path)
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(
            f"{src}: the pickle holds a {type(obj).__name__}, "
            "but an MMSA dict with train/valid/test is expected."
        )
    obj = dict(obj)
    if "valid" not in obj and "dev" in obj:
        obj["valid"] = obj.pop("dev")
    for name in SPLIT_NAMES:
        if name not in obj:
            found = ", ".join(sorted(map(str, obj))) or "none"
            raise DataError(f"{src}: split '{name}' is missing from the pickle (top-level keys: {found}).")
        if not isinstance(obj[name], dict):
            raise DataError(
                f"{src}: split '{name}' is a {type(obj[name]).__name__}, but a dict of arrays is expected."
            )
    return {name: obj[name] for name in SPLIT_NAMES}


def _as_array(src: str, split: str, key: str, value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists etc.
        raise DataError(
            f"{src}: split '{split}' key '{key}' cannot be read as an array ({detail(exc)})."
        ) from None
    return arr


def _float_features(src: str, split: str, key: str, value: Any) -> np.ndarray:
    arr = _as_array(src, split, key, value)
    if arr.dtype.kind not in "fiub":
        raise DataError(
            f"{src}: split '{split}' key '{key}' has dtype {arr.dtype} but numeric features are expected."
        )
    if arr.ndim != 3:
        raise DataError(
            f"{src}: split '{split}' key '{key}' has shape {tuple(arr.shape)} "
            "but a 3-D array (N, T, D) is expected."
        )
    out = np.asarray(arr, dtype=np.float32)
    return out if out.flags.writeable else out.copy()


def _strings(src: str, split: str, key: str, value: Any) -> np.ndarray:
    arr = _as_array(src, split, key, value)
    if arr.ndim != 1:
        raise DataError(
            f"{src}: split '{split}' key '{key}' has shape {tuple(arr.shape)} but (N,) strings are expected."
        )
    if arr.dtype.kind == "U":
        return arr
    out = []
    for v in arr.tolist():
        if isinstance(v, bytes):
            v = v.decode("utf-8", errors="replace")
        out.append(str(v))
    return np.array(out, dtype=str) if out else np.zeros(0, dtype="<U1")


def _lengths(src: str, split: str, key: str, value: Any) -> np.ndarray:
    arr = _as_array(src, split, key, value)
    if arr.ndim != 1:
        raise DataError(
            f"{src}: split '{split}' key '{key}' has shape {tuple(arr.shape)} but (N,) lengths are expected."
        )
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all() or (arr != np.round(arr)).any():
            i = int(np.argmax(~np.isfinite(arr) | (arr != np.round(np.nan_to_num(arr)))))
            raise DataError(
                f"{src}: split '{split}' key '{key}' holds a non-integer length {arr[i]} at row {i}."
            )
    elif arr.dtype.kind not in "iub":
        raise DataError(
            f"{src}: split '{split}' key '{key}' has dtype {arr.dtype} but integer lengths are expected."
        )
    return arr.astype(np.int64)


def _labels(src: str, split: str, key: str, value: Any) -> np.ndarray:
    arr = _as_array(src, split, key, value)
    if arr.ndim > 1 and all(d == 1 for d in arr.shape[1:]):
        arr = arr.reshape(arr.shape[0])
    if arr.ndim != 1:
        raise DataError(
            f"{src}: split '{split}' key '{key}' has shape {tuple(arr.shape)} but (N,) labels are expected."
        )
    if arr.dtype.kind not in "fiub":
        raise DataError(
            f"{src}: split '{split}' key '{key}' has dtype {arr.dtype} but numeric labels are expected."
        )
    return arr.astype(np.float32)


def _text_bert(src: str, split: str, value: Any) -> np.ndarray:
    arr = _as_array(src, split, "text_bert", value)
    if arr.ndim != 3 or arr.shape[1] != 3:
        raise DataError(
            f"{src}: split '{split}' key 'text_bert' has shape {tuple(arr.shape)} but (N, 3, L) is expected."
        )
    if arr.dtype.kind == "f":
        bad = ~np.isfinite(arr)
        bad |= np.where(bad, False, arr != np.round(np.nan_to_num(arr)))
        if bad.any():
            idx = tuple(int(i) for i in np.argwhere(bad)[0])
            raise DataError(
                f"{src}: split '{split}' key 'text_bert' holds the non-integer value {arr[idx]} "
                f"at index {idx}."
            )
    elif arr.dtype.kind not in "iub":
        raise DataError(
            f"{src}: split '{split}' key 'text_bert' has dtype {arr.dtype} but token ids are expected."
        )
    return arr.astype(np.int64)


def _zero_neg_inf(x: np.ndarray, chunk_elems: int = 1 << 24) -> None:
    """In place: -inf -> 0, in row chunks (no full-size boolean temporary for MOSEI-sized audio)."""
    rows = max(1, chunk_elems // max(1, int(np.prod(x.shape[1:]))))
    for start in range(0, x.shape[0], rows):
        part = x[start : start + rows]
        part[np.isneginf(part)] = 0.0


def _require(src: str, split: str, d: dict, key: str) -> Any:
    if key not in d:
        raise DataError(f"{src}: split '{split}' is missing the required key '{key}'.")
    return d[key]


def _take(src: str, split: str, d: dict, key: str) -> Any:
    """Remove ``key`` from the unpickled split dict and return its value (required key).

    The readers below pop every large array from the dict they convert, so when a conversion copies
    (e.g. float64 features -> float32) the original is released as soon as its copy exists instead of
    living in the unpickled dict until every split is converted: at most one array is ever held twice."""
    _require(src, split, d, key)
    return d.pop(key)


def _split_from_dict(src: str, name: str, d: dict) -> Split:
    if "text" not in d and "text_bert" not in d:
        raise DataError(f"{src}: split '{name}' is missing the required key 'text_bert' (or 'text').")
    audio = _float_features(src, name, "audio", _take(src, name, d, "audio"))
    _zero_neg_inf(audio)  # MMSA: audio -inf -> 0 (only audio)
    vision = _float_features(src, name, "vision", _take(src, name, d, "vision"))
    labels = _labels(src, name, "regression_labels", _require(src, name, d, "regression_labels"))
    n = labels.shape[0]
    ids = _strings(src, name, "id", d["id"]) if "id" in d else np.array([f"{name}_{i}" for i in range(n)])
    split = Split(name=name, audio=audio, vision=vision, labels=labels, ids=ids)
    if "text" in d and d["text"] is not None:
        split.text = _float_features(src, name, "text", _take(src, name, d, "text"))
    if "text_bert" in d and d["text_bert"] is not None:
        split.text_bert = _text_bert(src, name, _take(src, name, d, "text_bert"))
    for key in ("audio_lengths", "vision_lengths"):
        if key in d and d[key] is not None:
            setattr(split, key, _lengths(src, name, key, d[key]))
    if "raw_text" in d and d["raw_text"] is not None:
        split.raw_text = _strings(src, name, "raw_text", d["raw_text"])
    for key in EXTRA_LABEL_KEYS:
        if key in d and d[key] is not None:
            split.extra_labels[key] = _labels(src, name, key, d[key])
    return split


def _apply_override(data: MultimodalData, modality: str, path: str | os.PathLike) -> None:
    src = str(path)
    other = read_mmsa_splits(path)
    for name, s in data.splits.items():
        d = other[name]
        n = len(s)
        if modality == "text":
            if "text" not in d and "text_bert" not in d:
                raise DataError(f"{src}: split '{name}' is missing the required key 'text_bert' (or 'text').")
            new_text = (
                _float_features(src, name, "text", _take(src, name, d, "text"))
                if d.get("text") is not None
                else None
            )
            new_bert = (
                _text_bert(src, name, _take(src, name, d, "text_bert"))
                if d.get("text_bert") is not None
                else None
            )
            for key, arr in (("text", new_text), ("text_bert", new_bert)):
                if arr is not None and arr.shape[0] != n:
                    raise DataError(
                        f"{src}: split '{name}' key '{key}' has {arr.shape[0]} rows "
                        f"but the main file has {n}."
                    )
            s.text, s.text_bert, s.text_lengths = new_text, new_bert, None
        else:
            feats = _float_features(src, name, modality, _take(src, name, d, modality))
            if modality == "audio":
                _zero_neg_inf(feats)
            if feats.shape[0] != n:
                raise DataError(
                    f"{src}: split '{name}' key '{modality}' has {feats.shape[0]} rows "
                    f"but the main file has {n}."
                )
            lk = f"{modality}_lengths"
            lengths = _lengths(src, name, lk, d[lk]) if d.get(lk) is not None else None
            setattr(s, modality, feats)
            setattr(s, lk, lengths)
        if "id" in d:
            other_ids = _strings(src, name, "id", d["id"])
            if other_ids.shape[0] == n and not np.array_equal(other_ids, s.ids):
                i = int(np.argmax(other_ids != s.ids))
                raise DataError(
                    f"{src}: split '{name}' key 'id' has {other_ids[i]!r} at row {i} where the main file has "
                    f"{s.ids[i]!r}, so the override rows are not aligned."
                )


def load_mmsa(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    feature_overrides: dict[str, str] | None = None,
) -> MultimodalData:
    """Read an MMSA processed pickle into a :class:`MultimodalData` (regression on ``regression_labels``).

    ``feature_overrides`` maps ``"text"``/``"audio"``/``"vision"`` to another MMSA pickle of the same layout
    whose modality replaces this one (MMSA's ``feature_T/A/V``): text takes ``text`` and ``text_bert``,
    audio/vision take the features and their lengths.  Row counts per split must match, and when both
    files carry ids they must be equal row by row.  The result is not yet validated (see
    :func:`gsit.data.load_dataset`).
    """
    src = str(Path(path))
    raw = read_mmsa_splits(path)
    splits = {name: _split_from_dict(src, name, raw[name]) for name in SPLIT_NAMES}
    del raw
    data = MultimodalData(
        splits=splits, source=src, task="regression", dataset=normalize_dataset_name(dataset)
    )
    for modality, other in (feature_overrides or {}).items():
        if modality not in MODALITY_KEYS:
            raise DataError(
                f"{src}: feature override names the modality {modality!r}; "
                "expected 'text', 'audio' or 'vision'."
            )
        _apply_override(data, modality, other)
    for s in data.splits.values():
        s.fill_lengths()
    return data
