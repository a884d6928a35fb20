"""Run directories, one home: create one that never overwrites, write into it atomically, read a run back
(config, seeds, a trained model).  A run directory holds config.json, command.txt, versions.json, data.json,
results.json/.csv and one ``seed-N/`` per seed (epochs.csv, best.safetensors, last.safetensors + last.json,
results.json)."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsit import __version__
from gsit.build import build_model, load_text_encoder
from gsit.checkpoint import atomic_write_bytes, atomic_write_json, load_model_weights
from gsit.config import (
    RunConfig,
    _build,
    _build_model_section,
    canonical_train_keys,
    check_ranges,
    load_config,
)
from gsit.data._util import read_json
from gsit.distributed import Dist, all_gather
from gsit.errors import ConfigError, GsitError
from gsit.models.registry import model_config_class


def versions() -> dict[str, str]:
    """Versions of Python, torch, numpy, gsit, optional packages and the GPU, recorded in every run."""
    out = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    out["gsit"] = __version__
    for mod in ("triton", "transformers", "safetensors"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def new_run_dir(root: Path, model: str, dataset: str) -> Path:
    """A fresh directory under ``root``; never an existing one."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = root / f"{model}_{dataset}_{stamp}" if n == 0 else root / f"{model}_{dataset}_{stamp}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise GsitError(f"could not create a new run directory under {str(root)!r}")


def append_epoch_row(path: Path, row: dict[str, Any]) -> None:
    """Append one row; the file is rewritten atomically so a crash never leaves half a line."""
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])] + [row]
    fields = list(row)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    atomic_write_bytes(path, buf.getvalue().encode())


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and population std over seeds of every test metric."""
    keys = list(per_seed[0]["test"])
    mean, std = {}, {}
    for k in keys:
        vals = np.array([r["test"][k] for r in per_seed], dtype=np.float64)
        mean[k] = float(np.mean(vals))
        std[k] = float(np.std(vals)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std}


def write_results(run_dir: Path, run: RunConfig, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    """``results.json`` (per seed + mean/std) and a one-row ``results.csv``."""
    summary = summarize(per_seed)
    results = {
        "model": run.model_name,
        "dataset": run.data.dataset,
        "seeds": [r["seed"] for r in per_seed],
        "n_seeds": len(per_seed),
        **summary,
        "per_seed": per_seed,
    }
    atomic_write_json(run_dir / "results.json", results)
    header = ["model", "dataset", "n_seeds"]
    row: list[Any] = [run.model_name, run.data.dataset, len(per_seed)]
    for k in summary["mean"]:
        header += [f"{k}_mean", f"{k}_std"]
        row += [summary["mean"][k], summary["std"][k]]
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerow(row)
    atomic_write_bytes(run_dir / "results.csv", buf.getvalue().encode())
    return results


def data_facts(data) -> dict[str, Any]:
    """What a run was trained on (source, task, widths, lengths, split sizes), for ``data.json``."""
    return {
        "source": str(data.source),
        "task": data.task,
        "num_classes": data.num_classes,
        "label_names": data.label_names,
        "text_kind": data.text_kind,
        "dims": {"text": data.text_dim, "audio": data.audio_dim, "vision": data.vision_dim},
        "seq_lengths": data.seq_lengths,
        "splits": {k: len(v) for k, v in data.splits.items()},
        "fingerprint": data_fingerprint(data),
    }


_FINGERPRINT_ROWS = 16


def data_fingerprint(data) -> dict[str, dict[str, str]]:
    """A cheap fingerprint of the data a run trains on: per split and key, the shape and dtype, and a
    SHA-256 of the whole array for ids, labels and lengths, of 16 evenly spaced rows for the feature
    arrays (text, text_bert, audio, vision).  File sizes or times are not used, so a copy of the same
    data elsewhere matches; an edit confined to unsampled feature rows is not detected."""
    out: dict[str, dict[str, str]] = {}
    for name, split in sorted(data.splits.items()):
        keys = [
            "ids",
            "labels",
            "text",
            "text_bert",
            "audio",
            "vision",
            "text_lengths",
            "audio_lengths",
            "vision_lengths",
        ]
        entry = {}
        for key in keys:
            arr = getattr(split, key, None)
            if arr is None:
                continue
            arr = np.asarray(arr)
            if key in ("text", "text_bert", "audio", "vision") and arr.shape[0] > _FINGERPRINT_ROWS:
                rows = np.linspace(0, arr.shape[0] - 1, _FINGERPRINT_ROWS).round().astype(np.int64)
                sample = arr[rows]
            else:
                sample = arr
            h = hashlib.sha256(str(sample.dtype).encode())
            h.update(
                np.ascontiguousarray(sample).tobytes()
                if sample.dtype.kind != "O"
                else "\x00".join(map(str, sample.tolist())).encode()
            )
            entry[key] = f"{tuple(int(d) for d in arr.shape)} {arr.dtype} {h.hexdigest()[:16]}"
        for key, arr in sorted(split.extra_labels.items()):
            arr = np.asarray(arr)
            entry[f"extra/{key}"] = (
                f"{tuple(arr.shape)} {arr.dtype} "
                f"{hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()[:16]}"
            )
        out[name] = entry
    return out


def check_resume_data(run_dir: Path, data) -> None:
    """``--resume``: the data must be what the run started on (its fingerprint in ``data.json``);
    otherwise one error says which split and key changed, and how."""
    path = Path(run_dir) / "data.json"
    if not path.is_file():
        raise GsitError(f"--resume {str(run_dir)!r}: data.json is missing, so the data cannot be checked")
    saved = read_json(path, error=ConfigError)
    old = saved.get("fingerprint") if isinstance(saved, dict) else None
    if old is None:
        return  # a run from before fingerprints: nothing to compare
    new = data_fingerprint(data)
    for split in sorted(set(old) | set(new)):
        a, b = old.get(split, {}), new.get(split, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                what = (
                    "is new"
                    if key not in a
                    else "is gone"
                    if key not in b
                    else f"changed from {a[key].rsplit(' ', 1)[0]} to {b[key].rsplit(' ', 1)[0]}"
                    if a[key].rsplit(" ", 1)[0] != b[key].rsplit(" ", 1)[0]
                    else "has different content"
                )
                raise GsitError(
                    f"--resume {str(run_dir)!r}: the data at {data.source!r} is not the data "
                    f"the run started on: split '{split}' key '{key}' {what}; resume with the same data "
                    f"(or start a new run)"
                )


def load_run_config(run_dir: Path, data_path: str | None = None) -> RunConfig:
    """The resolved configuration a run directory was trained with (``data_path`` replaces its data path).

    ``config.json`` is checked like a TOML config: sections and keys must be known and of the right type,
    and values in range; any problem is one ConfigError naming the file and ``section.key``."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    raw = read_json(cfg_path, error=ConfigError)
    if not isinstance(raw, dict):
        raise ConfigError(f"{cfg_path}: holds a {type(raw).__name__}, but a JSON object is expected")
    unknown = sorted(set(raw) - {"model_name", "model", "train", "data", "execution"})
    if unknown:
        raise ConfigError(
            f"{cfg_path}: unknown key {unknown[0]!r} (known: data, execution, model, model_name, train)"
        )
    for key, kind in (("model_name", str), ("model", dict), ("train", dict), ("data", dict)):
        if not isinstance(raw.get(key), kind):
            raise ConfigError(
                f"{cfg_path}: key {key!r} is missing or not a {'string' if kind is str else 'JSON object'}"
            )
    dataset = raw["data"].get("dataset")
    try:
        base = load_config(raw["model_name"], dataset if isinstance(dataset, str) else "<missing>")
        model_cfg = _build_model_section(model_config_class(raw["model_name"]), raw["model"])
        del model_cfg
        raw["train"] = canonical_train_keys(raw["train"], f"{cfg_path} [train]")
        train = _build(type(base.train), "train", raw["train"])
        # runs from before data.text_kind existed read text as "auto" did then, whatever the preset says now
        raw["data"] = {"text_kind": "auto", **raw["data"]}
        data = _build(type(base.data), "data", raw["data"])
        check_ranges("train", train)
        check_ranges("data", data)
    except ConfigError as e:
        raise ConfigError(f"{cfg_path}: {e}") from None
    # keys a run directory predates take the preset's value (a run records every key of its time)
    train = dataclasses.replace(base.train, **{k: getattr(train, k) for k in raw["train"]})
    data = dataclasses.replace(base.data, **{k: getattr(data, k) for k in raw["data"]})
    if data_path:
        data = dataclasses.replace(data, path=str(data_path))
    return RunConfig(model_name=raw["model_name"], model=raw["model"], train=train, data=data)


def run_seeds(run_dir: Path, seed: int | None = None) -> list[int]:
    """Seeds with a best checkpoint in ``run_dir`` (only ``seed`` when given; an error if it has none)."""
    seeds = sorted(
        int(p.name.split("-", 1)[1])
        for p in Path(run_dir).glob("seed-*")
        if (p / "best.safetensors").is_file()
    )
    if not seeds:
        raise ConfigError(f"run directory {str(run_dir)!r} has no best checkpoint")
    if seed is not None:
        if seed not in seeds:
            raise ConfigError(
                f"run directory {str(run_dir)!r} has no checkpoint for seed {seed}; seeds: {seeds}"
            )
        return [seed]
    return seeds


def model_from_run_dir(run_dir: Path, data, *, seed: int | None = None, device: str = "cpu"):
    """Rebuild a trained model from a run directory (config + best checkpoint of ``seed``)."""
    run = load_run_config(run_dir)
    seed = run_seeds(run_dir, seed)[0]
    model = build_model(run, data, load_text_encoder(run, data))
    load_model_weights(Path(run_dir) / f"seed-{seed}" / "best.safetensors", model)
    return run, model.to(device).eval()


def shared_new_run_dir(root: Path, model: str, dataset: str, ctx: Dist) -> Path:
    """A new run directory made by rank 0 and announced to every rank."""
    path = str(new_run_dir(root, model, dataset)) if ctx.main else None
    return Path(all_gather(path, ctx)[0])


def check_resume_dir(run_dir: Path, run: RunConfig) -> None:
    """``--resume RUN_DIR``: it must be a run directory started with the same configuration."""
    if not (run_dir / "config.json").is_file():
        raise GsitError(f"--resume {str(run_dir)!r}: not a run directory (no config.json)")
    saved = read_json(run_dir / "config.json", error=ConfigError)
    if isinstance(saved, dict):
        saved.pop("execution", None)  # what train.execution resolved to (recorded, not a setting)
        if isinstance(saved.get("train"), dict):  # a run saved before the rename holds MMSA's update_epochs
            saved["train"] = canonical_train_keys(saved["train"])
    if saved != json.loads(json.dumps(run.to_dict())):  # compare as stored (tuples become lists)
        raise GsitError(
            f"--resume {str(run_dir)!r}: the run was started with a different configuration; "
            f"resume with the same arguments"
        )


def check_new_run_dir(run_dir: Path, ctx: Dist) -> None:
    """``--run-dir DIR``: it must not exist or be empty; rank 0 decides, before any rank writes into it
    (other ranks would otherwise race rank 0's writes)."""
    taken = run_dir.exists() and any(run_dir.iterdir()) if ctx.main else None
    if all_gather(taken, ctx)[0]:
        raise GsitError(
            f"run directory {str(run_dir)!r} already exists and is not empty; runs are never "
            f"overwritten (use --resume to continue it)"
        )


_RUN_FILES = ("config.json", "command.txt", "versions.json", "data.json")


def discard_unstarted_run(run_dir: Path, *, created: bool) -> bool:
    """After a failure in a new run: when no seed committed an epoch, remove what gsit wrote (the run
    files, uncommitted seed files, temp files) and the directory itself if this command created it, so a
    failed start leaves nothing behind.  Returns whether it did; a run with any committed epoch is kept
    for ``--resume``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    seeds = [p for p in run_dir.glob("seed-*") if p.is_dir()]
    if any((p / "last.json").exists() or (p / "results.json").exists() for p in seeds):
        return False
    ours = set(_RUN_FILES) | {"results.json", "results.csv"}
    for p in seeds:
        for f in p.iterdir():
            if f.is_file() and (f.name.startswith(".") or f.suffix in (".safetensors", ".csv")):
                f.unlink()
        if not any(p.iterdir()):
            p.rmdir()
    for f in run_dir.iterdir():
        if f.is_file() and (f.name in ours or (f.name.startswith(".") and f.name.endswith(".tmp"))):
            f.unlink()
    if created and not any(run_dir.iterdir()):
        run_dir.rmdir()
    return True
