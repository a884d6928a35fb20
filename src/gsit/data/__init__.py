"""gsit's data layer (numpy arrays; torch only in :mod:`gsit.data.batch`).

:func:`load_dataset` reads any supported source and validates it:

* a directory with ``meta.json`` -- gsit's code-free converted format (:mod:`gsit.data.convert`);
* a ``.pkl``/``.pickle`` file -- an MMSA processed pickle (:mod:`gsit.data.mmsa`, restricted unpickler);
* a directory with ``train.tsv`` -- MIntRec (:mod:`gsit.data.mintrec`, needs ``text_tokenizer_dir``);
* a ``.csv`` file -- a MOSI-style utterance CSV (:mod:`gsit.data.mosi_real`, needs ``text_tokenizer_dir``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from gsit.data._text import load_local_tokenizer
from gsit.data.batch import Batch, SplitDataset
from gsit.data.convert import load_converted, save_converted
from gsit.data.dataset import SPLIT_NAMES, MultimodalData, Split, validate
from gsit.data.mintrec import load_mintrec
from gsit.data.mmsa import load_mmsa
from gsit.data.mosi_real import build_mosi_from_csv
from gsit.data.safe_pickle import load_pickle
from gsit.data.synthetic import (
    MAX_RECALL_KEYS,
    PRESET_SHAPES,
    SYNTHETIC_TASKS,
    make_synthetic,
    write_mmsa_pickle,
)
from gsit.errors import DataError

__all__ = [
    "Batch",
    "DataError",
    "MultimodalData",
    "PRESET_SHAPES",
    "SPLIT_NAMES",
    "Split",
    "SplitDataset",
    "drop_unused_text",
    "select_text_kind",
    "load_converted",
    "load_dataset",
    "load_mintrec",
    "load_mmsa",
    "load_pickle",
    "build_mosi_from_csv",
    "make_synthetic",
    "save_converted",
    "validate",
    "write_mmsa_pickle",
]


def load_dataset(
    path: str | os.PathLike,
    *,
    dataset: str | None = None,
    text_tokenizer_dir: str | os.PathLike | None = None,
    vocab_size: int | None = None,
    feature_overrides: dict[str, str] | None = None,
    max_text_len: int | None = None,
    mintrec_binary: bool = False,
    allow_missing_features: bool = False,
    features_npz: str | os.PathLike | None = None,
) -> MultimodalData:
    """Load and :func:`validate` the data at ``path`` (format chosen from what is there; see module doc).

    ``vocab_size``, when given, bounds the text_bert token ids; for tokenized sources (MIntRec, CSV) it
    defaults to the tokenizer's vocabulary size.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory.")
    if feature_overrides and not (p.is_file() and p.suffix.lower() in (".pkl", ".pickle")):
        raise DataError(f"{p}: feature_overrides apply only to MMSA pickles (.pkl).")
    if p.is_dir() and (p / "meta.json").is_file():
        data = load_converted(p)
    elif p.is_file() and p.suffix.lower() in (".pkl", ".pickle"):
        data = load_mmsa(p, dataset=dataset, feature_overrides=feature_overrides)
    elif p.is_dir() and (p / "train.tsv").is_file():
        data = load_mintrec(
            p,
            tokenizer_dir=text_tokenizer_dir,
            max_text_len=max_text_len or 30,
            binary=mintrec_binary,
            allow_missing_features=allow_missing_features,
        )
        vocab_size = vocab_size if vocab_size is not None else _tokenizer_vocab(text_tokenizer_dir)
    elif p.is_file() and p.suffix.lower() == ".csv":
        data = build_mosi_from_csv(
            p, tokenizer_dir=text_tokenizer_dir, features_npz=features_npz, max_text_len=max_text_len or 50
        )
        vocab_size = vocab_size if vocab_size is not None else _tokenizer_vocab(text_tokenizer_dir)
    elif p.is_dir():
        raise DataError(
            f"{p}: unknown data directory (expected meta.json for converted data or train.tsv for MIntRec)."
        )
    else:
        raise DataError(f"{p}: unknown data format (expected an MMSA .pkl, a .csv or a data directory).")
    return validate(data, dataset=dataset, vocab_size=vocab_size)


def _tokenizer_vocab(tokenizer_dir) -> int | None:
    try:
        return len(load_local_tokenizer(tokenizer_dir))
    except DataError:
        return None


def apply_zero_modalities(data: MultimodalData, modalities) -> MultimodalData:
    """Replace the features of ``modalities`` (audio, vision, text) by zeros in every split, in place
    (a control: e.g. ``("audio", "vision")`` leaves a text-only model of the same architecture)."""
    known = ("text", "audio", "vision")
    for m in modalities:
        if m not in known:
            raise DataError(f"data.zero_modalities: unknown modality {m!r}; known: {list(known)}")
        if m == "text" and data.text_kind == "bert":
            raise DataError("data.zero_modalities: text given as token ids (text_bert) cannot be zeroed")
        for s in data.splits.values():
            arr = getattr(s, m)
            arr[...] = 0
    return data


def load_run_data(data_cfg, *, quiet: bool = True) -> MultimodalData:
    """The data a run's ``[data]`` config names, exactly as ``gsit train`` reads it: the synthetic task when
    no path is given, ``data.zero_modalities`` applied.  A fresh object every call (zeroing is in place)."""
    if not data_cfg.path:
        if data_cfg.dataset != "synthetic":
            raise DataError(
                f"--data is required for dataset {data_cfg.dataset!r} (only 'synthetic' is generated)"
            )
        if not quiet:
            print(
                "no --data given: using a freshly generated synthetic dataset (gsit synth)", file=sys.stderr
            )
        task = data_cfg.synthetic_task
        if task not in SYNTHETIC_TASKS:
            raise DataError(f"data.synthetic_task={task!r}; known: {list(SYNTHETIC_TASKS)}")
        kw: dict = {"seed": 0, "task": task}
        if task == "recall":
            if not 2 <= data_cfg.synthetic_recall_keys <= MAX_RECALL_KEYS:
                raise DataError(
                    f"data.synthetic_recall_keys={data_cfg.synthetic_recall_keys} must be in "
                    f"[2, {MAX_RECALL_KEYS}]"
                )
            kw["recall_keys"] = data_cfg.synthetic_recall_keys
        if data_cfg.synthetic_size != "small":
            kw["preset"] = data_cfg.synthetic_size
        data = make_synthetic(**kw)
    else:
        ds = None if data_cfg.dataset == "synthetic" else data_cfg.dataset
        data = load_dataset(
            data_cfg.path,
            dataset=ds,
            text_tokenizer_dir=data_cfg.text_encoder or None,
            mintrec_binary=data_cfg.binary,
        )
    return apply_zero_modalities(
        select_text_kind(data, getattr(data_cfg, "text_kind", "auto")), data_cfg.zero_modalities
    )


_TEXT_KEYS = {
    "features": ("text", "frozen pre-extracted text features (N, L, D)"),
    "bert": ("text_bert", "token ids (N, 3, L)"),
}


def select_text_kind(data: MultimodalData, kind: str = "auto") -> MultimodalData:
    """Keep the text input ``kind`` names and release the other one, in place.

    ``"features"``: the frozen ``text`` features (MMSA's MulT reads these: ``use_bert: false``);
    ``"bert"``: the ``text_bert`` token ids, for a text encoder that is fine-tuned (GsiT);
    ``"auto"``: token ids when present, else features (:func:`drop_unused_text`).
    A kind that the data does not hold is a DataError naming what the data has."""
    if kind == "auto":
        return drop_unused_text(data)
    if kind not in _TEXT_KEYS:
        raise DataError(f"data.text_kind={kind!r}; allowed: ['auto', 'features', 'bert']")
    key, what = _TEXT_KEYS[kind]
    other_kind = "bert" if kind == "features" else "features"
    other_key, _ = _TEXT_KEYS[other_kind]
    for name, s in data.splits.items():
        if getattr(s, key) is None:
            has = other_key if getattr(s, other_key) is not None else "no text"
            hint = (
                f"; the file has '{other_key}': set data.text_kind=\"{other_kind}\""
                + (" and pass --text-encoder DIR" if other_kind == "bert" else "")
                if has == other_key
                else ""
            )
            raise DataError(
                f"{data.source}: data.text_kind=\"{kind}\" needs the key '{key}' ({what}), which "
                f"split '{name}' does not have{hint}"
            )
    for s in data.splits.values():
        setattr(s, other_key, None)
    return data


def drop_unused_text(data: MultimodalData) -> MultimodalData:
    """Release precomputed ``text`` features when ``text_bert`` token rows are present, in place.

    Models always read ``text_bert`` when a split has it (``data.text_kind == "bert"``), so the float
    features are never used; an MMSA MOSEI pickle carries both, and its ``text`` (N, 50, 768) float32 is
    3.5 GB over the three splits -- more than audio and vision together would leave room for."""
    if data.text_kind == "bert":
        for s in data.splits.values():
            s.text = None
    return data
