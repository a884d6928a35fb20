"""Batching (gsit.data.dataset, gsit.data.batch): shapes, dtypes, views, extra labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gsit.data import (
    Batch,
    SplitDataset,
    load_dataset,
    make_synthetic,
    validate,
)
from tests.data.helpers import classification_data, mmsa_dict, write

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
    data = validate(classification_data([0, 5, 19]))
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
