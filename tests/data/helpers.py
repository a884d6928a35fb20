"""Helpers of the data tests: raw MMSA dicts written with stdlib pickle, one-line error checks, an
in-memory classification dataset."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest

from gsit.data import (
    MultimodalData,
    Split,
    load_dataset,
)
from gsit.errors import DataError

SPLITS = ("train", "valid", "test")


# ---------------------------------------------------------------------------------------------------------
# helpers: raw MMSA dicts written with stdlib pickle in tmp_path


def mmsa_dict(n=(5, 3, 4), L=6, Ta=7, Da=3, Tv=8, Dv=4, *, bert=True, feats=False, seed=0, label_scale=3.0):
    rng = np.random.default_rng(seed)
    out = {}
    for name, ni in zip(SPLITS, n, strict=True):
        tl = rng.integers(2, L + 1, size=ni)
        mask = (np.arange(L)[None] < tl[:, None]).astype(np.float32)
        ids = rng.integers(1000, 2000, size=(ni, L)).astype(np.float32) * mask
        d = {
            "raw_text": np.array([f"text {i}" for i in range(ni)], dtype=object),
            "id": np.array([f"vid{i}$_${name}" for i in range(ni)], dtype=object),
            "audio": rng.standard_normal((ni, Ta, Da)).astype(np.float32),
            "vision": rng.standard_normal((ni, Tv, Dv)).astype(np.float32),
            "audio_lengths": [int(v) for v in rng.integers(0, Ta + 1, size=ni)],
            "vision_lengths": rng.integers(0, Tv + 1, size=ni),
            "regression_labels": rng.uniform(-label_scale, label_scale, size=ni).astype(np.float32),
            "classification_labels": np.zeros(ni, dtype=np.float32),
            "annotations": np.array(["Neutral"] * ni, dtype=object),
        }
        if bert:
            d["text_bert"] = np.stack([ids, mask, np.zeros_like(mask)], axis=1)
        if feats:
            d["text"] = rng.standard_normal((ni, L, 5)).astype(np.float32)
        out[name] = d
    return out


def write(tmp_path, obj, name="data.pkl") -> Path:
    path = tmp_path / name
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
    return path


def expect_error(path, *needles, **kwargs) -> str:
    with pytest.raises(DataError) as err:
        load_dataset(path, **kwargs)
    msg = str(err.value)
    for needle in (str(path), *needles):
        assert needle in msg, (needle, msg)
    assert "\n" not in msg
    return msg


# ---------------------------------------------------------------------------------------------------------
# an in-memory classification dataset


def classification_data(labels_train, k=20):
    def split(name, labels):
        n = len(labels)
        return Split(
            name=name,
            audio=np.zeros((n, 2, 3), np.float32),
            vision=np.zeros((n, 2, 3), np.float32),
            labels=np.asarray(labels, dtype=np.int64),
            ids=np.array([f"{name}{i}" for i in range(n)]),
            text_bert=np.ones((n, 3, 4), np.int64),
        )

    splits = {"train": split("train", labels_train), "dev": split("dev", [0, 19]), "test": split("test", [3])}
    return MultimodalData(splits=splits, source="mem", task="classification", dataset="mintrec")
