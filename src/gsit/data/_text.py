"""Tokenising raw text into MMSA-style ``text_bert`` rows with a LOCAL tokenizer directory (no network)."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from gsit.errors import DataError

__all__ = ["load_local_tokenizer", "tokenize_to_rows"]


def load_local_tokenizer(tokenizer_dir: str | os.PathLike | None):
    """``transformers.AutoTokenizer.from_pretrained(dir, local_files_only=True)`` with DataErrors."""
    if tokenizer_dir is None:
        raise DataError("tokenizing raw text needs a local tokenizer directory (tokenizer_dir is not set).")
    d = Path(tokenizer_dir)
    if not d.is_dir():
        raise DataError(f"{d}: the tokenizer directory does not exist.")
    return _load_cached(str(d.resolve()), str(d))


@functools.lru_cache(maxsize=4)
def _load_cached(resolved: str, shown: str):
    d = Path(shown)
    try:
        from transformers import AutoTokenizer
    except ImportError:
        raise DataError(
            f"{d}: tokenizing raw text needs the 'transformers' package (pip install 'gsit[text]')."
        ) from None
    try:
        return AutoTokenizer.from_pretrained(resolved, local_files_only=True)
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{d}: cannot load a tokenizer from this directory ({detail}).") from None


def tokenize_to_rows(tokenizer, texts: list[str], max_len: int) -> np.ndarray:
    """(N, 3, max_len) int64: token ids ([CLS] ... [SEP], zero padding at the end), mask, segment ids."""
    if max_len < 2:
        raise DataError(f"max_text_len must be at least 2 ([CLS] and [SEP]), not {max_len}.")
    n = len(texts)
    out = np.zeros((n, 3, max_len), dtype=np.int64)
    if n == 0:
        return out
    enc = tokenizer(
        list(texts),
        max_length=max_len,
        padding="max_length",
        truncation=True,
        return_attention_mask=True,
        return_token_type_ids=True,
    )
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    mask = np.asarray(enc["attention_mask"], dtype=np.int64)
    out[:, 0] = ids * mask  # pad id is 0 for BERT vocabularies; force zero padding regardless
    out[:, 1] = mask
    if "token_type_ids" in enc:
        out[:, 2] = np.asarray(enc["token_type_ids"], dtype=np.int64) * mask
    return out
