"""The converted format (gsit.data.convert): round trips, bad meta.json, missing members, and a property test:
arbitrary shapes and lengths survive pickle -> load -> convert -> load."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gsit.data import (
    MultimodalData,
    SplitDataset,
    load_converted,
    load_dataset,
    make_synthetic,
    save_converted,
    validate,
)
from gsit.errors import DataError
from tests.data.helpers import SPLITS, classification_data, mmsa_dict, write

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
    data = validate(classification_data([0, 5, 19]))
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
