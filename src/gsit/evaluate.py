"""Evaluate or predict from a trained run directory (best checkpoint per seed, loaded without pickle)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from gsit.checkpoint import atomic_write_bytes
from gsit.errors import GsitError


def _run_and_data(run_dir: str | Path, data_path: str | None):
    from gsit.data import load_dataset
    from gsit.data.synthetic import make_synthetic
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise GsitError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    raw = json.loads(cfg_path.read_text())
    path = data_path or raw["data"]["path"]
    dataset = raw["data"]["dataset"]
    if not path:
        data = make_synthetic(seed=0) if raw["data"].get("synthetic_size", "small") == "small" else \
            make_synthetic(preset=raw["data"]["synthetic_size"], seed=0)
    else:
        data = load_dataset(path, dataset=None if dataset == "synthetic" else dataset,
                            text_tokenizer_dir=raw["data"]["text_encoder"] or None,
                            mintrec_binary=raw["data"]["binary"])
    from gsit.data import apply_zero_modalities
    # a control run (e.g. text only) is scored on the data it was trained on
    apply_zero_modalities(data, raw["data"].get("zero_modalities", ()))
    return run_dir, dataset, data


def _seeds(run_dir: Path, seed: int | None) -> list[int]:
    seeds = sorted(int(p.name.split("-", 1)[1]) for p in run_dir.glob("seed-*") if (p / "best.safetensors").is_file())
    if not seeds:
        raise GsitError(f"run directory {str(run_dir)!r} has no best checkpoint")
    if seed is not None:
        if seed not in seeds:
            raise GsitError(f"run directory {str(run_dir)!r} has no checkpoint for seed {seed}; seeds: {seeds}")
        return [seed]
    return seeds


def evaluate_run(run_dir, *, data_path: str | None = None, split: str = "test", seed: int | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    from gsit.train import Dist, evaluate_split, model_from_run_dir, summarize
    run_dir, dataset, data = _run_and_data(run_dir, data_path)
    if split not in data.splits:
        raise GsitError(f"split {split!r} not in the data (splits: {sorted(data.splits)})")
    per_seed = []
    for s in _seeds(run_dir, seed):
        run, model = model_from_run_dir(run_dir, data, seed=s, device=device)
        per_seed.append({"seed": s, "test": evaluate_split(model, data.splits[split], run=run, dataset=dataset,
                                                           task=data.task, ctx=Dist(device=__import__("torch").device(device)))})
    return {"run_dir": str(run_dir), "split": split, **summarize(per_seed), "per_seed": per_seed}


def predict_run(run_dir, *, data_path: str | None, out: str, split: str = "test", seed: int | None = None,
                device: str = "cpu") -> int:
    import torch

    from gsit.train import Dist, model_from_run_dir, predict_split
    out_path = Path(out)
    if out_path.exists():
        raise GsitError(f"output file {out!r} already exists; choose a new path (nothing is overwritten)")
    run_dir, dataset, data = _run_and_data(run_dir, data_path)
    if split not in data.splits:
        raise GsitError(f"split {split!r} not in the data (splits: {sorted(data.splits)})")
    s = _seeds(run_dir, seed)[0]
    run, model = model_from_run_dir(run_dir, data, seed=s, device=device)
    part = data.splits[split]
    preds = predict_split(model, part, run=run, ctx=Dist(device=torch.device(device)))
    buf = io.StringIO()
    w = csv.writer(buf)
    if data.task == "classification":
        names = data.label_names or [str(i) for i in range(preds.shape[1])]
        w.writerow(["id", "prediction", "label", *[f"logit_{n}" for n in names]])
        for i in range(len(part)):
            w.writerow([part.ids[i], names[int(np.argmax(preds[i]))], names[int(part.labels[i])], *preds[i].tolist()])
    else:
        w.writerow(["id", "prediction", "label"])
        for i in range(len(part)):
            w.writerow([part.ids[i], float(preds[i, 0]), float(part.labels[i])])
    atomic_write_bytes(out_path, buf.getvalue().encode())
    return len(part)
