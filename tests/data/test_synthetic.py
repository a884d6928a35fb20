"""Synthetic data: shapes, determinism, padding, and a label that needs cross-modal interaction."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from gsit.data import PRESET_SHAPES, load_dataset, make_synthetic, validate, write_mmsa_pickle
from gsit.data.safe_pickle import load_pickle
from gsit.data.synthetic import CUE_TOKEN_NEG, CUE_TOKEN_POS, SYNTHETIC_VOCAB_SIZE

SPLITS = ("train", "valid", "test")


def test_small_default_shapes_and_speed():
    t0 = time.perf_counter()
    data = make_synthetic()
    elapsed = time.perf_counter() - t0
    assert elapsed < 1.0, elapsed
    validate(data)
    assert [len(data.splits[k]) for k in SPLITS] == [600, 150, 150]
    assert data.seq_lengths == {"text": 20, "audio": 40, "vision": 40}
    assert (data.text_dim, data.audio_dim, data.vision_dim) == (32, 5, 20)
    assert data.task == "regression" and data.text_kind == "features"
    s = data.splits["train"]
    assert s.text.dtype == s.audio.dtype == s.vision.dtype == s.labels.dtype == np.float32
    assert s.labels.min() >= -3 and s.labels.max() <= 3
    assert len(set(s.ids.tolist())) == len(s)


def test_deterministic_per_seed():
    a, b, c = make_synthetic(seed=4), make_synthetic(seed=4), make_synthetic(seed=5)
    for name in SPLITS:
        np.testing.assert_array_equal(a.splits[name].audio, b.splits[name].audio)
        np.testing.assert_array_equal(a.splits[name].labels, b.splits[name].labels)
    assert not np.array_equal(a.splits["train"].labels, c.splits["train"].labels)


@pytest.mark.parametrize("kind", ["features", "bert"])
def test_lengths_vary_and_padding_is_zero_at_the_end(kind):
    data = make_synthetic(text_kind=kind, seed=1)
    for s in data.splits.values():
        for mod, lengths in (("audio", s.audio_lengths), ("vision", s.vision_lengths)):
            x = getattr(s, mod)
            assert len(np.unique(lengths)) > 5 and lengths.min() >= 1 and lengths.max() <= x.shape[1]
            pad = np.arange(x.shape[1])[None, :] >= lengths[:, None]
            assert (x[pad] == 0).all()
            assert (np.abs(x[~pad]).sum(-1) > 0).all()
        tl = s.text_lengths
        assert len(np.unique(tl)) > 5
        if kind == "features":
            pad = np.arange(s.text.shape[1])[None, :] >= tl[:, None]
            assert (s.text[pad] == 0).all()
        else:
            pad = np.arange(s.text_bert.shape[2])[None, :] >= tl[:, None]
            assert (s.text_bert[:, 0][pad] == 0).all() and (s.text_bert[:, 1].sum(1) == tl).all()


def test_bert_rows_have_cls_sep_and_one_cue_token():
    data, cues = make_synthetic(text_kind="bert", seed=2, return_cues=True)
    validate(data, vocab_size=SYNTHETIC_VOCAB_SIZE)
    assert data.text_kind == "bert" and data.text_dim is None
    for name, s in data.splits.items():
        ids, n = s.text_bert[:, 0], len(s)
        assert (ids[:, 0] == 101).all() and (ids[np.arange(n), s.text_lengths - 1] == 102).all()
        assert (s.text_bert[:, 2] == 0).all()
        pos = (ids == CUE_TOKEN_POS).sum(1)
        neg = (ids == CUE_TOKEN_NEG).sum(1)
        assert ((pos + neg) == 1).all()
        np.testing.assert_array_equal(np.where(pos == 1, 1.0, -1.0), cues[name]["text"])
        filler = ids[
            (ids != 0) & (ids != 101) & (ids != 102) & (ids != CUE_TOKEN_POS) & (ids != CUE_TOKEN_NEG)
        ]
        assert filler.min() >= 1000 and filler.max() < 2000


def test_cues_window_covers_fraction_of_valid_steps():
    """Noise off: the cue fills ceil(fraction * length) consecutive valid steps, inside the valid part."""
    data = make_synthetic(seed=4, feature_noise=0.0, cue_fraction=0.5)
    for s in data.splits.values():
        nonzero = np.abs(s.audio).sum(-1) > 0  # (N, T)
        np.testing.assert_array_equal(nonzero.sum(1), np.maximum(1, np.ceil(0.5 * s.audio_lengths)))
        first = nonzero.argmax(1)
        last = s.audio.shape[1] - 1 - nonzero[:, ::-1].argmax(1)
        assert (last - first + 1 == nonzero.sum(1)).all()  # one contiguous window
        assert (last < s.audio_lengths).all()


def test_cues_are_planted_exactly_once():
    """With the feature noise off and cue_fraction=0, each modality holds exactly one planted step."""
    data, cues = make_synthetic(seed=3, feature_noise=0.0, cue_fraction=0.0, return_cues=True)
    for name, s in data.splits.items():
        c = cues[name]
        for mod, sign in (("text", c["text"]), ("audio", c["audio"])):
            x = getattr(s, mod)
            nonzero = np.abs(x).sum(-1) > 0
            assert (nonzero.sum(1) == 1).all()
            rows = x[nonzero]  # (N, D): ±cue_strength * u
            direction = rows[0] * sign[0]
            np.testing.assert_allclose(rows, sign[:, None] * direction[None, :], rtol=1e-5, atol=1e-6)
        v = s.vision[np.abs(s.vision).sum(-1) > 0]
        np.testing.assert_allclose(np.linalg.norm(v, axis=1), 2.0 * c["magnitude"], rtol=1e-5)


def _corr(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_label_needs_cross_modal_interaction():
    data, cues = make_synthetic(n_train=4000, n_valid=10, n_test=2000, seed=0, return_cues=True)
    for name in ("train", "test"):
        y, c = data.splits[name].labels, cues[name]
        # each single modality's cue is uncorrelated with the label ...
        assert abs(_corr(y, c["text"])) < 0.06
        assert abs(_corr(y, c["audio"])) < 0.06
        assert abs(_corr(y, c["magnitude"])) < 0.06
        # ... and so is the product of any two cues that leaves out text or audio
        assert abs(_corr(y, c["text"] * c["magnitude"])) < 0.06
        # while the cross-modal product explains nearly all variance
        prod = c["text"] * c["audio"] * c["magnitude"]
        assert _corr(y, prod) ** 2 > 0.95
        assert _corr(y, c["text"] * c["audio"]) ** 2 > 0.8


def test_single_modality_linear_probe_fails():
    """A ridge probe on pooled text (or audio) features cannot predict the label; an oracle product can."""
    data, cues = make_synthetic(n_train=3000, n_valid=10, n_test=1000, seed=1, return_cues=True)

    def pooled(split, mod):
        s = data.splits[split]
        x = getattr(s, mod)
        return np.concatenate([x.sum(1), np.abs(x).max(1)], axis=1)

    for mod in ("text", "audio", "vision"):
        xtr, xte = pooled("train", mod), pooled("test", mod)
        xtr = np.c_[xtr, np.ones(len(xtr))]
        xte = np.c_[xte, np.ones(len(xte))]
        w = np.linalg.solve(xtr.T @ xtr + 1e-2 * np.eye(xtr.shape[1]), xtr.T @ data.splits["train"].labels)
        assert abs(_corr(xte @ w, data.splits["test"].labels)) < 0.15, mod


@pytest.mark.parametrize("preset", sorted(PRESET_SHAPES))
def test_presets(preset):
    shapes = PRESET_SHAPES[preset]
    data = validate(make_synthetic(preset=preset, scale=0.01, text_kind="bert"), vocab_size=30522)
    assert data.dataset == preset
    assert data.seq_lengths == {
        "text": shapes["text_len"],
        "audio": shapes["audio_len"],
        "vision": shapes["vision_len"],
    }
    assert (data.audio_dim, data.vision_dim) == (shapes["audio_dim"], shapes["vision_dim"])
    for name in SPLITS:
        assert len(data.splits[name]) == max(2, round(shapes[f"n_{name}"] * 0.01))
    lo, hi = (-1, 1) if preset == "sims" else (-3, 3)
    labels = np.concatenate([s.labels for s in data.splits.values()])
    assert labels.min() >= lo and labels.max() <= hi


def test_preset_overrides_and_feature_text():
    data = make_synthetic(preset="mosi", n_train=7, n_valid=3, n_test=3, audio_len=11)
    assert [len(data.splits[k]) for k in SPLITS] == [7, 3, 3]
    assert data.seq_lengths == {"text": 50, "audio": 11, "vision": 500} and data.text_dim == 768


def test_bad_arguments():
    with pytest.raises(ValueError, match="preset"):
        make_synthetic(preset="iemocap")
    with pytest.raises(ValueError, match="text_kind"):
        make_synthetic(text_kind="glove")
    with pytest.raises(ValueError, match="text_len"):
        make_synthetic(text_kind="bert", text_len=2)


@pytest.mark.parametrize("kind", ["features", "bert"])
def test_write_mmsa_pickle_layout_and_round_trip(tmp_path, kind):
    data = make_synthetic(n_train=20, n_valid=8, n_test=8, text_kind=kind, seed=6)
    path = write_mmsa_pickle(data, tmp_path / "unaligned.pkl")
    raw = load_pickle(path)
    assert sorted(raw) == ["test", "train", "valid"]
    keys = set(raw["train"])
    assert {
        "raw_text",
        "id",
        "audio",
        "vision",
        "audio_lengths",
        "vision_lengths",
        "regression_labels",
        "classification_labels",
        "annotations",
    } <= keys
    assert ("text_bert" in keys) == (kind == "bert") and ("text" in keys) == (kind == "features")
    if kind == "bert":
        assert raw["train"]["text_bert"].dtype == np.float32  # as MMSA stores it
    with open(path, "rb") as fh:  # it is an ordinary pickle too (written by us, read back as bytes only)
        assert fh.read(2) == pickle.dumps(None, protocol=4)[:2]
    back = load_dataset(path, dataset="mosi")
    for name in SPLITS:
        a, b = data.splits[name], back.splits[name]
        for key in ("audio", "vision", "labels", "audio_lengths", "vision_lengths"):
            np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        assert a.ids.tolist() == b.ids.tolist()
        if kind == "bert":
            np.testing.assert_array_equal(a.text_bert, b.text_bert)
            np.testing.assert_array_equal(a.text_lengths, b.text_lengths)
        else:
            np.testing.assert_array_equal(a.text, b.text)


# ----------------------------------------------------------------------------- the associative-recall task


def test_recall_shapes_range_and_determinism():
    data = make_synthetic(task="recall", seed=3)
    validate(data)
    assert [len(data.splits[k]) for k in SPLITS] == [600, 150, 150]
    assert data.seq_lengths == {"text": 20, "audio": 40, "vision": 40}
    assert (data.text_dim, data.audio_dim, data.vision_dim) == (32, 5, 20)
    assert "task=recall" in data.source
    again, other = make_synthetic(task="recall", seed=3), make_synthetic(task="recall", seed=4)
    for name in SPLITS:
        for key in ("text", "audio", "vision", "labels", "audio_lengths"):
            np.testing.assert_array_equal(getattr(data.splits[name], key), getattr(again.splits[name], key))
    assert not np.array_equal(data.splits["train"].labels, other.splits["train"].labels)
    s = data.splits["train"]
    assert s.labels.min() >= -3 and s.labels.max() <= 3 and s.labels.std() > 1.2  # 3 * U(-1, 1) spreads
    assert s.audio_lengths.min() >= 5 * 4  # every one of the 4 segments spans at least the conv kernel
    # the default task is untouched by the new option
    np.testing.assert_array_equal(
        make_synthetic(seed=3).splits["test"].labels,
        make_synthetic(seed=3, task="sign").splits["test"].labels,
    )


@pytest.mark.parametrize("keys", [4, 6])
def test_recall_label_is_the_value_of_the_audio_segment_the_text_names(keys):
    """Noise off: text holds one query code (the same vector for the same query), audio holds K contiguous
    segments (code_k + value_k * value direction, random order), and y = 3 * value of the queried key."""
    data, cues = make_synthetic(
        task="recall",
        recall_keys=keys,
        seed=5,
        feature_noise=0.0,
        label_noise=0.0,
        audio_len=60,
        audio_dim=keys + 2,
        return_cues=True,
    )
    s, c = data.splits["train"], cues["train"]
    n = len(s)
    q, values, order = c["query"], c["values"], c["order"]
    assert sorted(np.unique(q)) == list(range(keys))
    np.testing.assert_allclose(s.labels, 3.0 * values[np.arange(n), q], rtol=1e-5, atol=1e-6)
    # text: every planted row of sample i equals the code of its query
    planted = np.abs(s.text).sum(-1) > 0
    rows = {k: [] for k in range(keys)}
    for i in range(n):
        r = s.text[i][planted[i]]
        np.testing.assert_allclose(r, np.broadcast_to(r[0], r.shape), atol=1e-6)
        rows[int(q[i])].append(r[0])
    codes = np.stack([np.mean(rows[k], axis=0) for k in range(keys)])
    for k in range(keys):
        np.testing.assert_allclose(
            np.stack(rows[k]), np.broadcast_to(codes[k], (len(rows[k]), codes.shape[1])), atol=1e-5
        )

    # audio: segment j of sample i (from the recorded start and width) is code[order[i, j]] + value * u
    def segment_row(i, j):
        start = c["segment_start"][i] + j * c["segment_width"][i]
        seg = s.audio[i, start : start + c["segment_width"][i]]
        np.testing.assert_allclose(seg, np.broadcast_to(seg[0], seg.shape), atol=1e-6)
        return seg[0]

    assert (c["segment_start"] + keys * c["segment_width"] <= s.audio_lengths).all()
    assert (c["segment_width"] >= 5).all()
    # the value direction is what two segments of the same key differ by
    k0 = [(i, int(np.flatnonzero(order[i] == 0)[0])) for i in range(2)]
    (i0, j0), (i1, j1) = k0
    u = (segment_row(i0, j0) - segment_row(i1, j1)) / (2.0 * (values[i0, 0] - values[i1, 0]))
    u /= np.linalg.norm(u)
    for i in range(0, n, 7):
        js = [int(np.flatnonzero(order[i] == k)[0]) for k in range(keys)]
        seg_rows = np.stack([segment_row(i, j) for j in js])  # (K, D_a), row k = key k's segment
        np.testing.assert_allclose(seg_rows @ u / 2.0, values[i], atol=1e-5)  # cue_strength 2
        # the label is read off the segment of the queried key, found through the value direction
        assert s.labels[i] == pytest.approx(3.0 * float(seg_rows[q[i]] @ u) / 2.0, abs=1e-4)
    # the vision modality carries no signal
    assert (data.splits["train"].vision == 0).all()


def test_recall_single_modalities_do_not_predict_the_label():
    """The queried key alone (text) says nothing about y; the values alone (audio) only through their mean."""
    data, cues = make_synthetic(task="recall", n_train=4000, n_valid=4, n_test=4, seed=0, return_cues=True)
    y, c = data.splits["train"].labels, cues["train"]
    assert abs(_corr(y, c["query"])) < 0.06
    assert _corr(y, c["values"].mean(1)) ** 2 < 0.35  # ~1/K of the variance with K = 4
    assert _corr(y, c["matched"]) ** 2 > 0.99


def test_recall_bert_query_token_and_bad_arguments():
    from gsit.data.synthetic import RECALL_TOKEN_BASE

    data, cues = make_synthetic(task="recall", text_kind="bert", seed=2, return_cues=True)
    validate(data, vocab_size=SYNTHETIC_VOCAB_SIZE)
    ids = data.splits["train"].text_bert[:, 0]
    qtok = (ids >= RECALL_TOKEN_BASE).sum(1)
    assert (qtok == 1).all()
    np.testing.assert_array_equal(ids[ids >= RECALL_TOKEN_BASE] - RECALL_TOKEN_BASE, cues["train"]["query"])
    with pytest.raises(ValueError, match="task"):
        make_synthetic(task="copy")
    with pytest.raises(ValueError, match="recall_keys"):
        make_synthetic(task="recall", recall_keys=1)
    with pytest.raises(ValueError, match="audio_len"):
        make_synthetic(task="recall", recall_keys=8, audio_len=6)
