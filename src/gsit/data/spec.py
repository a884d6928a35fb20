"""Facts about the datasets gsit knows, in one table: task, classes, label range, MMSA feature shapes, split
sizes, metric family and name aliases.

These are facts, not choices: nothing here is configured.  Training never takes shapes from here (it reads
them from the data files); ``gsit profile``, ``gsit efficiency``, the synthetic generator's presets
(``data.synthetic_size = "mosi"``) and the benchmarks do.  A leaf module: it imports nothing from gsit and
no torch, so config validation and the metrics can read it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DatasetSpec", "DATASETS", "MODALITIES", "dataset_spec", "canonical_name"]

MODALITIES = ("text", "audio", "vision")


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset's facts.  ``shapes[m] = (padded length, feature width)`` of MMSA's released features."""

    name: str
    task: str  # regression | classification
    metric_family: str  # mosi | sims | mintrec: which metrics.py scorer and columns
    label_range: tuple[float, float] | None  # regression labels; None for classification
    num_classes: int | None = None  # classification only
    shapes: dict[str, tuple[int, int]] | None = None  # None: no fixed shapes (synthetic)
    split_sizes: tuple[int, int, int] | None = None  # (train, valid, test) samples
    aliases: tuple[str, ...] = ()  # other spellings accepted by the data loaders
    synthetic_preset: bool = False  # make_synthetic(preset=name) mimics its shapes and sizes
    generated: bool = False  # the planted-signal synthetic task, not a real dataset

    @property
    def output_dim(self) -> int:
        """The model's output width: one regression value, or one logit per class."""
        return int(self.num_classes) if self.task == "classification" else 1


_SPECS = (
    DatasetSpec(
        "mosi",
        "regression",
        "mosi",
        (-3.0, 3.0),
        shapes={"text": (50, 768), "audio": (375, 5), "vision": (500, 20)},
        split_sizes=(1284, 229, 686),
        aliases=("cmu-mosi",),
        synthetic_preset=True,
    ),
    DatasetSpec(
        "mosei",
        "regression",
        "mosi",
        (-3.0, 3.0),
        shapes={"text": (50, 768), "audio": (500, 74), "vision": (500, 35)},
        split_sizes=(16326, 1871, 4659),
        aliases=("cmu-mosei",),
        synthetic_preset=True,
    ),
    DatasetSpec(
        "sims",
        "regression",
        "sims",
        (-1.0, 1.0),
        shapes={"text": (39, 768), "audio": (400, 33), "vision": (55, 709)},
        split_sizes=(1368, 456, 457),
        aliases=("ch-sims",),
        synthetic_preset=True,
    ),
    # MMSA config_regression.json simsv2 entry (feature dims 768/25/177, seq lens 50/925/232)
    DatasetSpec(
        "simsv2",
        "regression",
        "sims",
        (-1.0, 1.0),
        shapes={"text": (50, 768), "audio": (925, 25), "vision": (232, 177)},
        split_sizes=(2722, 647, 1034),
        aliases=("ch-simsv2", "sims2"),
    ),
    # MIntRec: bert-base text (max 30), wav2vec2 audio 480x768, ROI video 230x256; 20 intents
    DatasetSpec(
        "mintrec",
        "classification",
        "mintrec",
        None,
        num_classes=20,
        shapes={"text": (30, 768), "audio": (480, 768), "vision": (230, 256)},
        split_sizes=(1334, 445, 445),
    ),
    # the planted cross-modal task of gsit.data.synthetic: MOSI-like labels in [-3, 3], scored like MOSI
    DatasetSpec("synthetic", "regression", "mosi", (-3.0, 3.0), generated=True),
)

DATASETS: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
_ALIASES: dict[str, str] = {a: s.name for s in _SPECS for a in s.aliases}


def canonical_name(name: str) -> str | None:
    """Lower-cased ``name`` with aliases mapped (``"CMU-MOSI"`` -> ``"mosi"``); None when unknown."""
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    return key if key in DATASETS else None


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a dataset by its canonical name; ``KeyError`` naming the known datasets otherwise."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known datasets: {list(DATASETS)}")
    return DATASETS[name]
