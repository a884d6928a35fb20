"""gsit: GsiT (ACL 2025) -- hierarchical modal-wise heterogeneous graph transformers for multimodal
sentiment and intent analysis, with MulT and Vanilla baselines, MMSA-exact metrics and fast graph attention.

Python API (see the README's "Python API" section)::

    import gsit
    results = gsit.run(model="gsit", dataset="mosi", data="MOSI/Processed/unaligned_50.pkl",
                         seeds=[1111, 1112], overrides={"train.max_epochs": 5}, out="runs")
    model, config = gsit.load_run(results["run_dir"])
    preds = gsit.predict(results["run_dir"], data="MOSI/Processed/unaligned_50.pkl")   # (N, 1)
    model.save_pretrained("gsit-mosi");  model = gsit.GsiT.from_pretrained("gsit-mosi")

``import gsit`` is light: the names below are imported on first use (torch is loaded only then), so
``gsit --help`` starts fast.  Nothing here needs CUDA, Triton or transformers.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it (imported on first attribute access)
_LAZY = {
    "GsiT": "gsit.models.gsit",
    "GsiTConfig": "gsit.models.gsit",
    "MulT": "gsit.models.mult",
    "MulTConfig": "gsit.models.mult",
    "Vanilla": "gsit.models.vanilla",
    "GraphMask": "gsit.graph",
    "ModalGraph": "gsit.graph",
    "SequenceLayout": "gsit.graph",
    "run": "gsit.api",
    "load_run": "gsit.api",
    "predict": "gsit.api",
    "export": "gsit.api",
    "from_pretrained": "gsit.api",
    "load_config": "gsit.config",
    "compute_metrics": "gsit.metrics",
    "GsitError": "gsit.errors",
    "ConfigError": "gsit.errors",
    "DataError": "gsit.errors",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gsit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
