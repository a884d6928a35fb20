"""Run directories, one home: create one that never overwrites, write into it atomically, read a run back
(config, seeds, a trained model).  A run directory holds config.json, command.txt, versions.json, data.json,
results.json/.csv and one ``seed-N/`` per seed (epochs.csv, best.safetensors, last.safetensors + last.json,
results.json)."""

from __future__ import annotations

import csv
import dataclasses
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
from gsit.config import RunConfig, load_config
from gsit.distributed import Dist, all_gather
from gsit.errors import ConfigError, GsitError


def versions() -> dict[str, str]:
    """Versions of Python, torch, numpy, gsit, optional packages and the GPU, recorded in every run."""
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform()}
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
    results = {"model": run.model_name, "dataset": run.data.dataset, "seeds": [r["seed"] for r in per_seed],
               "n_seeds": len(per_seed), **summary, "per_seed": per_seed}
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
    return {"source": str(data.source), "task": data.task, "num_classes": data.num_classes,
            "label_names": data.label_names, "text_kind": data.text_kind,
            "dims": {"text": data.text_dim, "audio": data.audio_dim, "vision": data.vision_dim},
            "seq_lengths": data.seq_lengths,
            "splits": {k: len(v) for k, v in data.splits.items()}}


def load_run_config(run_dir: Path, data_path: str | None = None) -> RunConfig:
    """The resolved configuration a run directory was trained with (``data_path`` replaces its data path)."""
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    raw = json.loads(cfg_path.read_text())
    base = load_config(raw["model_name"], raw["data"]["dataset"])

    def merged(section, values):
        return dataclasses.replace(section, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    # runs from before data.text_kind existed read text as "auto" did then, whatever the preset says now
    data = merged(base.data, {"text_kind": "auto", **raw["data"]})
    if data_path:
        data = dataclasses.replace(data, path=str(data_path))
    return RunConfig(model_name=raw["model_name"], model=raw["model"], train=merged(base.train, raw["train"]),
                     data=data)


def run_seeds(run_dir: Path, seed: int | None = None) -> list[int]:
    """Seeds with a best checkpoint in ``run_dir`` (only ``seed`` when given; an error if it has none)."""
    seeds = sorted(int(p.name.split("-", 1)[1]) for p in Path(run_dir).glob("seed-*")
                   if (p / "best.safetensors").is_file())
    if not seeds:
        raise ConfigError(f"run directory {str(run_dir)!r} has no best checkpoint")
    if seed is not None:
        if seed not in seeds:
            raise ConfigError(f"run directory {str(run_dir)!r} has no checkpoint for seed {seed}; seeds: {seeds}")
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
    saved = json.loads((run_dir / "config.json").read_text())
    saved.pop("execution", None)  # what train.execution resolved to (recorded, not a setting)
    if saved != json.loads(json.dumps(run.to_dict())):  # compare as stored (tuples become lists)
        raise GsitError(f"--resume {str(run_dir)!r}: the run was started with a different configuration; "
                        f"resume with the same arguments")


def check_new_run_dir(run_dir: Path, ctx: Dist) -> None:
    """``--run-dir DIR``: it must not exist or be empty; rank 0 decides, before any rank writes into it
    (other ranks would otherwise race rank 0's writes)."""
    taken = run_dir.exists() and any(run_dir.iterdir()) if ctx.main else None
    if all_gather(taken, ctx)[0]:
        raise GsitError(f"run directory {str(run_dir)!r} already exists and is not empty; runs are never "
                        f"overwritten (use --resume to continue it)")
