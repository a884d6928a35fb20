"""The MIntRec reader (gsit.data.mintrec) with a tiny local tokenizer (tests/data/conftest.py): no network,
no shared data."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from gsit.data import (
    load_dataset,
)
from gsit.errors import DataError
from tests.data.helpers import SPLITS, write

INTENTS = ["Complain", "Inform", "Ask for help", "Comfort", "Thank"]


def _write_mintrec(root: Path, *, video_T=(3, 300), audio_T=(500, 2), bad_label=None, with_features=True):
    root.mkdir(parents=True, exist_ok=True)
    video, audio = {}, {}
    rng = np.random.default_rng(0)
    for fname, n in (("train.tsv", 5), ("dev.tsv", 3), ("test.tsv", 2)):
        with open(root / fname, "w", newline="") as fh:
            w = csv.writer(fh, delimiter="\t")
            w.writerow(["season", "episode", "clip", "text", "label"])
            for i in range(n):
                label = INTENTS[i % len(INTENTS)]
                if bad_label and fname == "dev.tsv" and i == 1:
                    label = bad_label
                key = (f"S0{i % 3 + 1}", f"E{i:02d}", f"{fname[:2]}{i}")
                w.writerow([*key, "Hello world, the manager" if i % 2 else "we are good!", label])
                video["_".join(key)] = rng.standard_normal((video_T[i % 2], 1, 6)).astype(np.float32)
                audio["_".join(key)] = rng.standard_normal((audio_T[i % 2], 4)).astype(np.float32)
    if with_features:
        (root / "video_data").mkdir()
        (root / "audio_data").mkdir()
        write(root / "video_data", video, "video_feats.pkl")
        write(root / "audio_data", audio, "audio_feats.pkl")
    return video, audio


def test_mintrec_reader(tmp_path, tiny_tokenizer):
    video, audio = _write_mintrec(tmp_path / "mintrec")
    data = load_dataset(tmp_path / "mintrec", text_tokenizer_dir=tiny_tokenizer, max_text_len=8)
    assert data.task == "classification" and data.num_classes == 20 and data.dataset == "mintrec"
    assert [len(data.splits[k]) for k in SPLITS] == [5, 3, 2]
    s = data.splits["train"]
    assert s.audio.shape == (5, 480, 4) and s.vision.shape == (5, 230, 6)
    assert s.vision_lengths.tolist() == [3, 230, 3, 230, 3] and s.audio_lengths.tolist() == [
        480,
        2,
        480,
        2,
        480,
    ]
    key = s.ids[1]
    np.testing.assert_array_equal(s.vision[1], video[key][:230, 0])  # truncated to 230, squeezed
    np.testing.assert_array_equal(s.audio[0, :480], audio[s.ids[0]][:480])
    assert (s.vision[0, 3:] == 0).all() and (s.audio[1, 2:] == 0).all()  # zero padding at the end
    assert s.labels.tolist() == [0, 12, 19, 10, 3]  # official order
    assert s.text_bert.shape == (5, 3, 8) and s.text_bert.dtype == np.int64
    assert s.text_bert[0, 0, 0] == 101 and (s.text_bert[:, 1].sum(1) == s.text_lengths).all()
    binary = load_dataset(tmp_path / "mintrec", text_tokenizer_dir=tiny_tokenizer, mintrec_binary=True)
    assert binary.num_classes == 2 and binary.label_names == ["Emotion", "Goal"]
    assert binary.splits["train"].labels.tolist() == [0, 1, 1, 1, 0]  # Comfort counts as Goal


def test_mintrec_unknown_label(tmp_path, tiny_tokenizer):
    _write_mintrec(tmp_path / "m", bad_label="Dance")
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "m", text_tokenizer_dir=tiny_tokenizer)
    msg = str(err.value)
    assert "dev.tsv" in msg and "row 3" in msg and "'Dance'" in msg


def test_mintrec_missing_features(tmp_path, tiny_tokenizer):
    _write_mintrec(tmp_path / "m", with_features=False)
    with pytest.raises(DataError, match=r"video_feats\.pkl.*missing"):
        load_dataset(tmp_path / "m", text_tokenizer_dir=tiny_tokenizer)
    data = load_dataset(tmp_path / "m", text_tokenizer_dir=tiny_tokenizer, allow_missing_features=True)
    s = data.splits["test"]
    assert s.audio.shape == (2, 1, 1) and (s.audio == 0).all() and (s.audio_lengths == 1).all()


def test_mintrec_missing_clip_and_tokenizer(tmp_path, tiny_tokenizer):
    from gsit.data.mintrec import load_mintrec

    video, _ = _write_mintrec(tmp_path / "m")
    video.pop(sorted(video)[0])
    (tmp_path / "m" / "video_data" / "video_feats.pkl").unlink()
    write(tmp_path / "m" / "video_data", video, "video_feats.pkl")
    with pytest.raises(DataError, match=r"video_feats\.pkl: has no video features for the clip"):
        load_mintrec(tmp_path / "m", tokenizer_dir=tiny_tokenizer)
    with pytest.raises(DataError, match="tokenizer"):
        load_dataset(tmp_path / "m")
    with pytest.raises(DataError, match="nowhere"):
        load_mintrec(tmp_path / "m", tokenizer_dir=tmp_path / "nowhere")
