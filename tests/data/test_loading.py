"""MMSA pickles, validation, the converted format, MIntRec / MOSI-CSV readers (tiny local tokenizer),
batching."""

from __future__ import annotations

import csv
import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gsit.data import (
    Batch,
    MultimodalData,
    Split,
    SplitDataset,
    load_converted,
    load_dataset,
    load_mmsa,
    make_synthetic,
    save_converted,
    validate,
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


# ---------------------------------------------------------------------------------------------------------
# validate on in-memory data (classification)


def _classification(labels_train, k=20):
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


def test_validate_classification_range_and_dev_rename():
    data = validate(_classification([0, 5, 19]))
    assert data.num_classes == 20 and "valid" in data.splits and data.splits["valid"].name == "valid"
    with pytest.raises(DataError, match=r"'train' key 'labels' holds class id 20 at row 1, outside 0\.\.19"):
        validate(_classification([0, 20]))
    with pytest.raises(DataError, match=r"class id -1"):
        validate(_classification([-1, 2]))


def test_validate_float_labels_for_classification_rejected():
    data = _classification([0, 1])
    data.splits["train"].labels = np.array([0.0, 1.0])
    with pytest.raises(DataError, match="integer class ids"):
        validate(data)


# ---------------------------------------------------------------------------------------------------------
# converted format


def _assert_same(a: MultimodalData, b: MultimodalData):
    assert (a.task, a.num_classes, a.label_names, a.dataset) == (
        b.task,
        b.num_classes,
        b.label_names,
        b.dataset,
    )
    for name in SPLITS:
        sa, sb = a.splits[name], b.splits[name]
        for key in (
            "audio",
            "vision",
            "labels",
            "ids",
            "text",
            "text_bert",
            "text_lengths",
            "audio_lengths",
            "vision_lengths",
            "raw_text",
        ):
            va, vb = getattr(sa, key), getattr(sb, key)
            assert (va is None) == (vb is None), key
            if va is not None:
                np.testing.assert_array_equal(va, vb)
                assert va.dtype.kind == vb.dtype.kind or key in ("ids", "raw_text"), key
        assert sorted(sa.extra_labels) == sorted(sb.extra_labels)
        for k in sa.extra_labels:
            np.testing.assert_array_equal(sa.extra_labels[k], sb.extra_labels[k])


def test_convert_round_trip_mmsa(tmp_path):
    raw = mmsa_dict(label_scale=1.0, feats=True)
    for d in raw.values():
        d["regression_labels_T"] = np.zeros(len(d["regression_labels"]), dtype=np.float32)
    data = load_dataset(write(tmp_path, raw), dataset="sims")
    out = save_converted(data, tmp_path / "conv")
    assert sorted(p.name for p in out.iterdir()) == ["data.npz", "meta.json"]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format_version"] == 1 and meta["dataset"] == "sims" and meta["splits"]["valid"] == 3
    back = load_dataset(out)
    _assert_same(data, back)
    assert back.splits["train"].ids.dtype.kind == "U"
    with np.load(out / "data.npz", allow_pickle=False) as npz:
        assert "train/audio" in npz.files and "test/extra/regression_labels_T" in npz.files


def test_convert_round_trip_classification_into_empty_dir(tmp_path):
    data = validate(_classification([0, 5, 19]))
    data.label_names = [f"c{i}" for i in range(20)]
    (tmp_path / "conv").mkdir()
    out = save_converted(data, tmp_path / "conv")
    _assert_same(data, load_dataset(out))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv"]


def test_converted_bad_meta(tmp_path):
    data = make_synthetic(n_train=4, n_valid=3, n_test=3, text_len=4, audio_len=4, vision_len=4)
    out = save_converted(data, tmp_path / "conv")
    meta = json.loads((out / "meta.json").read_text())
    meta["format_version"] = 99
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(DataError, match="format_version") as err:
        load_dataset(out)
    assert "meta.json" in str(err.value)
    (out / "meta.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        load_dataset(out)


def test_converted_missing_npz_and_missing_key(tmp_path):
    data = make_synthetic(n_train=4, n_valid=3, n_test=3, text_len=4, audio_len=4, vision_len=4)
    out = save_converted(data, tmp_path / "conv")
    with np.load(out / "data.npz") as npz:
        arrays = {k: npz[k] for k in npz.files if k != "valid/labels"}
    (out / "data.npz").unlink()
    with pytest.raises(DataError, match="data.npz: file not found"):
        load_converted(out)
    np.savez(out / "data.npz", **arrays)
    with pytest.raises(DataError, match=r"split 'valid' is missing the required key 'labels'"):
        load_converted(out)


# ---------------------------------------------------------------------------------------------------------
# hypothesis: arbitrary shapes and lengths survive pickle -> load -> convert -> load

try:
    import hypothesis as hyp
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a test extra
    hyp = None


def _layouts():
    return st.fixed_dictionaries(
        dict(
            n=st.tuples(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5)),
            L=st.integers(2, 6),
            Ta=st.integers(1, 6),
            Da=st.integers(1, 4),
            Tv=st.integers(1, 6),
            Dv=st.integers(1, 4),
            bert=st.booleans(),
            seed=st.integers(0, 2**16),
        )
    )


def _property_test(fn):
    if hyp is None:
        return pytest.mark.skip(reason="hypothesis is not installed")(fn)
    return hyp.settings(max_examples=30, deadline=None, suppress_health_check=list(hyp.HealthCheck))(
        hyp.given(_layouts())(fn)
    )


@_property_test
def test_property_loader_round_trip(layout):
    layout = dict(layout)
    bert = layout.pop("bert")
    raw = mmsa_dict(**layout, bert=bert, feats=not bert)
    with tempfile.TemporaryDirectory() as td:
        path = write(Path(td), raw)
        data = load_dataset(path, dataset="mosi")
        assert data.seq_lengths == {"text": layout["L"], "audio": layout["Ta"], "vision": layout["Tv"]}
        for name, n in zip(SPLITS, layout["n"], strict=True):
            s = data.splits[name]
            assert len(s) == n
            assert s.audio.shape == (n, layout["Ta"], layout["Da"]) and s.vision.shape == (
                n,
                layout["Tv"],
                layout["Dv"],
            )
            np.testing.assert_array_equal(s.audio_lengths, raw[name]["audio_lengths"])
            np.testing.assert_array_equal(s.vision_lengths, raw[name]["vision_lengths"])
            assert ((0 <= s.text_lengths) & (s.text_lengths <= layout["L"])).all()
        back = load_dataset(save_converted(data, Path(td) / "conv"))
        _assert_same(data, back)
        test = back.splits["test"]
        batch = SplitDataset(test).__getitems__(np.random.default_rng(1).permutation(len(test))[:3])
        assert batch.inputs["audio"].shape[1:] == (layout["Ta"], layout["Da"])
        assert batch.inputs["text"].dtype == (torch.long if bert else torch.float32)


# ---------------------------------------------------------------------------------------------------------
# batching


@pytest.fixture(scope="module")
def synth():
    return validate(
        make_synthetic(
            n_train=50,
            n_valid=20,
            n_test=20,
            text_len=6,
            audio_len=7,
            vision_len=8,
            text_dim=5,
            audio_dim=3,
            vision_dim=4,
            seed=3,
        )
    )


def test_getitems_shapes_dtypes_and_index(synth):
    split = synth.splits["train"]
    b = SplitDataset(split).__getitems__(range(16, 32))
    assert isinstance(b, Batch) and len(b) == 16
    assert b.inputs["text"].shape == (16, 6, 5) and b.inputs["text"].dtype == torch.float32
    assert b.inputs["audio"].shape == (16, 7, 3) and b.inputs["vision"].shape == (16, 8, 4)
    assert all(v.dtype == torch.long and v.shape == (16,) for v in b.lengths.values())
    assert b.labels.dtype == torch.float32 and b.index.dtype == torch.long
    assert b.index.tolist() == list(range(16, 32))
    np.testing.assert_array_equal(b.inputs["audio"].numpy(), split.audio[16:32])
    np.testing.assert_array_equal(b.lengths["vision"].numpy(), split.vision_lengths[16:32])
    assert split.ids[b.index.numpy()].tolist() == split.ids[16:32].tolist()
    with pytest.raises(IndexError, match="out of range"):
        SplitDataset(split).__getitems__([0, len(split)])


def test_items_match_batched_fetch(synth):
    split = synth.splits["valid"]
    ds = SplitDataset(split)
    idx = [3, 0, 7, 19]
    items = [ds[i] for i in idx]
    many = ds.__getitems__(idx)
    for m in many.inputs:
        np.testing.assert_array_equal(np.stack([it["inputs"][m] for it in items]), many.inputs[m].numpy())
        np.testing.assert_array_equal([it["lengths"][m] for it in items], many.lengths[m].numpy())
    np.testing.assert_array_equal([it["label"] for it in items], many.labels.numpy())
    assert many.index.tolist() == [it["index"] for it in items] == idx
    moved = many.to("cpu")
    assert torch.equal(moved.inputs["audio"], many.inputs["audio"])


def test_dataset_items_are_views(synth):
    split = synth.splits["train"]
    ds = SplitDataset(split)
    item = ds[4]
    for m in ("text", "audio", "vision"):
        assert np.shares_memory(item["inputs"][m], getattr(split, m))
    assert ds.split is split
    with pytest.raises(IndexError):
        ds[len(split)]


def test_batch_bert_and_classification_dtypes(tmp_path):
    data = validate(_classification([0, 5, 19]))
    b = SplitDataset(data.splits["train"]).__getitems__(range(3))
    assert b.inputs["text"].dtype == torch.long and b.inputs["text"].shape == (3, 3, 4)
    assert b.labels.dtype == torch.long and b.labels.tolist() == [0, 5, 19]


def test_extra_labels_reach_the_batch(tmp_path):
    raw = mmsa_dict(label_scale=1.0)
    for d in raw.values():
        d["regression_labels_V"] = np.linspace(-1, 1, len(d["regression_labels"])).astype(np.float32)
    data = load_dataset(write(tmp_path, raw), dataset="sims")
    b = SplitDataset(data.splits["train"]).__getitems__(range(5))
    assert torch.allclose(b.extra_labels["regression_labels_V"], torch.linspace(-1, 1, 5))


# ---------------------------------------------------------------------------------------------------------
# MIntRec and MOSI CSV readers with a tiny local tokenizer (no network, no shared data)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory) -> Path:
    transformers = pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("tok")
    words = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words += ["hello", "world", "the", "manager", "we", "are", "good", "bad", "movie", ".", ",", "!", "'"]
    vocab = d / "vocab.txt"
    vocab.write_text("\n".join(words) + "\n")
    import inspect

    cls = transformers.BertTokenizerFast
    arg = (
        "vocab_file" if "vocab_file" in inspect.signature(cls.__init__).parameters else "vocab"
    )  # 4.x vs 5.x
    tok = cls(**{arg: str(vocab)}, do_lower_case=True)
    assert tok("hello")["input_ids"] == [101, 104, 102]
    tok.save_pretrained(str(d))
    return d


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


def test_read_only_arrays_in_protocol_5_pickle(tmp_path):
    raw = mmsa_dict()
    for d in raw.values():
        d["audio"][:, 0, 0] = -np.inf
        d["audio"].flags.writeable = False
    path = tmp_path / "p5.pkl"
    path.write_bytes(pickle.dumps(raw, protocol=5))
    data = load_dataset(path)
    assert (data.splits["train"].audio[:, 0, 0] == 0).all()
