"""The resolved configuration of a run as plain data, TOML or JSON (``gsit train --print-config``).

The TOML written here is a valid ``--config`` file: loading it back over the same model and dataset gives
the same :class:`gsit.config.RunConfig`.  The model section lists every key of the model's dataclass
(defaults included) except the facts read from the data (``input_dims``, ``output_dim``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

_DATA_FACTS = ("input_dims", "output_dim")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]+$")


def resolved_config(run) -> dict[str, Any]:
    """``{"model_name", "model": every model key, "train": ..., "data": ...}`` of a RunConfig."""
    from gsit.config import _build, model_config_class

    model_cfg = _build(model_config_class(run.model_name), "model", run.model)
    model = {k: v for k, v in dataclasses.asdict(model_cfg).items() if k not in _DATA_FACTS}
    return {
        "model_name": run.model_name,
        "model": model,
        "train": dataclasses.asdict(run.train),
        "data": dataclasses.asdict(run.data),
    }


def _key(k: str) -> str:
    return k if _BARE_KEY.match(k) else json.dumps(k)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string (JSON's escapes are a subset of TOML's)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_key(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as TOML")


def to_toml(run) -> str:
    """The resolved configuration as a TOML ``--config`` file (model and dataset in a header comment)."""
    cfg = resolved_config(run)
    lines = [f"# gsit resolved configuration: --model {cfg['model_name']} --dataset {cfg['data']['dataset']}"]
    for section in ("model", "train", "data"):
        lines += ["", f"[{section}]"]
        lines += [f"{_key(k)} = {toml_value(v)}" for k, v in cfg[section].items()]
    return "\n".join(lines) + "\n"


def to_json(run) -> str:
    return json.dumps(resolved_config(run), indent=2) + "\n"
