"""Reader for MIntRec (thuiar/MIntRec, ACM MM 2022; SPEC Part B §1.3).

Layout of the dataset directory::

    train.tsv, dev.tsv, test.tsv          columns season, episode, clip, text, label (header row)
    video_data/video_feats.pkl            dict "S05_E16_329" -> (T, 1, 256) (or (T, 256))
    audio_data/audio_feats.pkl            dict "S05_E16_329" -> (T, 768)

(the two pickles are also looked up directly in the directory).  Text is tokenized with a local
tokenizer into ``text_bert`` rows (N, 3, max_text_len); video/audio are zero-padded at the end to 230 /
480 frames (longer clips are truncated) with their lengths recorded; the ``dev`` split becomes ``valid``.
Labels are class ids in :data:`INTENT_LABELS` order, or 0 = Emotion / 1 = Goal with ``binary=True``.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import numpy as np

from gsit.data._text import load_local_tokenizer, tokenize_to_rows
from gsit.data._util import detail
from gsit.data.dataset import MultimodalData, Split
from gsit.data.safe_pickle import load_pickle
from gsit.errors import DataError

__all__ = [
    "load_mintrec",
    "INTENT_LABELS",
    "BINARY_LABELS",
    "BINARY_MAP",
    "VIDEO_MAX_LEN",
    "AUDIO_MAX_LEN",
]

INTENT_LABELS = [
    "Complain",
    "Praise",
    "Apologise",
    "Thank",
    "Criticize",
    "Agree",
    "Taunt",
    "Flaunt",
    "Joke",
    "Oppose",
    "Comfort",
    "Care",
    "Inform",
    "Advise",
    "Arrange",
    "Introduce",
    "Leave",
    "Prevent",
    "Greet",
    "Ask for help",
]
BINARY_LABELS = ["Emotion", "Goal"]
_EMOTION = (
    "Complain",
    "Praise",
    "Apologise",
    "Thank",
    "Criticize",
    "Care",
    "Agree",
    "Taunt",
    "Flaunt",
    "Joke",
    "Oppose",
)
_GOAL = ("Inform", "Advise", "Arrange", "Introduce", "Leave", "Prevent", "Greet", "Ask for help", "Comfort")
BINARY_MAP = {**{k: "Emotion" for k in _EMOTION}, **{k: "Goal" for k in _GOAL}}
VIDEO_MAX_LEN = 230
AUDIO_MAX_LEN = 480
_FILES = {"train": "train.tsv", "valid": "dev.tsv", "test": "test.tsv"}
_COLUMNS = ("season", "episode", "clip", "text", "label")


def _read_tsv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found.")
    try:
        # As MIntRec itself reads its TSVs (csv.reader with quotechar=None): a quote is an ordinary
        # character, so every line is one row ('"she said' cannot swallow the lines after it).  A UTF-8
        # byte-order mark (spreadsheet exports) is dropped.
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as a TSV file ({detail(exc)}).") from None
    if not rows:
        raise DataError(
            f"{path}: the file is empty (a header row season, episode, clip, text, label is expected)."
        )
    header = [h.strip().lower() for h in rows[0]]
    missing = [c for c in _COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path}: the header lacks the column '{missing[0]}' (found: {', '.join(header)}).")
    col = {c: header.index(c) for c in _COLUMNS}
    out = []
    for lineno, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(
                f"{path}: row {lineno} has {len(row)} tab-separated columns but the header has {len(header)}."
            )
        out.append({c: row[i] for c, i in col.items()} | {"_line": str(lineno)})
    if not out:
        raise DataError(f"{path}: the file has a header but no data rows.")
    return out


def _find_feature_file(root: Path, given: str | os.PathLike | None, sub: str, name: str) -> Path:
    if given is not None:
        return Path(given)
    for cand in (root / sub / name, root / name):
        if cand.is_file():
            return cand
    return root / sub / name


def _load_feature_dict(path: Path) -> dict[str, Any]:
    obj = load_pickle(path)
    if not isinstance(obj, dict):
        raise DataError(
            f"{path}: the pickle holds a {type(obj).__name__}, but a dict clip-id -> array is expected."
        )
    return obj


def _pad_features(path: Path, feats: dict[str, Any], keys: list[str], max_len: int, kind: str):
    n = len(keys)
    arrays = []
    dim = None
    for key in keys:
        if key not in feats:
            raise DataError(f"{path}: has no {kind} features for the clip '{key}'.")
        a = np.asarray(feats[key])
        if a.ndim == 3 and a.shape[1] == 1:
            a = a[:, 0, :]
        if a.ndim != 2 or a.dtype.kind not in "fiu":
            raise DataError(
                f"{path}: clip '{key}' has {kind} features of shape {tuple(a.shape)} and dtype {a.dtype}, "
                "but (T, D) or (T, 1, D) numbers are expected."
            )
        if dim is None:
            dim = a.shape[1]
        elif a.shape[1] != dim:
            raise DataError(
                f"{path}: clip '{key}' has {kind} feature width {a.shape[1]} but earlier clips have {dim}."
            )
        arrays.append(a)
    out = np.zeros((n, max_len, dim), dtype=np.float32)
    lengths = np.zeros(n, dtype=np.int64)
    for i, a in enumerate(arrays):
        t = min(a.shape[0], max_len)
        out[i, :t] = a[:t]
        lengths[i] = t
    if not np.isfinite(out).all():
        i = int(np.argwhere(~np.isfinite(out))[0][0])
        raise DataError(f"{path}: clip '{keys[i]}' has non-finite {kind} features.")
    return out, lengths


def load_mintrec(
    directory: str | os.PathLike,
    *,
    tokenizer_dir: str | os.PathLike | None,
    max_text_len: int = 30,
    video_file: str | os.PathLike | None = None,
    audio_file: str | os.PathLike | None = None,
    binary: bool = False,
    allow_missing_features: bool = False,
    video_max_len: int = VIDEO_MAX_LEN,
    audio_max_len: int = AUDIO_MAX_LEN,
) -> MultimodalData:
    """Read a MIntRec directory into a classification :class:`MultimodalData` (not yet validated).

    When a feature pickle is absent this raises a DataError naming it, unless ``allow_missing_features``
    is set: then that modality becomes one zero frame of width 1 per sample (length 1), which lets a
    text-only pipeline run but carries no information.
    """
    root = Path(directory)
    if not root.is_dir():
        raise DataError(f"{root}: the MIntRec directory does not exist.")
    names = BINARY_LABELS if binary else INTENT_LABELS
    index = {name: i for i, name in enumerate(names)}
    rows_by_split = {split: _read_tsv(root / fname) for split, fname in _FILES.items()}
    for split, rows in rows_by_split.items():
        path = root / _FILES[split]
        for r in rows:
            label = r["label"].strip()
            if label not in INTENT_LABELS:
                raise DataError(
                    f"{path}: row {r['_line']} has the unknown intent label {label!r} "
                    f"(expected one of the 20 MIntRec intents)."
                )

    tokenizer = load_local_tokenizer(tokenizer_dir)
    video_path = _find_feature_file(root, video_file, "video_data", "video_feats.pkl")
    audio_path = _find_feature_file(root, audio_file, "audio_data", "audio_feats.pkl")
    feature_dicts: dict[str, tuple[Path, dict | None]] = {}
    for kind, path in (("video", video_path), ("audio", audio_path)):
        if path.exists():
            feature_dicts[kind] = (path, _load_feature_dict(path))
        elif allow_missing_features:
            feature_dicts[kind] = (path, None)
        else:
            raise DataError(
                f"{path}: the MIntRec {kind} feature file is missing "
                "(pass allow_missing_features=True to use "
                "zero placeholders)."
            )

    splits: dict[str, Split] = {}
    for split, rows in rows_by_split.items():
        keys = [f"{r['season'].strip()}_{r['episode'].strip()}_{r['clip'].strip()}" for r in rows]
        texts = [r["text"] for r in rows]
        labels = np.array(
            [index[BINARY_MAP[r["label"].strip()]] if binary else index[r["label"].strip()] for r in rows],
            dtype=np.int64,
        )
        n = len(rows)
        mods = {}
        for kind, max_len in (("video", video_max_len), ("audio", audio_max_len)):
            path, feats = feature_dicts[kind]
            if feats is None:
                mods[kind] = (np.zeros((n, 1, 1), dtype=np.float32), np.ones(n, dtype=np.int64))
            else:
                mods[kind] = _pad_features(path, feats, keys, max_len, kind)
        text_bert = tokenize_to_rows(tokenizer, texts, max_text_len)
        splits[split] = Split(
            name=split,
            audio=mods["audio"][0],
            vision=mods["video"][0],
            labels=labels,
            ids=np.array(keys),
            text_bert=text_bert,
            text_lengths=text_bert[:, 1].sum(axis=1),
            audio_lengths=mods["audio"][1],
            vision_lengths=mods["video"][1],
            raw_text=np.array(texts),
        )
    return MultimodalData(
        splits=splits,
        source=str(root),
        task="classification",
        num_classes=len(names),
        label_names=list(names),
        dataset="mintrec",
    )
