"""``save_pretrained`` / ``from_pretrained`` for every gsit model, offline (the Hugging Face folder layout).

A saved model is a folder with two files:

* ``config.json``: ``{"architecture": "GsiT", "gsit_version": ..., "config": {...the model's dataclass...},
  "text_encoder": null | {"transformers_config": {...}}}``.  Tuple fields of the dataclass are written as
  JSON lists and restored as tuples, so the loaded config compares equal to the saved one.
* ``model.safetensors``: every weight (the fine-tuned BERT-family text encoder's too, when there is one).

Loading never runs code from the folder (JSON + safetensors, no pickle) and downloads nothing: a text encoder
is rebuilt from its saved ``transformers`` config, then every weight is loaded from ``model.safetensors``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from gsit.errors import ConfigError, DataError

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def config_to_json(config) -> dict[str, Any]:
    """A model dataclass as JSON-safe values (tuples become lists; :func:`config_from_json` undoes it)."""
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_json(cls, values: dict[str, Any]):
    """The dataclass ``cls`` from :func:`config_to_json`'s output; unknown keys are errors, lists become
    tuples where the field's default is a tuple."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; known keys: {sorted(fields)}")
    defaults = cls()
    kwargs = {}
    for k, v in values.items():
        default = getattr(defaults, k)
        if isinstance(default, tuple) and isinstance(v, list):
            v = tuple(v)
        elif isinstance(default, dict) and isinstance(v, dict):
            v = dict(v)
        kwargs[k] = v
    return cls(**kwargs)


class PretrainedMixin:
    """Adds ``save_pretrained(dir)`` and ``cls.from_pretrained(dir)`` to a model whose ``__init__`` takes
    ``(config, text_encoder=None)`` and keeps the dataclass as ``self.config``.  Subclasses set
    ``config_class``."""

    config_class: type

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created; an existing non-empty
        directory is refused: nothing is overwritten).  Returns the directory."""
        import torch

        from gsit import __version__
        from gsit.checkpoint import atomic_save_tensors, atomic_write_json

        out = Path(directory)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ConfigError(
                f"{str(out)!r} already exists and is not an empty directory; save_pretrained never overwrites"
            )
        out.mkdir(parents=True, exist_ok=True)
        encoder = getattr(self, "text_encoder", None)
        meta = {
            "architecture": type(self).__name__,
            "gsit_version": __version__,
            "config": config_to_json(self.config),
            "text_encoder": None
            if encoder is None
            else {"transformers_config": encoder.bert.config.to_dict()},
        }
        state = {k: v for k, v in self.state_dict().items() if isinstance(v, torch.Tensor)}
        atomic_save_tensors(out / WEIGHTS_NAME, state, metadata={"format": "pt", "gsit_version": __version__})
        atomic_write_json(out / CONFIG_NAME, meta)
        return out

    @classmethod
    def from_pretrained(cls, directory: str | Path, *, device: str = "cpu"):
        """The model saved in ``directory`` by :meth:`save_pretrained`, in eval mode on ``device``."""
        meta = read_pretrained_config(directory)
        if meta["architecture"] != cls.__name__:
            raise ConfigError(
                f"{str(directory)!r} holds a {meta['architecture']} model, not a "
                f"{cls.__name__}; use gsit.{meta['architecture']}.from_pretrained or "
                f"gsit.from_pretrained"
            )
        return _build_and_load(cls, meta, Path(directory), device)


def read_pretrained_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise DataError(f"{str(directory)!r} is not a saved gsit model (no {CONFIG_NAME})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(f"{str(path)!r} is not valid JSON: {e}") from e
    missing = [k for k in ("architecture", "config") if k not in meta]
    if missing:
        raise DataError(f"{str(path)!r} lacks the keys {missing} (not written by save_pretrained)")
    return meta


def _build_and_load(cls, meta: dict[str, Any], directory: Path, device: str):
    from gsit.checkpoint import load_model_weights

    config = config_from_json(cls.config_class, meta["config"])
    encoder = None
    if meta.get("text_encoder"):
        try:
            from transformers import AutoConfig
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ConfigError(
                f"{str(directory)!r} holds a BERT-family text encoder, which needs the "
                f"'transformers' package: pip install 'gsit[text]'"
            ) from e
        from gsit.models.text import BertTextEncoder

        tcfg = dict(meta["text_encoder"]["transformers_config"])
        encoder = BertTextEncoder.from_config(AutoConfig.for_model(tcfg.pop("model_type"), **tcfg))
    model = cls(config, text_encoder=encoder)
    load_model_weights(directory / WEIGHTS_NAME, model)
    return model.to(device).eval()


def from_pretrained(directory: str | Path, *, device: str = "cpu"):
    """Any gsit model saved by ``save_pretrained`` (the class is read from its ``config.json``)."""
    meta = read_pretrained_config(directory)
    arch = meta["architecture"]
    import importlib

    from gsit.models.registry import MODELS

    modules = {model_cls: module for module, _, model_cls in MODELS.values()}
    if arch not in modules:
        raise ConfigError(f"{str(directory)!r}: unknown architecture {arch!r}; known: {sorted(modules)}")
    cls = getattr(importlib.import_module(modules[arch]), arch)
    return _build_and_load(cls, meta, Path(directory), device)
