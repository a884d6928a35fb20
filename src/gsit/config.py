"""Configuration: TOML files -> frozen dataclasses.  Unknown keys and wrong types are errors.

A run is configured by a preset ``configs/<model>_<dataset>.toml`` (shipped in the package), optionally a
user TOML file merged on top, then ``section.key=value`` overrides (values in TOML syntax).  Dataset facts
(feature widths, sequence lengths, label range) are never configured: they are read from the data.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from gsit.errors import ConfigError
from gsit.models.registry import MODELS, model_config_class

TEXT_KINDS = ("auto", "features", "bert")
DATASETS = ("mosi", "mosei", "sims", "simsv2", "mintrec", "synthetic")
PRESET_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class TrainConfig:
    protocol: str = "gsit"             # gsit: Adam, three parameter groups (SPEC §9); mmsa_mult: MMSA's MulT trainer
    batch_size: int = 8
    learning_rate_bert: float = 5e-5
    learning_rate_other: float = 5e-4
    weight_decay_bert: float = 1e-3
    weight_decay_other: float = 1e-3
    learning_rate: float = 2e-3        # mmsa_mult protocol only
    weight_decay: float = 0.0          # mmsa_mult protocol only
    update_epochs: int = 8             # summed-gradient accumulation window; the partial window is dropped
    early_stop: int = 8                # epochs without a 4-decimal validation-loss improvement
    max_epochs: int = 0                # 0 = no cap (the paper); a cap for quick runs
    grad_clip: float = 0.0             # clip_grad_value_; 0 = off (mmsa_mult: 0.6)
    scheduler: str = "none"            # none | plateau (ReduceLROnPlateau on validation loss)
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    seeds: tuple[int, ...] = (1111, 1112, 1113, 1114, 1115)
    amp: str = "none"                  # none | bf16
    deterministic: bool = False        # torch.use_deterministic_algorithms + cuDNN deterministic
    compile: bool = False              # legacy switch: with execution="auto", same as execution="compiled"
    execution: str = "auto"            # auto | eager | compiled | graphed | compiled_graphed (gsit.execution)
    eval_batch_size: int = 0           # 0 = batch_size
    length_bucketing: bool = False     # batches of similar total length (pays with model.padding_aware)
    modality_dropout: float = 0.0      # training-time probability of zeroing each non-text modality per sample


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    path: str = ""                     # "" = generate the synthetic dataset
    text_encoder: str = ""             # local BERT-family directory ("" = precomputed text features)
    # which text input the model reads: "features" = the frozen pre-extracted ``text`` (N, L, D) (MMSA's MulT,
    # use_bert=false); "bert" = ``text_bert`` token ids (N, 3, L) through a fine-tuned text encoder (GsiT);
    # "auto" = token ids when the data has them, else features.  A kind the data lacks is an error.
    text_kind: str = "auto"
    binary: bool = False               # MIntRec binary mode
    synthetic_size: str = "small"      # small | a preset name (mosi, mosei, sims)
    synthetic_task: str = "sign"       # sign: y = text cue x audio cue x vision magnitude | recall: associative recall
    synthetic_recall_keys: int = 4     # recall: number of (code, value) segments in the audio
    zero_modalities: tuple[str, ...] = ()  # replace these modalities' features by zeros (e.g. a text-only control)


@dataclass(frozen=True)
class RunConfig:
    model_name: str
    model: dict[str, Any]
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "model": dict(self.model),
                "train": dataclasses.asdict(self.train), "data": dataclasses.asdict(self.data)}


def _check_type(where: str, key: str, value: Any, expected: Any) -> Any:
    """Coerce TOML values to the dataclass field type; raise ConfigError naming the key on mismatch."""
    default = expected
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}.{key}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}.{key}: expected a string, got {value!r}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}.{key}: expected a list, got {value!r}")
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{key}: expected a table, got {value!r}")
        return dict(value)
    return value


def _build(cls, where: str, values: dict[str, Any]):
    defaults = cls()
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"[{where}] unknown keys {unknown}; known keys: {sorted(known)}")
    coerced = {k: _check_type(where, k, v, getattr(defaults, k)) for k, v in values.items()}
    return dataclasses.replace(defaults, **coerced)


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist or is not a file")
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {e}") from e


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    key, raw = text.split("=", 1)
    path = key.strip().split(".")
    if len(path) < 2:
        raise ConfigError(f"override {text!r}: the key must name a section, e.g. model.d_model=64")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # bare strings: model.structure=self_only
    return path, value


def preset_path(model: str, dataset: str) -> Path:
    return PRESET_DIR / f"{model}_{dataset}.toml"


def load_config(model: str = "gsit", dataset: str = "synthetic", path: str | Path | None = None,
                overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; known models: {list(MODELS)}")
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; known datasets: {list(DATASETS)}")
    raw: dict[str, Any] = {}
    preset = preset_path(model, dataset)
    if preset.is_file():
        raw = _read_toml(preset)
    if path is not None:
        raw = _merge(raw, _read_toml(Path(path)))
    for o in overrides:
        keys, value = parse_override(o)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {o!r}: {k!r} is not a section")
        node[keys[-1]] = value
    unknown = sorted(set(raw) - {"model", "train", "data"})
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; known: ['data', 'model', 'train']")
    model_values = dict(raw.get("model", {}))
    cls = model_config_class(model)
    # validate model keys now (input dims are filled from the data later)
    model_cfg = _build(cls, "model", model_values)
    backend = getattr(model_cfg, "attention_backend", None)
    if backend is not None:
        from gsit.attention import available_backends
        if backend not in available_backends():
            raise ConfigError(f"model.attention_backend={backend!r} is not a known attention backend; "
                              f"known backends: {available_backends()}")
    data = _build(DataConfig, "data", {"dataset": dataset, **raw.get("data", {})})
    if data.dataset != dataset:
        raise ConfigError(f"[data] dataset={data.dataset!r} conflicts with --dataset {dataset!r}")
    if data.text_kind not in TEXT_KINDS:
        raise ConfigError(f"data.text_kind={data.text_kind!r}; allowed: {list(TEXT_KINDS)}")
    if data.text_kind == "features" and data.text_encoder:
        raise ConfigError(f"data.text_kind=\"features\" reads the frozen text features, so the text encoder "
                          f"{data.text_encoder!r} would not be used; drop --text-encoder, or set "
                          f"data.text_kind=\"bert\" to fine-tune it on the token ids")
    train = _build(TrainConfig, "train", raw.get("train", {}))
    for name, allowed in (("protocol", ("gsit", "mmsa_mult")), ("scheduler", ("none", "plateau")),
                          ("amp", ("none", "bf16")),
                          ("execution", ("auto", "eager", "compiled", "graphed", "compiled_graphed"))):
        if getattr(train, name) not in allowed:
            raise ConfigError(f"train.{name}={getattr(train, name)!r}; allowed: {list(allowed)}")
    if train.batch_size < 1 or train.update_epochs < 1 or train.early_stop < 1:
        raise ConfigError(f"train.batch_size, update_epochs and early_stop must be >= 1, got "
                          f"{train.batch_size}, {train.update_epochs}, {train.early_stop}")
    if not train.seeds:
        raise ConfigError("train.seeds is empty")
    return RunConfig(model_name=model, model=model_values, train=train, data=data)


def build_model_config(run: RunConfig, *, input_dims: dict[str, int], output_dim: int):
    """The model's dataclass from the run config plus facts read from the data."""
    cls = model_config_class(run.model_name)
    cfg = _build(cls, "model", run.model)
    mods = cfg.modalities
    missing = [m for m in mods if m not in input_dims]
    if missing:
        raise ConfigError(f"model.modalities {list(mods)} name {missing}, which the data does not have "
                          f"(data modalities: {sorted(input_dims)})")
    return dataclasses.replace(cfg, input_dims={m: int(input_dims[m]) for m in mods}, output_dim=output_dim)
