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

from gsit.attention import available_backends
from gsit.data.spec import DATASETS as DATASET_SPECS
from gsit.errors import ConfigError
from gsit.models.registry import MODELS, model_config_class

TEXT_KINDS = ("auto", "features", "bert")
DATASETS = tuple(DATASET_SPECS)  # names a run may name (gsit.data.spec holds their facts)
PRESET_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class TrainConfig:
    protocol: str = "gsit"  # gsit: Adam, three parameter groups (SPEC §9); mmsa_mult: MMSA's MulT trainer
    batch_size: int = 8
    learning_rate_bert: float = 5e-5
    learning_rate_other: float = 5e-4
    weight_decay_bert: float = 1e-3
    weight_decay_other: float = 1e-3
    learning_rate: float = 2e-3  # mmsa_mult protocol only
    weight_decay: float = 0.0  # mmsa_mult protocol only
    accumulation_steps: int = 8  # batches per optimizer step (summed gradients; the partial window is
    # dropped); MMSA calls it update_epochs, accepted as an alias
    early_stop: int = 8  # epochs without a 4-decimal validation-loss improvement
    max_epochs: int = 0  # 0 = no cap (the paper); a cap for quick runs
    grad_clip: float = 0.0  # clip_grad_value_; 0 = off (mmsa_mult: 0.6)
    scheduler: str = "none"  # none | plateau (ReduceLROnPlateau on validation loss)
    plateau_patience: int = 5
    plateau_factor: float = 0.1
    seeds: tuple[int, ...] = (1111, 1112, 1113, 1114, 1115)
    amp: str = "none"  # none | bf16
    deterministic: bool = False  # torch.use_deterministic_algorithms + cuDNN deterministic
    compile: bool = False  # legacy switch: with execution="auto", same as execution="compiled"
    execution: str = "auto"  # auto | eager | compiled | graphed | compiled_graphed (gsit.execution)
    compile_text_encoder: bool = False  # compiled modes: also compile a fine-tuned text encoder (slow to
    # compile; it is captured in the CUDA graph either way)
    eval_batch_size: int = 0  # 0 = batch_size
    length_bucketing: bool = False  # batches of similar total length (pays with model.padding_aware)
    modality_dropout: float = 0.0  # training-time probability of zeroing each non-text modality per sample
    # optional auxiliary objective (not the paper's; 0 = off, the paper's protocol): training loss = task loss
    # + contrastive_weight x InfoNCE between the pooled per-modality summaries of the same sample
    # (gsit.evaluate.contrastive_loss); temperature divides the cosine similarities
    contrastive_weight: float = 0.0
    contrastive_temperature: float = 0.1


# [train] keys accepted under another name (MMSA's), mapped to ours in TOML files, overrides and run dirs
TRAIN_ALIASES = {"update_epochs": "accumulation_steps"}


def canonical_train_keys(values: dict[str, Any], where: str = "[train]") -> dict[str, Any]:
    """``values`` of a [train] table with alias keys renamed (``update_epochs`` -> ``accumulation_steps``);
    giving both names is an error."""
    out = dict(values)
    for alias, name in TRAIN_ALIASES.items():
        if alias in out:
            if name in out:
                raise ConfigError(f"{where} sets both {name} and its alias {alias} (MMSA's name); keep one")
            out[name] = out.pop(alias)
    return out


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "synthetic"
    path: str = ""  # "" = generate the synthetic dataset
    text_encoder: str = ""  # local BERT-family directory ("" = precomputed text features)
    # which text input the model reads: "features" = the frozen pre-extracted ``text`` (N, L, D) (MMSA's MulT,
    # use_bert=false); "bert" = ``text_bert`` token ids (N, 3, L) through a fine-tuned text encoder (GsiT);
    # "auto" = token ids when the data has them, else features.  A kind the data lacks is an error.
    text_kind: str = "auto"
    binary: bool = False  # MIntRec binary mode
    synthetic_size: str = "small"  # small | a preset name (mosi, mosei, sims)
    synthetic_task: str = (
        "sign"  # sign: y = text cue x audio cue x vision magnitude | recall: associative recall
    )
    synthetic_recall_keys: int = 4  # recall: number of (code, value) segments in the audio
    zero_modalities: tuple[
        str, ...
    ] = ()  # replace these modalities' features by zeros (e.g. a text-only control)


@dataclass(frozen=True)
class RunConfig:
    model_name: str
    model: dict[str, Any]
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model": dict(self.model),
            "train": dataclasses.asdict(self.train),
            "data": dataclasses.asdict(self.data),
        }


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
        kinds = {type(v) for v in default}
        if len(kinds) == 1:  # a list of ints or of strings: every item must be of that type
            want = kinds.pop()
            for i, v in enumerate(value):
                if type(v) is not want:
                    raise ConfigError(
                        f"{where}.{key}[{i}]: expected {_TYPE_WORDS.get(want, want.__name__)}, got {v!r}"
                    )
        return tuple(value)
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}.{key}: expected a table, got {value!r}")
        # a partial table is merged onto the defaults: model.kernel_sizes={audio=1} keeps text and vision
        unknown = sorted(set(value) - set(default))
        if default and unknown:
            raise ConfigError(f"{where}.{key}: unknown key {unknown[0]!r}; known keys: {sorted(default)}")
        merged = dict(default)
        for k, v in value.items():
            merged[k] = _check_type(where, f"{key}.{k}", v, default[k]) if k in default else v
        return merged
    return value


_TYPE_WORDS = {int: "an integer", str: "a string", float: "a number", bool: "true/false"}
_SEED_MAX = 2**32 - 1  # numpy's seed range (torch's is wider)


def _finite(x: float) -> bool:
    return x == x and x not in (float("inf"), float("-inf"))


# ONE table of ranges: name -> (lowest, highest or None, lowest allowed, highest allowed).  Every numeric
# setting of [train] and [data], and of any model config that has the field, is checked by check_ranges;
# model dropouts are all in [0, 1] and conv kernels >= 1.
_RANGES: dict[str, tuple[float, float | None, bool, bool]] = {
    "train.batch_size": (1, None, True, False),
    "train.eval_batch_size": (0, None, True, False),  # 0 = batch_size
    "train.learning_rate_bert": (0, None, False, False),
    "train.learning_rate_other": (0, None, False, False),
    "train.learning_rate": (0, None, False, False),
    "train.weight_decay_bert": (0, None, True, False),
    "train.weight_decay_other": (0, None, True, False),
    "train.weight_decay": (0, None, True, False),
    "train.accumulation_steps": (1, None, True, False),
    "train.early_stop": (1, None, True, False),
    "train.max_epochs": (0, None, True, False),  # 0 = no cap
    "train.grad_clip": (0, None, True, False),  # 0 = off
    "train.plateau_patience": (0, None, True, False),
    "train.plateau_factor": (0, 1, False, False),
    "train.modality_dropout": (0, 1, True, True),
    "train.contrastive_weight": (0, None, True, False),  # 0 = off
    "train.contrastive_temperature": (0, None, False, False),
    "data.synthetic_recall_keys": (2, None, True, False),
    "model.d_model": (1, None, True, False),
    "model.num_heads": (1, None, True, False),
    "model.num_layers": (1, None, True, False),
    "model.output_dim": (1, None, True, False),
}


def _range_text(lo, hi, lo_ok, hi_ok, integer: bool = False) -> str:
    if hi is None:
        return f"{'>=' if lo_ok else '>'} {lo:g}" + ("" if integer else " and finite")
    return f"in {'[' if lo_ok else '('}{lo:g}, {hi:g}{']' if hi_ok else ')'}"


def _check_value(name: str, value: Any, rule) -> None:
    lo, hi, lo_ok, hi_ok = rule
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and _finite(float(value))
    ok = ok and (value >= lo if lo_ok else value > lo)
    ok = ok and (hi is None or (value <= hi if hi_ok else value < hi))
    if not ok:
        raise ConfigError(
            f"{name}={value!r} is out of range: it must be "
            f"{_range_text(lo, hi, lo_ok, hi_ok, isinstance(value, int))}"
        )


def check_ranges(section: str, cfg: Any) -> None:
    """Range-check every numeric setting of one section (``train``, ``data`` or ``model``) in one place;
    the first bad value raises a ConfigError naming ``section.key`` and the value."""
    values = dataclasses.asdict(cfg)
    for key, value in values.items():
        name = f"{section}.{key}"
        if name in _RANGES:
            _check_value(name, value, _RANGES[name])
        elif section == "model" and key.endswith("dropout"):
            _check_value(name, value, (0, 1, True, True))
        elif section == "model" and key == "kernel_sizes":
            for m, k in value.items():
                _check_value(f"model.kernel_sizes.{m}", k, (1, None, True, False))
    if section == "train":
        for seed in cfg.seeds:
            if not 0 <= seed <= _SEED_MAX:
                raise ConfigError(
                    f"train.seeds: the seed {seed} is outside numpy's seed range [0, {_SEED_MAX}]"
                )
        dup = [s for i, s in enumerate(cfg.seeds) if s in cfg.seeds[:i]]
        if dup:
            raise ConfigError(f"train.seeds names the seed {dup[0]} twice (each seed has one directory)")
    if section == "model":
        if "num_heads" in values and values["d_model"] % values["num_heads"]:
            raise ConfigError(
                f"model.d_model={values['d_model']} is not divisible by model.num_heads={values['num_heads']}"
            )
        mods = values.get("modalities", ())
        if len(set(mods)) != len(mods) or any(m not in ("text", "audio", "vision") for m in mods):
            raise ConfigError(
                f"model.modalities={list(mods)}: expected distinct names from 'text', 'audio', 'vision'"
            )


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


read_toml = _read_toml  # the public name (analysis reads search spaces and configs with it)


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


def _canonical(raw: dict[str, Any], source) -> dict[str, Any]:
    """One TOML file's tables with [train] alias keys renamed (each file on its own, before merging)."""
    if isinstance(raw.get("train"), dict):
        raw = {**raw, "train": canonical_train_keys(raw["train"], where=f"[train] of {str(source)!r}")}
    return raw


def preset_path(model: str, dataset: str) -> Path:
    return PRESET_DIR / f"{model}_{dataset}.toml"


def load_config(
    model: str = "gsit",
    dataset: str = "synthetic",
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; known models: {list(MODELS)}")
    if dataset not in DATASETS:
        raise ConfigError(f"unknown dataset {dataset!r}; known datasets: {list(DATASETS)}")
    raw: dict[str, Any] = {}
    preset = preset_path(model, dataset)
    if preset.is_file():
        raw = _canonical(_read_toml(preset), preset)
    if path is not None:
        raw = _merge(raw, _canonical(_read_toml(Path(path)), path))
    for o in overrides:
        keys, value = parse_override(o)
        if len(keys) == 2 and keys[0] == "train":
            keys[1] = TRAIN_ALIASES.get(keys[1], keys[1])
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {o!r}: {k!r} is not a section")
        old = node.get(keys[-1])
        # a table override merges onto the table it replaces (the preset's), key by key
        node[keys[-1]] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else value
    unknown = sorted(set(raw) - {"model", "train", "data"})
    if unknown:
        raise ConfigError(f"unknown config sections {unknown}; known: ['data', 'model', 'train']")
    model_values = dict(raw.get("model", {}))
    cls = model_config_class(model)
    # validate model keys now (input dims are filled from the data later)
    model_cfg = _build_model_section(cls, model_values)
    backend = getattr(model_cfg, "attention_backend", None)
    if backend is not None:
        if backend not in available_backends():
            raise ConfigError(
                f"model.attention_backend={backend!r} is not a known attention backend; "
                f"known backends: {available_backends()}"
            )
    data = _build(DataConfig, "data", {"dataset": dataset, **raw.get("data", {})})
    if data.dataset != dataset:
        raise ConfigError(f"[data] dataset={data.dataset!r} conflicts with --dataset {dataset!r}")
    if data.text_kind not in TEXT_KINDS:
        raise ConfigError(f"data.text_kind={data.text_kind!r}; allowed: {list(TEXT_KINDS)}")
    if data.text_kind == "features" and data.text_encoder:
        raise ConfigError(
            f'data.text_kind="features" reads the frozen text features, so the text encoder '
            f"{data.text_encoder!r} would not be used; drop --text-encoder, or set "
            f'data.text_kind="bert" to fine-tune it on the token ids'
        )
    train = _build(TrainConfig, "train", raw.get("train", {}))
    for name, allowed in (
        ("protocol", ("gsit", "mmsa_mult")),
        ("scheduler", ("none", "plateau")),
        ("amp", ("none", "bf16")),
        ("execution", ("auto", "eager", "compiled", "graphed", "compiled_graphed")),
    ):
        if getattr(train, name) not in allowed:
            raise ConfigError(f"train.{name}={getattr(train, name)!r}; allowed: {list(allowed)}")
    if not train.seeds:
        raise ConfigError("train.seeds is empty")
    check_ranges("train", train)
    check_ranges("data", data)
    return RunConfig(model_name=model, model=model_values, train=train, data=data)


def _build_model_section(cls, values: dict[str, Any]):
    """The model dataclass from ``[model]``, its ranges checked; the model classes' own checks (ValueError)
    become ConfigErrors naming the section."""
    try:
        cfg = _build(cls, "model", values)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"[model]: {e}") from None
    check_ranges("model", cfg)
    return cfg


def build_model_config(run: RunConfig, *, input_dims: dict[str, int], output_dim: int):
    """The model's dataclass from the run config plus facts read from the data."""
    cls = model_config_class(run.model_name)
    cfg = _build_model_section(cls, run.model)
    mods = cfg.modalities
    missing = [m for m in mods if m not in input_dims]
    if missing:
        raise ConfigError(
            f"model.modalities {list(mods)} name {missing}, which the data does not have "
            f"(data modalities: {sorted(input_dims)})"
        )
    return dataclasses.replace(cfg, input_dims={m: int(input_dims[m]) for m in mods}, output_dim=output_dim)
