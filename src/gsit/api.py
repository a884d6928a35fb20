"""gsit's Python API: train, load a trained run, predict, export -- plain arguments in, plain values out.

``gsit.run`` mirrors MMSA's ``MMSA_run(model, dataset, seeds=...)`` (it is not called ``gsit.train``: that
name is the training-loop module ``gsit.train``); nothing internal (device contexts, data objects) appears in
a signature::

    import gsit
    res = gsit.run(model="gsit", dataset="mosi", data="MOSI/Processed/unaligned_50.pkl",
                     seeds=[1111, 1112], overrides={"train.max_epochs": 5})
    res["mean"]["Mult_acc_2"], res["std"]["Mult_acc_2"], res["run_dir"]
    model, config = gsit.load_run(res["run_dir"], seed=1112)
    preds = gsit.predict(res["run_dir"], data="MOSI/Processed/unaligned_50.pkl", split="test")
    preds = gsit.predict(model, data={"text": t, "audio": a, "vision": v})   # arrays (N, T, D)
    gsit.export(res["run_dir"], "gsit-mosi")            # save_pretrained folder + model card
    model = gsit.from_pretrained("gsit-mosi")

Training here runs in one process (CPU or one GPU); several GPUs: ``torchrun ... gsit train`` (README).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from gsit.errors import ConfigError, DataError, GsitError
from gsit.models.pretrained import from_pretrained

__all__ = ["run", "load_run", "predict", "export", "from_pretrained"]

MODALITIES = ("text", "audio", "vision")


def _override_list(overrides: Mapping[str, Any] | Sequence[str] | None) -> list[str]:
    if overrides is None:
        return []
    if isinstance(overrides, str):
        raise ConfigError(
            f"overrides must be a dict or a list of 'section.key=value' strings, got the string {overrides!r}"
        )
    if isinstance(overrides, Mapping):
        from gsit.config_dump import toml_value

        return [f"{k}={toml_value(v)}" for k, v in overrides.items()]
    return [str(o) for o in overrides]


def run(
    model: str = "gsit",
    dataset: str | None = None,
    data: str | Path | None = None,
    *,
    seeds: Sequence[int] | None = None,
    overrides: Mapping[str, Any] | Sequence[str] | None = None,
    config: str | Path | None = None,
    text_encoder: str | Path | None = None,
    out: str | Path = "runs",
    run_dir: str | Path | None = None,
    results_csv: str | Path | None = None,
    device: str | None = None,
    quiet: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` over ``seeds`` exactly as ``gsit train`` does; returns the run's
    results: ``{"model", "dataset", "seeds", "mean": {metric: value}, "std": {...}, "per_seed": [...],
    "run_dir"}``.

    ``data``: an MMSA pickle, a converted directory, a MIntRec directory (None: the synthetic dataset).
    ``overrides``: ``{"model.d_model": 64}`` or ``["model.d_model=64"]``.  ``run_dir``: an exact new
    directory (else a fresh one under ``out``).  ``results_csv``: a folder whose ``<dataset>.csv`` gets one
    row per run (MMSA's ``results/normal/<dataset>.csv``)."""
    import os

    import torch

    from gsit.build import preflight
    from gsit.config import load_config
    from gsit.data import load_run_data
    from gsit.distributed import Dist
    from gsit.runs import new_run_dir
    from gsit.train import run_training

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise GsitError("gsit.run trains in one process; under torchrun use `gsit train` (DDP)")
    dataset = dataset or ("synthetic" if data is None else None)
    if dataset is None:
        raise ConfigError("dataset is required with data (mosi, mosei, sims, simsv2, mintrec, synthetic)")
    ov = _override_list(overrides)
    cli = ["gsit", "train", "--model", model, "--dataset", dataset]
    if data is not None:
        ov.append(f'data.path="{Path(data)}"')
        cli += ["--data", str(data)]
    if text_encoder is not None:
        ov.append(f'data.text_encoder="{Path(text_encoder)}"')
        cli += ["--text-encoder", str(text_encoder)]
    if seeds is not None:
        seeds = [int(s) for s in seeds]
        ov.append(f"train.seeds={seeds}")
        cli += ["--seeds", ",".join(map(str, seeds))]
    if config is not None:
        cli += ["--config", str(config)]
    cfg = load_config(model, dataset, config, ov)
    loaded = load_run_data(cfg.data, quiet=quiet)
    preflight(cfg, loaded)
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise GsitError(
                f"run directory {str(path)!r} already exists and is not empty; runs are never overwritten"
            )
        cli += ["--run-dir", str(path)]
    else:
        path = new_run_dir(Path(out), cfg.model_name, dataset)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cli += _override_list(overrides)
    results = run_training(
        cfg, loaded, run_dir=path, quiet=quiet, device=str(dev), command=cli, ctx=Dist(device=dev)
    )
    if results_csv is not None:
        from gsit.formatting import append_dataset_csv

        append_dataset_csv(results_csv, results, path)
    return {**results, "run_dir": str(path)}


def _run_data_facts(run_dir: Path) -> SimpleNamespace:
    """What building a run's model needs to know about its data, from the run's ``data.json``."""
    path = run_dir / "data.json"
    if not path.is_file():
        raise DataError(f"{str(run_dir)!r} has no data.json (not a complete run directory)")
    facts = json.loads(path.read_text())
    dims = facts["dims"]
    return SimpleNamespace(
        task=facts["task"],
        num_classes=facts.get("num_classes"),
        text_kind=facts["text_kind"],
        text_dim=dims.get("text"),
        audio_dim=dims["audio"],
        vision_dim=dims["vision"],
        source=facts.get("source", ""),
        label_names=facts.get("label_names"),
        splits={},
    )  # no rows: the checkpoint's token ids were checked at training


def load_run(run_dir: str | Path, seed: int | None = None, *, device: str = "cpu"):
    """``(model, config)``: the best checkpoint of ``seed`` (default: the run's first seed) of a run
    directory, in eval mode, and the run's resolved configuration.  The data is not read (its facts are in
    the run)."""
    from gsit.build import build_model, load_text_encoder
    from gsit.checkpoint import load_model_weights
    from gsit.runs import load_run_config, run_seeds

    run_dir = Path(run_dir)
    run = load_run_config(run_dir)
    seed = run_seeds(run_dir, seed)[0]
    facts = _run_data_facts(run_dir)
    model = build_model(run, facts, load_text_encoder(run, facts))
    load_model_weights(run_dir / f"seed-{seed}" / "best.safetensors", model)
    return model.to(device).eval(), run


def _as_batches(model, data, *, split: str, run=None):
    """(inputs, lengths) numpy dicts of the rows to predict: a data path (read as training reads it) or
    arrays."""
    if isinstance(data, Mapping):
        return _check_arrays(model, data)
    from gsit.data import drop_unused_text, load_dataset, load_run_data

    if run is not None:
        loaded = load_run_data(dataclasses.replace(run.data, path=str(data)))
    else:
        loaded = drop_unused_text(load_dataset(data))
    if split not in loaded.splits:
        raise DataError(f"{data}: split {split!r} not in the data (splits: {sorted(loaded.splits)})")
    part = loaded.splits[split]
    part.fill_lengths()
    text = part.text_bert if part.text_kind == "bert" else part.text
    inputs = {"text": text, "audio": part.audio, "vision": part.vision}
    lengths = {"text": part.text_lengths, "audio": part.audio_lengths, "vision": part.vision_lengths}
    return inputs, lengths


def _check_arrays(model, arrays: Mapping[str, Any]):
    cfg = model.config
    extra = sorted(set(arrays) - set(MODALITIES) - {"lengths"})
    if extra:
        raise DataError(f"arrays: unknown keys {extra}; expected {list(MODALITIES)} and optional 'lengths'")
    inputs, full, n = {}, {}, None
    for m in cfg.modalities:
        if m not in arrays:
            raise DataError(f"arrays: missing modality {m!r} (the model reads {list(cfg.modalities)})")
        a = np.asarray(arrays[m])
        if a.ndim != 3:
            raise DataError(f"arrays[{m!r}]: expected 3 dimensions (N, T, D), got shape {a.shape}")
        bert = m == "text" and getattr(model, "text_encoder", None) is not None
        if bert:
            if a.shape[1] != 3 or a.dtype.kind not in "iuf":
                raise DataError(
                    f"arrays['text']: the model has a text encoder and reads MMSA text_bert "
                    f"rows (N, 3, L) of token ids / mask / segments, got shape {a.shape} "
                    f"dtype {a.dtype}"
                )
        else:
            if a.dtype.kind != "f":
                raise DataError(f"arrays[{m!r}]: expected float features, got dtype {a.dtype}")
            if a.shape[2] != cfg.input_dims[m]:
                raise DataError(
                    f"arrays[{m!r}]: feature width {a.shape[2]} != the model's input_dims[{m!r}] "
                    f"{cfg.input_dims[m]} (shape {a.shape})"
                )
            a = a.astype(np.float32, copy=False)
        if n is not None and a.shape[0] != n:
            raise DataError(f"arrays[{m!r}] has {a.shape[0]} rows but the other modalities have {n}")
        n = a.shape[0]
        inputs[m] = a
        full[m] = a.shape[2] if bert else a.shape[1]  # token rows (N, 3, L) are L long
    given = arrays.get("lengths") or {}
    lengths = {}
    for m in inputs:
        lens = np.asarray(given.get(m, np.full(n, full[m])), dtype=np.int64)
        if lens.shape != (n,):
            raise DataError(f"arrays['lengths'][{m!r}]: expected shape ({n},), got {lens.shape}")
        lengths[m] = lens
    return inputs, lengths


def predict(
    model_or_run_dir,
    data: str | Path | Mapping[str, Any],
    *,
    seed: int | None = None,
    split: str = "test",
    device: str = "cpu",
    batch_size: int = 64,
) -> np.ndarray:
    """Predictions of a model (or of a run directory's best checkpoint of ``seed``) for ``data``: a data path
    (rows of ``split``, read as training reads it) or arrays ``{"text": (N, L, Dt) features or (N, 3, L)
    token rows, "audio": (N, Ta, Da), "vision": (N, Tv, Dv), "lengths": {modality: (N,)} (optional)}``.
    Returns float32 (N,) for regression and (N, C) logits for classification, in row order."""
    import torch

    run = None
    if isinstance(model_or_run_dir, (str, Path)):
        model, run = load_run(model_or_run_dir, seed, device=device)
    else:
        if seed is not None:
            raise GsitError("seed selects a checkpoint of a run directory; pass a run directory, not a model")
        model = model_or_run_dir
    inputs, lengths = _as_batches(model, data, split=split, run=run)
    n = len(next(iter(inputs.values())))
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    outs = []
    try:
        with torch.no_grad():
            for s in range(0, n, batch_size):
                x = {
                    m: torch.from_numpy(np.ascontiguousarray(a[s : s + batch_size])).to(dev)
                    for m, a in inputs.items()
                }
                lens = {
                    m: torch.from_numpy(np.ascontiguousarray(a[s : s + batch_size])).to(dev)
                    for m, a in lengths.items()
                }
                outs.append(model(x, lens)["prediction"].float().cpu().numpy())
    finally:
        model.train(was_training)
    out_dim = int(model.config.output_dim)
    preds = np.concatenate(outs) if outs else np.zeros((0, out_dim), np.float32)
    return preds.reshape(-1) if out_dim == 1 else preds


# ----------------------------------------------------------------------------- export with a model card


def export(run_dir: str | Path, out: str | Path, *, seed: int | None = None) -> Path:
    """Write ``out/`` (must not exist): the best checkpoint of ``seed`` (default: the first) as a
    ``save_pretrained`` folder, the run's configuration, and a model card ``README.md`` with the data facts,
    test metrics (mean ± std over the run's seeds), seeds, command and versions."""
    from gsit.checkpoint import atomic_write_bytes, atomic_write_json
    from gsit.runs import run_seeds

    run_dir, out = Path(run_dir), Path(out)
    if out.exists():
        raise GsitError(f"--out {str(out)!r} already exists; export never overwrites (choose a new folder)")
    seeds = run_seeds(run_dir)
    model, run = load_run(run_dir, seed)
    chosen = seed if seed is not None else seeds[0]
    model.save_pretrained(out)
    atomic_write_json(out / "gsit_run_config.json", run.to_dict())
    card = model_card(run_dir, run, model, chosen)
    atomic_write_bytes(out / "README.md", card.encode())
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def model_card(run_dir: Path, run, model, seed: int) -> str:
    from gsit.formatting import format_metric

    results = _read_json(run_dir / "results.json") or {}
    facts = _read_json(run_dir / "data.json") or {}
    versions = _read_json(run_dir / "versions.json") or {}
    command = (run_dir / "command.txt").read_text().strip() if (run_dir / "command.txt").is_file() else "?"
    arch = type(model).__name__
    n_params = sum(p.numel() for p in model.parameters())
    lines = [
        f"# {arch} on {run.data.dataset}",
        "",
        f"A {arch} model trained with gsit {versions.get('gsit', '?')} (GsiT, ACL 2025 reference "
        f"implementation); this folder holds the best checkpoint (lowest validation loss) of seed "
        f"{seed}.",
        "",
        "```python",
        "import gsit",
        'model = gsit.from_pretrained("<this folder>")',
        'preds = gsit.predict(model, data="<data file>")',
        "```",
        "",
        "## Data",
        "",
    ]
    if facts:
        widths = {m: int(w) for m, w in model.config.input_dims.items()}
        text = (
            "MMSA text_bert token rows (N, 3, L) read by the included BERT-family encoder"
            if facts.get("text_kind") == "bert"
            else "precomputed features"
        )
        lines += [
            f"- source: `{facts.get('source')}`",
            f"- task: {facts.get('task')}"
            + (
                f" ({facts.get('num_classes')} classes: {facts.get('label_names')})"
                if facts.get("task") == "classification"
                else ""
            ),
            f"- inputs: text as {text}; feature widths {widths}; sequence lengths {facts.get('seq_lengths')}",
            f"- split sizes: {facts.get('splits')}",
        ]
    lines += ["", "## Test metrics", ""]
    if results.get("mean"):
        n = results.get("n_seeds", len(results.get("per_seed", [])))
        lines += [
            f"Mean ± population std over {n} seed(s) {results.get('seeds')}; Acc/F1 x100 with 2 "
            f"decimals, MAE/Corr/Loss with 3.",
            "",
            "| metric | mean ± std | this seed |",
            "|---|---|---|",
        ]
        mine = next((r["test"] for r in results.get("per_seed", []) if r.get("seed") == seed), {})
        for k, v in results["mean"].items():
            sd = results["std"][k]
            spread = f" ± {format_metric(k, sd, percent=True)}" if n > 1 else ""
            here = format_metric(k, mine[k], percent=True) if k in mine else ""
            lines.append(f"| {k} | {format_metric(k, v, percent=True)}{spread} | {here} |")
    else:
        lines.append("(no results.json in the run directory)")
    lines += [
        "",
        "## Training",
        "",
        f"- seeds: {results.get('seeds', '?')}; exported seed: {seed}",
        f"- parameters: {n_params:,}",
        "- command:",
        "",
        "```",
        command,
        "```",
        "",
        "- configuration: `gsit_run_config.json`",
        "",
        "## Versions",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in versions.items()] or ["(no versions.json)"]
    return "\n".join(lines) + "\n"
