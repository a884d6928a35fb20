"""``gsit robustness``: how a trained model degrades when modalities are missing.

For every seed of a run directory the chosen split is scored

* **intact**;
* with each modality and each pair **removed** under three policies:

  - ``zeroed``: the features are set to 0 (text given as token ids: every real token except ``[CLS]``
    and the last real token becomes ``[UNK]`` = id 100, i.e. MMSA's masking at rate 1);
  - ``mean``: every valid step holds the modality's training-split mean feature vector (mean over the
    valid steps of all training samples); padding stays 0.  Not defined for token ids (skipped);
  - ``graph``: the inputs are untouched but the modality is dropped from the model's graphs
    (:func:`dropped_from_graph`): every attention edge into and out of it is removed
    (``ModalGraph.without``), so no other modality can read it; a query block left with no key gets a zero
    attention output (its residual stream continues), and its pooled block in the head's input is zeroed.
    Defined for the graph models (gsit, vanilla); MulT rows are skipped;

* with MMSA's **random per-step missing** protocol at rates 0.1 ... 0.9 applied to the same modality sets
  and to all three together: each valid step is kept with probability ``1 - rate``
  (``uniform > rate``, numpy ``RandomState(seed)`` per modality as MMSA's ``generate_m``); masked feature
  steps become 0; masked text ids become ``[UNK]`` (100) with ``[CLS]`` and the last real token kept.

Outputs (new files only): ``robustness.csv`` (one row per condition, policy and rate: metrics as mean and
std over seeds), ``robustness.json`` (plus per-seed values) and ``robustness.png``: left, the metric against
the missing rate (0 = intact, 1 = removed/zeroed) with one line per masked modality set; right, the three
removal policies side by side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsit.analysis._common import (
    csv_text,
    lower_is_better,
    mean_std,
    metric_dataset,
    new_dir,
    require_matplotlib,
    run_config_from_dir,
    run_seeds,
    save_figure,
    write_json_new,
    write_text_new,
)
from gsit.distributed import Dist
from gsit.errors import GsitError
from gsit.evaluate import evaluate_split
from gsit.metrics import primary_metric_names
from gsit.models.gsit import GsiT
from gsit.models.vanilla import Vanilla
from gsit.runs import model_from_run_dir

MODALITIES = ("text", "audio", "vision")
REMOVAL_SETS: tuple[tuple[str, ...], ...] = tuple((m,) for m in MODALITIES) + tuple(
    itertools.combinations(MODALITIES, 2)
)
RANDOM_SETS = REMOVAL_SETS + (MODALITIES,)
POLICIES = ("zeroed", "mean", "graph")
DEFAULT_RATES = tuple(round(0.1 * i, 1) for i in range(1, 10))
UNK_TOKEN = 100


def set_name(mods: tuple[str, ...]) -> str:
    return "all" if set(mods) == set(MODALITIES) else "+".join(mods)


# ----------------------------------------------------------------------------- input policies


def _valid_steps(length: np.ndarray, t: int) -> np.ndarray:
    return np.arange(t)[None, :] < np.asarray(length)[:, None]  # (N, T)


def _text_field(split) -> str:
    return "text_bert" if split.text_bert is not None else "text"


def training_means(train) -> dict[str, np.ndarray]:
    """Per modality, the mean feature vector over the valid steps of every training sample (features only)."""
    train.fill_lengths()
    out = {}
    for m in MODALITIES:
        if m == "text" and train.text_bert is not None:
            continue
        x = getattr(train, m)
        valid = _valid_steps(getattr(train, f"{m}_lengths"), x.shape[1])
        n = max(int(valid.sum()), 1)
        out[m] = (x * valid[:, :, None]).sum(axis=(0, 1)) / n
    return out


def _mask_text_ids(text_bert: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """MMSA's text rule: masked real tokens -> [UNK]; [CLS] (position 0) and the last real token kept."""
    ids, mask = text_bert[:, 0], text_bert[:, 1]
    real = mask > 0
    keep = keep & real
    lengths = real.sum(axis=1)
    rows = np.arange(len(ids))
    keep[:, 0] = real[:, 0]
    keep[rows[lengths > 0], lengths[lengths > 0] - 1] = True
    out = text_bert.copy()
    out[:, 0] = np.where(keep | ~real, ids, UNK_TOKEN)
    return out


def masked_split(split, mods: tuple[str, ...], *, rate: float, seed: int = 0):
    """A copy of ``split`` with MMSA's random per-step missing at ``rate`` on ``mods`` (rate 1: all
    steps)."""
    split.fill_lengths()
    changes = {}
    for m in MODALITIES:
        if m not in mods:
            continue
        field = _text_field(split) if m == "text" else m
        x = getattr(split, field)
        t = x.shape[2] if field == "text_bert" else x.shape[1]
        valid = _valid_steps(getattr(split, f"{m}_lengths"), t)
        keep = (np.random.RandomState(seed).uniform(size=valid.shape) > rate) & valid
        if field == "text_bert":
            changes[field] = _mask_text_ids(x, keep)
        else:
            changes[field] = x * keep[:, :, None].astype(x.dtype)
    return dataclasses.replace(split, **changes)


def zeroed_split(split, mods: tuple[str, ...]):
    return masked_split(split, mods, rate=1.0)


def mean_split(split, mods: tuple[str, ...], means: dict[str, np.ndarray]):
    """A copy of ``split`` whose ``mods`` hold the training mean vector at every valid step; ``None`` when a
    modality has no mean (token ids)."""
    split.fill_lengths()
    changes = {}
    for m in mods:
        if m not in means:
            return None
        x = getattr(split, m)
        valid = _valid_steps(getattr(split, f"{m}_lengths"), x.shape[1])
        changes[m] = (valid[:, :, None] * means[m][None, None, :]).astype(x.dtype)
    return dataclasses.replace(split, **changes)


# ----------------------------------------------------------------------------- the graph policy


def supports_graph_drop(model) -> bool:
    return isinstance(model, (GsiT, Vanilla))


@contextlib.contextmanager
def dropped_from_graph(model, absent: tuple[str, ...]):
    """Temporarily drop ``absent`` modalities from a GsiT or Vanilla model's graphs (see module doc).

    Every call of the model inside the context passes ``graphs={name: graph.without(absent)}`` (the
    models' documented ``graphs`` argument, injected by a forward pre-hook, so callers such as
    ``predict_split`` need not know), and a forward pre-hook on ``head_hidden`` zeroes the absent
    modalities' blocks of the head's input; both hooks are removed on exit, also after an error."""
    mods = tuple(model.config.modalities)
    unknown = [m for m in absent if m not in mods]
    if unknown:
        raise GsitError(f"cannot drop {unknown}: the model's modalities are {list(mods)}")
    if not supports_graph_drop(model):
        raise GsitError(f"the graph policy needs a graph model (gsit, vanilla), not {type(model).__name__}")
    dropped = {name: g.without(tuple(absent)) for name, g in model.graphs.items()}
    width = model.head_hidden.in_features // len(mods)
    blocks = [mods.index(m) for m in absent]

    def with_graphs(module, args, kwargs):
        return args, {**kwargs, "graphs": dropped}

    def zero_blocks(module, args):
        (z,) = args
        z = z.clone()
        for b in blocks:
            z[:, b * width : (b + 1) * width] = 0
        return (z,)

    handles = [
        model.register_forward_pre_hook(with_graphs, with_kwargs=True),
        model.head_hidden.register_forward_pre_hook(zero_blocks),
    ]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()


# ----------------------------------------------------------------------------- the sweep


def _sweep(model, part, means, score, rates, mask_seed: int) -> list[dict[str, Any]]:
    """Every condition for one model: intact, removals under each policy, random missing per rate."""
    out = [{"condition": "none", "policy": "intact", "rate": 0.0, **score(part)}]
    for mods in REMOVAL_SETS:
        name = set_name(mods)
        out.append({"condition": name, "policy": "zeroed", "rate": 1.0, **score(zeroed_split(part, mods))})
        ms = mean_split(part, mods, means)
        if ms is not None:
            out.append({"condition": name, "policy": "mean", "rate": 1.0, **score(ms)})
        if supports_graph_drop(model):
            with dropped_from_graph(model, mods):
                out.append({"condition": name, "policy": "graph", "rate": 1.0, **score(part)})
    out.append({"condition": "all", "policy": "zeroed", "rate": 1.0, **score(zeroed_split(part, MODALITIES))})
    for mods in RANDOM_SETS:
        for r in rates:
            out.append(
                {
                    "condition": set_name(mods),
                    "policy": "random",
                    "rate": float(r),
                    **score(masked_split(part, mods, rate=float(r), seed=mask_seed)),
                }
            )
    return out


def score_seeds(
    run_dir: str | Path,
    sweep,
    *,
    data_path: str | None = None,
    split: str = "test",
    seeds: list[int] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Load every seed's best checkpoint of ``run_dir`` and call ``sweep(model, part, means, score)`` (-> a
    list of row dicts, each with the metrics of one condition); returns ``{"run", "data", "seeds",
    "per_seed"}`` with the seed added to every row.  Shared by ``robustness`` and ``--keep-one``."""
    run_dir = Path(run_dir)
    run, data = run_config_from_dir(run_dir, data_path)
    if split not in data.splits:
        raise GsitError(f"split {split!r} not in the data (splits: {sorted(data.splits)})")
    ctx = Dist(device=torch.device(device))
    means = training_means(data.splits["train"])
    part = data.splits[split]
    part.fill_lengths()
    seeds = seeds or run_seeds(run_dir)
    per_seed: list[dict[str, Any]] = []
    for s in seeds:
        _, model = model_from_run_dir(run_dir, data, seed=s, device=device)

        def score(sp, model=model):
            return evaluate_split(model, sp, run=run, dataset=run.data.dataset, task=data.task, ctx=ctx)

        per_seed += [{"seed": s, **r} for r in sweep(model, part, means, score)]
    return {"run": run, "data": data, "seeds": seeds, "per_seed": per_seed}


def aggregate(
    per_seed: list[dict[str, Any]], keys: tuple[str, ...]
) -> tuple[list[str], list[dict[str, Any]]]:
    """(metric names with Loss first, one row per distinct ``keys`` value in first-seen order with
    ``n_seeds`` and ``<metric>_mean`` / ``<metric>_std`` over seeds)."""
    metric_names = ["Loss"] + [k for k in per_seed[0] if k not in ("seed", *keys, "Loss")]
    rows = []
    for key in dict.fromkeys(tuple(r[k] for k in keys) for r in per_seed):
        group = [r for r in per_seed if tuple(r[k] for k in keys) == key]
        row = {**dict(zip(keys, key)), "n_seeds": len(group)}
        for k in metric_names:
            row[f"{k}_mean"], row[f"{k}_std"] = mean_std([g[k] for g in group])
        rows.append(row)
    return metric_names, rows


def robustness(
    run_dir: str | Path,
    *,
    data_path: str | None = None,
    split: str = "test",
    seeds: list[int] | None = None,
    rates=DEFAULT_RATES,
    mask_seed: int = 0,
    device: str = "cpu",
    metric: str | None = None,
) -> dict[str, Any]:
    """Score every condition for every seed of ``run_dir``; returns ``{"rows", "per_seed", "metric",
    ...}``."""

    def sweep(model, part, means, score):
        return _sweep(model, part, means, score, rates, mask_seed)

    scored = score_seeds(run_dir, sweep, data_path=data_path, split=split, seeds=seeds, device=device)
    run, per_seed = scored["run"], scored["per_seed"]
    metric_names, rows = aggregate(per_seed, ("condition", "policy", "rate"))
    default_metric = primary_metric_names(metric_dataset(run.data.dataset))[0]
    return {
        "run_dir": str(run_dir),
        "split": split,
        "dataset": run.data.dataset,
        "model": run.model_name,
        "seeds": scored["seeds"],
        "mask_seed": mask_seed,
        "metrics": metric_names,
        "metric": metric or default_metric,
        "rows": rows,
        "per_seed": per_seed,
    }


def lookup(
    result: dict[str, Any], condition: str, policy: str, rate: float | None = None, metric: str | None = None
) -> float:
    metric = metric or result["metric"]
    for r in result["rows"]:
        if (
            r["condition"] == condition
            and r["policy"] == policy
            and (rate is None or abs(r["rate"] - rate) < 1e-9)
        ):
            return r[f"{metric}_mean"]
    raise KeyError((condition, policy, rate))


def write_robustness(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    cols = ["condition", "policy", "rate", "n_seeds"] + [
        f"{k}_{s}" for k in result["metrics"] for s in ("mean", "std")
    ]
    paths = {
        "csv": write_text_new(
            out_dir / "robustness.csv", csv_text(cols, [[r[c] for c in cols] for r in result["rows"]])
        ),
        "json": write_json_new(out_dir / "robustness.json", result),
    }
    paths["png"] = plot_robustness(result, out_dir / "robustness.png")
    return paths


def plot_robustness(result: dict[str, Any], path: Path) -> Path:
    plt = require_matplotlib()
    metric = result["metric"]
    if f"{metric}_mean" not in result["rows"][0]:
        raise GsitError(f"unknown metric {metric!r}; available: {result['metrics']}")
    intact = lookup(result, "none", "intact")
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 4.8), gridspec_kw={"width_ratios": [1.3, 1]})
    for mods in RANDOM_SETS:
        name = set_name(mods)
        pts = [(0.0, intact)] + [
            (r["rate"], r[f"{metric}_mean"])
            for r in result["rows"]
            if r["condition"] == name and r["policy"] == "random"
        ]
        try:
            pts.append((1.0, lookup(result, name, "zeroed")))
        except KeyError:
            pass
        xs, ys = zip(*sorted(pts))
        ax.plot(xs, ys, marker="o", ms=3, label=name, lw=2.2 if name == "all" else 1.4)
    ax.set_xlabel("missing rate (random per-step masking; 1 = removed)")
    ax.set_ylabel(f"{metric} ({result['split']})")
    ax.set_title(f"{result['model']} on {result['dataset']}: random missing ({len(result['seeds'])} seed(s))")
    ax.grid(alpha=0.3)
    ax.legend(title="masked modalities", fontsize=8)
    conds = [set_name(m) for m in REMOVAL_SETS]
    width = 0.26
    for j, pol in enumerate(POLICIES):
        vals = []
        for c in conds:
            try:
                vals.append(lookup(result, c, pol))
            except KeyError:
                vals.append(np.nan)
        bx.bar(np.arange(len(conds)) + (j - 1) * width, vals, width, label=pol)
    bx.axhline(intact, color="k", ls="--", lw=1, label="intact")
    bx.set_xticks(np.arange(len(conds)), conds, rotation=30)
    bx.set_ylabel(metric)
    better = "lower" if lower_is_better(metric) else "higher"
    bx.set_title(f"removed modalities by policy ({better} is better)")
    bx.legend(fontsize=8)
    bx.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def run_robustness(
    run_dir,
    *,
    data_path=None,
    out=None,
    split="test",
    seeds=None,
    rates=DEFAULT_RATES,
    mask_seed: int = 0,
    device: str = "cpu",
    metric: str | None = None,
) -> dict[str, Any]:
    """The CLI's entry point: sweep, then write CSV/JSON/PNG into a new directory (default
    ``RUN_DIR/robustness-<timestamp>``)."""
    result = robustness(
        run_dir,
        data_path=data_path,
        split=split,
        seeds=seeds,
        rates=rates,
        mask_seed=mask_seed,
        device=device,
        metric=metric,
    )
    out_dir = new_dir(out, default_root=Path(run_dir), prefix="robustness")
    result["paths"] = {k: str(v) for k, v in write_robustness(result, out_dir).items()}
    return result
