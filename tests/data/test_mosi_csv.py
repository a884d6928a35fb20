"""The MOSI CSV builder (gsit.data.mosi_real) with a tiny local tokenizer (tests/data/conftest.py): no
network, no shared data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gsit.data import (
    load_dataset,
    validate,
)
from gsit.errors import DataError
from tests.data.helpers import SPLITS


def _write_mosi(tmp_path: Path, *, drop_feature=None):
    rows = [
        ("v1_1", "train", "HELLO WORLD", 2.4),
        ("v1_2", "train", "BAD MOVIE", -1.2),
        ("v2_1", "valid", "GOOD", 0.0),
        ("v3_1", "test", "THE MANAGER", -3.0),
        ("v3_2", "test", "GOOD MOVIE", 3.0),
    ]
    csv_path = tmp_path / "utterances.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["utterance_id", "video_id", "split", "text", "label", "label_certain"])
        for uid, split, text, label in rows:
            w.writerow([uid, uid.split("_")[0], split, text, label, 1])
    ids = np.array(sorted(r[0] for r in rows if r[0] != drop_feature))
    rng = np.random.default_rng(0)
    npz = tmp_path / "feats.npz"
    np.savez(
        npz,
        utterance_id=ids,
        text=rng.standard_normal((len(ids), 3)).astype(np.float32),
        audio=rng.standard_normal((len(ids), 7)).astype(np.float32),
        video=rng.standard_normal((len(ids), 9)).astype(np.float32),
    )
    return csv_path, npz


def test_mosi_csv_builder(tmp_path, tiny_tokenizer):
    from gsit.data.mosi_real import build_mosi_from_csv

    csv_path, npz = _write_mosi(tmp_path)
    data = validate(
        build_mosi_from_csv(csv_path, tokenizer_dir=tiny_tokenizer, features_npz=npz, max_text_len=6),
        dataset="mosi",
    )
    assert [len(data.splits[k]) for k in SPLITS] == [2, 1, 2]
    s = data.splits["test"]
    assert s.ids.tolist() == ["v3_1", "v3_2"] and s.labels.tolist() == [-3.0, 3.0]
    assert s.audio.shape == (2, 1, 7) and s.vision.shape == (2, 1, 9) and (s.audio_lengths == 1).all()
    with np.load(npz) as f:
        row = f["utterance_id"].tolist().index("v3_2")
        np.testing.assert_array_equal(s.audio[1, 0], f["audio"][row])
    assert s.text_bert.shape == (2, 3, 6) and s.text_bert[0, 0, 0] == 101
    assert s.text_lengths.tolist() == [4, 4]  # [CLS] the manager [SEP]  (lower-cased by the tokenizer)
    plain = load_dataset(csv_path, text_tokenizer_dir=tiny_tokenizer)
    assert plain.splits["train"].audio.shape == (2, 1, 1) and plain.seq_lengths["text"] == 50


def test_mosi_csv_missing_feature_row(tmp_path, tiny_tokenizer):
    from gsit.data.mosi_real import build_mosi_from_csv

    csv_path, npz = _write_mosi(tmp_path, drop_feature="v2_1")
    with pytest.raises(DataError, match=r"feats\.npz: has no features for the utterance id 'v2_1'"):
        build_mosi_from_csv(csv_path, tokenizer_dir=tiny_tokenizer, features_npz=npz)


def test_mosi_csv_bad_rows(tmp_path, tiny_tokenizer):
    from gsit.data.mosi_real import build_mosi_from_csv

    bad = tmp_path / "bad.csv"
    bad.write_text("utterance_id,split,text,label\na_1,train,HI,2\na_2,holdout,HI,1\n")
    with pytest.raises(DataError, match=r"bad\.csv: row 3 has the unknown split 'holdout'"):
        build_mosi_from_csv(bad, tokenizer_dir=tiny_tokenizer)
    bad.write_text("utterance_id,split,text,label\na_1,train,HI,oops\n")
    with pytest.raises(DataError, match=r"row 2 has the label 'oops'"):
        build_mosi_from_csv(bad, tokenizer_dir=tiny_tokenizer)
    bad.write_text("utterance_id,split,text\na_1,train,HI\n")
    with pytest.raises(DataError, match=r"lacks the column 'label'"):
        build_mosi_from_csv(bad, tokenizer_dir=tiny_tokenizer)
