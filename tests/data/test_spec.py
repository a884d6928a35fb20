"""The one table of dataset facts (gsit.data.spec) holds exactly the values the eight tables it replaced held,
and every view derived from it (config, loaders, synthetic presets, metrics, profile, benchmark) agrees."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from gsit import config, metrics
from gsit.data import dataset, synthetic
from gsit.data.spec import DATASETS, canonical_name, dataset_spec
from gsit.errors import DataError

# the values of the former gsit/presets.py DATASET_SHAPES, copied here as the regression oracle
OLD_SHAPES = {
    "mosi": {"text": (50, 768), "audio": (375, 5), "vision": (500, 20), "splits": (1284, 229, 686)},
    "mosei": {"text": (50, 768), "audio": (500, 74), "vision": (500, 35), "splits": (16326, 1871, 4659)},
    "sims": {"text": (39, 768), "audio": (400, 33), "vision": (55, 709), "splits": (1368, 456, 457)},
    "simsv2": {"text": (50, 768), "audio": (925, 25), "vision": (232, 177), "splits": (2722, 647, 1034)},
    "mintrec": {"text": (30, 768), "audio": (480, 768), "vision": (230, 256), "splits": (1334, 445, 445)},
}


def test_spec_shapes_and_split_sizes_equal_the_former_table():
    got = {n: {**s.shapes, "splits": s.split_sizes} for n, s in DATASETS.items() if s.shapes is not None}
    assert got == OLD_SHAPES


def test_spec_views_keep_their_former_values():
    assert config.DATASETS == ("mosi", "mosei", "sims", "simsv2", "mintrec", "synthetic")
    assert dataset.DATASET_LABEL_RANGES == {
        "mosi": (-3.0, 3.0),
        "mosei": (-3.0, 3.0),
        "sims": (-1.0, 1.0),
        "simsv2": (-1.0, 1.0),
        "synthetic": (-3.0, 3.0),
    }
    assert dataset.CLASSIFICATION_DATASETS == {"mintrec": 20}
    assert sorted(synthetic.PRESET_SHAPES) == ["mosei", "mosi", "sims"]
    assert synthetic.PRESET_SHAPES["sims"] == dict(
        text_len=39,
        text_dim=768,
        audio_len=400,
        audio_dim=33,
        vision_len=55,
        vision_dim=709,
        n_train=1368,
        n_valid=456,
        n_test=457,
    )
    assert metrics.DATASET_TASK == {
        "mosi": "regression",
        "mosei": "regression",
        "sims": "regression",
        "simsv2": "regression",
        "mintrec": "classification",
    }
    assert {n: s.metric_family for n, s in DATASETS.items()} == {
        "mosi": "mosi",
        "mosei": "mosi",
        "sims": "sims",
        "simsv2": "sims",
        "mintrec": "mintrec",
        "synthetic": "mosi",
    }
    assert {n: s.output_dim for n, s in DATASETS.items()}["mintrec"] == 20


@pytest.mark.parametrize(
    "alias,name",
    [
        ("CMU-MOSI", "mosi"),
        ("cmu-mosei", "mosei"),
        ("ch-sims", "sims"),
        ("CH-SIMSv2", "simsv2"),
        ("sims2", "simsv2"),
        ("MIntRec", "mintrec"),
    ],
)
def test_spec_aliases_map_to_canonical_names(alias, name):
    assert canonical_name(alias) == name
    assert dataset.normalize_dataset_name(alias) == name


def test_spec_unknown_names_fail_clearly():
    assert canonical_name("iemocap") is None
    with pytest.raises(DataError, match="iemocap.*mosi, mosei, sims, simsv2, mintrec, synthetic"):
        dataset.normalize_dataset_name("iemocap")
    with pytest.raises(KeyError, match="known datasets"):
        dataset_spec("iemocap")


def test_spec_module_is_a_leaf():
    """data/spec.py imports nothing from gsit and no torch/numpy: config and metrics read it cheaply."""
    src = Path(dataset.__file__).with_name("spec.py").read_text()
    names = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    assert names <= {"__future__", "dataclasses"}, names
