"""Facts about the standard datasets (feature widths, padded lengths, split sizes) used by ``gsit profile``,
``gsit synth`` and benchmarks.  Training never takes these from here: it reads them from the data files."""

from __future__ import annotations

# name: (text L, text dim, audio T, audio dim, vision T, vision dim, (train, valid, test))
DATASET_SHAPES: dict[str, dict] = {
    "mosi": {"text": (50, 768), "audio": (375, 5), "vision": (500, 20), "splits": (1284, 229, 686)},
    "mosei": {"text": (50, 768), "audio": (500, 74), "vision": (500, 35), "splits": (16326, 1871, 4659)},
    "sims": {"text": (39, 768), "audio": (400, 33), "vision": (55, 709), "splits": (1368, 456, 457)},
    # MMSA config_regression.json simsv2 entry (feature dims 768/25/177, seq lens 50/925/232)
    "simsv2": {"text": (50, 768), "audio": (925, 25), "vision": (232, 177), "splits": (2722, 647, 1034)},
    # MIntRec: bert-base text (max 30), wav2vec2 audio 480x768, ROI video 230x256
    "mintrec": {"text": (30, 768), "audio": (480, 768), "vision": (230, 256), "splits": (1334, 445, 445)},
}
