"""Evaluate or predict from a trained run directory (best checkpoint per seed, loaded without pickle)."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import numpy as np

from gsit.checkpoint import atomic_write_bytes
from gsit.errors import GsitError


def _run_and_data(run_dir: str | Path, data_path: str | None):
    """(run_dir, dataset, data): the run's data as it was trained on (``data_path`` replaces its path)."""
    from gsit.data import load_run_data
    from gsit.train import load_run_config
    run = load_run_config(run_dir, data_path)
    return Path(run_dir), run.data.dataset, load_run_data(run.data)


def evaluate_run(run_dir, *, data_path: str | None = None, split: str = "test", seed: int | None = None,
                 device: str = "cpu") -> dict[str, Any]:
    from gsit.train import Dist, evaluate_split, model_from_run_dir, run_seeds, summarize
    run_dir, dataset, data = _run_and_data(run_dir, data_path)
    if split not in data.splits:
        raise GsitError(f"split {split!r} not in the data (splits: {sorted(data.splits)})")
    per_seed = []
    for s in run_seeds(run_dir, seed):
        run, model = model_from_run_dir(run_dir, data, seed=s, device=device)
        per_seed.append({"seed": s, "test": evaluate_split(model, data.splits[split], run=run, dataset=dataset,
                                                           task=data.task, ctx=Dist(device=__import__("torch").device(device)))})
    return {"run_dir": str(run_dir), "split": split, **summarize(per_seed), "per_seed": per_seed}


def predict_run(run_dir, *, data_path: str | None, out: str, split: str = "test", seed: int | None = None,
                device: str = "cpu") -> int:
    import torch

    from gsit.train import Dist, model_from_run_dir, predict_split, run_seeds
    out_path = Path(out)
    if out_path.exists():
        raise GsitError(f"output file {out!r} already exists; choose a new path (nothing is overwritten)")
    run_dir, dataset, data = _run_and_data(run_dir, data_path)
    if split not in data.splits:
        raise GsitError(f"split {split!r} not in the data (splits: {sorted(data.splits)})")
    s = run_seeds(run_dir, seed)[0]
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
