"""The one name -> model table.  Config validation, model building, profiling and benchmarks all look models
up here (as Hugging Face looks attention functions up in one registry).  Classes are imported on first use, so
reading a config does not import torch."""

from __future__ import annotations

import importlib

from gsit.errors import ConfigError

# name: (module, config class, model class)
MODELS: dict[str, tuple[str, str, str]] = {
    "gsit": ("gsit.models.gsit", "GsiTConfig", "GsiT"),
    "vanilla": ("gsit.models.vanilla", "GsiTConfig", "Vanilla"),
    "mult": ("gsit.models.mult", "MulTConfig", "MulT"),
    # MulT as the GsiT repository configures it (MulT-dagger, SPEC §13): the same class, its own presets
    # (configs/mult_dagger_<dataset>.toml: depth-shared layers, d=128 and 4 heads on MOSI/MOSEI)
    "mult_dagger": ("gsit.models.mult", "MulTConfig", "MulT"),
}


def _entry(name: str) -> tuple[str, str, str]:
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {list(MODELS)}")
    return MODELS[name]


def model_config_class(name: str) -> type:
    """The frozen config dataclass of model ``name``."""
    module, config_cls, _ = _entry(name)
    return getattr(importlib.import_module(module), config_cls)


def model_class(name: str) -> type:
    """The ``nn.Module`` class of model ``name`` (constructor: ``(config, *, text_encoder=None)``)."""
    module, _, model_cls = _entry(name)
    return getattr(importlib.import_module(module), model_cls)
