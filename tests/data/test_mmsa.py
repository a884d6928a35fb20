"""MMSA pickles (gsit.data.mmsa): good files, every bad input named by file and split/key, feature overrides,
read-only arrays of protocol-5 pickles."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from gsit.data import (
    load_dataset,
    load_mmsa,
)
from gsit.errors import DataError
from tests.data.helpers import SPLITS, expect_error, mmsa_dict, write

# ---------------------------------------------------------------------------------------------------------
# MMSA pickles: good files


def test_mmsa_bert_file_loads_with_types_and_lengths(tmp_path):
    raw = mmsa_dict()
    path = write(tmp_path, raw)
    data = load_dataset(path, dataset="mosi", vocab_size=2000)
    assert data.task == "regression" and data.dataset == "mosi" and data.text_kind == "bert"
    assert data.seq_lengths == {"text": 6, "audio": 7, "vision": 8}
    assert (data.text_dim, data.audio_dim, data.vision_dim) == (None, 3, 4)
    for name in SPLITS:
        s, d = data.splits[name], raw[name]
        assert s.audio.dtype == np.float32 and s.vision.dtype == np.float32
        assert s.text_bert.dtype == np.int64 and s.text_bert.shape == d["text_bert"].shape
        assert s.labels.dtype == np.float32 and s.labels.shape == (len(s),)
        assert s.ids.dtype.kind == "U" and s.ids[0] == d["id"][0]
        np.testing.assert_array_equal(s.text_lengths, d["text_bert"][:, 1].sum(1))
        np.testing.assert_array_equal(s.audio_lengths, d["audio_lengths"])
        np.testing.assert_array_equal(s.vision_lengths, d["vision_lengths"])
        assert s.text_lengths.dtype == s.audio_lengths.dtype == np.int64
        assert s.raw_text[1] == "text 1"


def test_mmsa_text_features_and_missing_lengths_default_to_full(tmp_path):
    raw = mmsa_dict(bert=False, feats=True)
    for d in raw.values():
        del d["audio_lengths"], d["vision_lengths"], d["id"], d["raw_text"]
    data = load_dataset(write(tmp_path, raw))
    s = data.splits["valid"]
    assert data.text_kind == "features" and data.text_dim == 5
    assert (s.text_lengths == 6).all() and (s.audio_lengths == 7).all() and (s.vision_lengths == 8).all()
    assert s.ids.tolist() == ["valid_0", "valid_1", "valid_2"] and s.raw_text is None


def test_mmsa_audio_neg_inf_becomes_zero(tmp_path):
    raw = mmsa_dict()
    raw["train"]["audio"][0, 0, 0] = -np.inf
    data = load_dataset(write(tmp_path, raw))
    assert data.splits["train"].audio[0, 0, 0] == 0.0


def test_mmsa_dev_split_and_column_labels_and_sims_extra(tmp_path):
    raw = mmsa_dict(label_scale=1.0)
    raw["dev"] = raw.pop("valid")
    for d in raw.values():
        n = len(d["regression_labels"])
        d["regression_labels"] = d["regression_labels"].reshape(n, 1)
        for m in "TAV":
            d[f"regression_labels_{m}"] = np.full(n, 0.2 if m == "T" else -0.4, dtype=np.float64)
    data = load_dataset(write(tmp_path, raw), dataset="sims")
    s = data.splits["valid"]
    assert s.name == "valid" and s.labels.shape == (3,)
    assert sorted(s.extra_labels) == ["regression_labels_A", "regression_labels_T", "regression_labels_V"]
    assert s.extra_labels["regression_labels_T"].dtype == np.float32


def test_mmsa_float_text_bert_is_cast(tmp_path):
    raw = mmsa_dict()
    data = load_mmsa(write(tmp_path, raw))
    np.testing.assert_array_equal(data.splits["test"].text_bert, raw["test"]["text_bert"].astype(np.int64))


# ---------------------------------------------------------------------------------------------------------
# MMSA pickles: every bad input names the file and the split/key at fault


def test_top_level_not_a_dict(tmp_path):
    expect_error(write(tmp_path, [1, 2, 3]), "list")


def test_missing_split(tmp_path):
    raw = mmsa_dict()
    del raw["test"]
    expect_error(write(tmp_path, raw), "'test'", "missing")


@pytest.mark.parametrize("key", ["audio", "vision", "regression_labels"])
def test_missing_required_key(tmp_path, key):
    raw = mmsa_dict()
    del raw["valid"][key]
    expect_error(write(tmp_path, raw), "'valid'", f"'{key}'", "missing")


def test_missing_text(tmp_path):
    raw = mmsa_dict()
    del raw["train"]["text_bert"]
    expect_error(write(tmp_path, raw), "'train'", "text_bert")


def test_empty_split(tmp_path):
    raw = mmsa_dict(n=(5, 0, 4))
    expect_error(write(tmp_path, raw), "'valid'", "empty")


@pytest.mark.parametrize("key,shape", [("audio", (5, 7)), ("vision", (5, 8, 4, 1)), ("text_bert", (5, 2, 6))])
def test_wrong_rank_or_layout(tmp_path, key, shape):
    raw = mmsa_dict()
    raw["train"][key] = np.zeros(shape, dtype=np.float32)
    expect_error(write(tmp_path, raw), "'train'", f"'{key}'", "shape")


@pytest.mark.parametrize("key", ["audio", "vision", "text_bert", "audio_lengths", "id", "raw_text"])
def test_row_count_mismatch_within_split(tmp_path, key):
    raw = mmsa_dict()
    v = raw["test"][key]
    raw["test"][key] = v[:-1]
    shown = {"id": "ids"}.get(key, key)
    expect_error(write(tmp_path, raw), "'test'", f"'{shown}'", "rows")


def test_feature_dim_mismatch_across_splits(tmp_path):
    raw = mmsa_dict()
    raw["valid"]["audio"] = np.zeros((3, 7, 9), dtype=np.float32)
    expect_error(write(tmp_path, raw), "'valid'", "'audio'", "(7, 9)", "(7, 3)")


def test_seq_length_mismatch_across_splits(tmp_path):
    raw = mmsa_dict()
    raw["test"]["vision"] = np.zeros((4, 5, 4), dtype=np.float32)
    raw["test"]["vision_lengths"] = np.full(4, 5)
    expect_error(write(tmp_path, raw), "'test'", "'vision'", "(5, 4)")


@pytest.mark.parametrize("bad", [-1, 9])
def test_lengths_out_of_range(tmp_path, bad):
    raw = mmsa_dict()
    raw["train"]["vision_lengths"][2] = bad
    expect_error(write(tmp_path, raw), "'train'", "'vision_lengths'", f"length {bad} at row 2", "[0, 8]")


def test_non_integer_lengths(tmp_path):
    raw = mmsa_dict()
    raw["train"]["audio_lengths"] = np.array([1.5, 2, 3, 4, 5])
    expect_error(write(tmp_path, raw), "'train'", "'audio_lengths'", "1.5")


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_audio(tmp_path, value):
    raw = mmsa_dict()
    raw["valid"]["audio"][1, 2, 0] = value
    expect_error(write(tmp_path, raw), "'valid'", "'audio'", "(1, 2, 0)")


def test_neg_inf_in_vision_is_an_error(tmp_path):
    raw = mmsa_dict()
    raw["test"]["vision"][0, 0, 0] = -np.inf
    expect_error(write(tmp_path, raw), "'test'", "'vision'", "-inf")


def test_nan_label(tmp_path):
    raw = mmsa_dict()
    raw["train"]["regression_labels"][3] = np.nan
    expect_error(write(tmp_path, raw), "'train'", "'labels'", "row 3")


@pytest.mark.parametrize("dataset,value", [("mosi", 3.5), ("mosei", -3.2), ("sims", 1.2), ("simsv2", -1.5)])
def test_label_out_of_range(tmp_path, dataset, value):
    raw = mmsa_dict(label_scale=1.0)
    raw["valid"]["regression_labels"][0] = value
    expect_error(write(tmp_path, raw), "'valid'", "'labels'", f"{value:g}", dataset, dataset=dataset)


def test_sims_unimodal_label_out_of_range(tmp_path):
    raw = mmsa_dict(label_scale=1.0)
    for d in raw.values():
        d["regression_labels_A"] = np.zeros(len(d["regression_labels"]), dtype=np.float32)
    raw["test"]["regression_labels_A"][1] = 2.0
    expect_error(write(tmp_path, raw), "'test'", "'regression_labels_A'", dataset="sims")


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(DataError, match="mossi"):
        load_dataset(write(tmp_path, mmsa_dict()), dataset="mossi")


def test_token_id_outside_vocab(tmp_path):
    raw = mmsa_dict()
    raw["train"]["text_bert"][1, 0, 0] = 5000
    msg = expect_error(write(tmp_path, raw), "'train'", "'text_bert'", "5000", vocab_size=3000)
    assert "3000" in msg


def test_negative_token_id(tmp_path):
    raw = mmsa_dict()
    raw["train"]["text_bert"][1, 0, 0] = -3
    expect_error(write(tmp_path, raw), "'train'", "'text_bert'", "-3")


def test_non_integer_token_id(tmp_path):
    raw = mmsa_dict()
    raw["train"]["text_bert"][0, 0, 1] = 17.5
    expect_error(write(tmp_path, raw), "'train'", "'text_bert'", "17.5")


def test_mask_row_must_be_binary(tmp_path):
    raw = mmsa_dict()
    raw["valid"]["text_bert"][2, 1, 0] = 2
    expect_error(write(tmp_path, raw), "'valid'", "'text_bert'", "mask")


def test_zero_length_sequence_axis(tmp_path):
    raw = mmsa_dict(Ta=0)
    for d in raw.values():
        d["audio_lengths"] = [0] * len(d["audio_lengths"])
    expect_error(write(tmp_path, raw), "'train'", "'audio'", "zero-length")


def test_string_features_rejected(tmp_path):
    raw = mmsa_dict()
    raw["train"]["vision"] = np.full((5, 8, 4), "x", dtype=object)
    expect_error(write(tmp_path, raw), "'train'", "'vision'", "dtype")


def test_unknown_format_and_missing_path(tmp_path):
    weird = tmp_path / "data.h5"
    weird.write_bytes(b"\x89HDF")
    expect_error(weird, "unknown data format")
    expect_error(tmp_path / "missing.pkl", "no such file")
    d = tmp_path / "somedir"
    d.mkdir()
    expect_error(d, "unknown data directory")


# ---------------------------------------------------------------------------------------------------------
# feature overrides (MMSA feature_T / feature_A / feature_V)


def test_feature_override_replaces_modality(tmp_path):
    main = mmsa_dict(seed=0)
    other = mmsa_dict(seed=1, Da=11, Ta=9)
    for name in SPLITS:  # same rows, same ids
        other[name]["id"] = main[name]["id"]
    main_p, other_p = write(tmp_path, main, "main.pkl"), write(tmp_path, other, "audio.pkl")
    data = load_dataset(main_p, feature_overrides={"audio": str(other_p)})
    s = data.splits["train"]
    assert s.audio.shape == (5, 9, 11)
    np.testing.assert_array_equal(s.audio, other["train"]["audio"])
    np.testing.assert_array_equal(s.audio_lengths, other["train"]["audio_lengths"])
    np.testing.assert_array_equal(s.vision, main["train"]["vision"])

    text_other = mmsa_dict(seed=2, bert=False, feats=True)
    for name in SPLITS:
        text_other[name]["id"] = main[name]["id"]
    tp = write(tmp_path, text_other, "text.pkl")
    data = load_dataset(main_p, feature_overrides={"text": str(tp), "vision": str(other_p)})
    assert data.text_kind == "features" and data.splits["valid"].text_bert is None
    np.testing.assert_array_equal(data.splits["valid"].vision, other["valid"]["vision"])


def test_feature_override_row_mismatch(tmp_path):
    main_p = write(tmp_path, mmsa_dict(n=(5, 3, 4)), "main.pkl")
    other_p = write(tmp_path, mmsa_dict(n=(5, 2, 4)), "vision.pkl")
    with pytest.raises(DataError) as err:
        load_dataset(main_p, feature_overrides={"vision": str(other_p)})
    assert str(other_p) in str(err.value) and "'valid'" in str(err.value) and "rows" in str(err.value)


def test_feature_override_id_mismatch(tmp_path):
    main = mmsa_dict(seed=0)
    other = mmsa_dict(seed=0)
    other["test"]["id"] = other["test"]["id"][::-1].copy()
    main_p, other_p = write(tmp_path, main, "main.pkl"), write(tmp_path, other, "vision.pkl")
    with pytest.raises(DataError) as err:
        load_dataset(main_p, feature_overrides={"vision": str(other_p)})
    assert str(other_p) in str(err.value) and "'test'" in str(err.value) and "'id'" in str(err.value)


def test_feature_override_bad_modality(tmp_path):
    main_p = write(tmp_path, mmsa_dict(), "main.pkl")
    with pytest.raises(DataError, match="'speech'"):
        load_dataset(main_p, feature_overrides={"speech": str(main_p)})


def test_read_only_arrays_in_protocol_5_pickle(tmp_path):
    raw = mmsa_dict()
    for d in raw.values():
        d["audio"][:, 0, 0] = -np.inf
        d["audio"].flags.writeable = False
    path = tmp_path / "p5.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=5))
    data = load_dataset(path)
    assert (data.splits["train"].audio[:, 0, 0] == 0).all()
