"""``gsit weight-stats RUN_DIR [RUN_DIR ...]``: paper Table 5 / Figure 7 for trained GsiT and MulT runs.

For every run directory and seed (best checkpoint): the weight statistics per scope
(:func:`gsit.analysis.weight_stats.weight_stats`), the same for the model freshly initialised as
``gsit train`` initialises it (``set_seed(seed)`` then ``build_model``: what training moved), and the
attention-probability statistics per encoder on the first ``samples`` rows of a split (default: valid).
Writes into a NEW output directory: ``weight_stats.csv`` (long format, one row per column x kind x scope,
plus the paper's Table 5 rows as ``kind=paper_table5``), ``weight_stats.json`` (the same with the
definitions, tensor lists, command and versions), ``weight_stats.md`` (the side-by-side tables that are
also printed) and two PNGs (``weight_hist.png``: weight histograms per scope, trained vs init;
``attention_hist.png``: histograms of log10 attention probability per scope).

It does not train, does not compare runs statistically (one column per seed, no tests), and does not
know which dataset the paper's numbers belong to beyond the label "MOSI".
"""

from __future__ import annotations

import random
import shlex
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gsit.analysis._common import (
    csv_text,
    markdown_table,
    new_dir,
    read_data,
    require_matplotlib,
    save_figure,
    write_json_new,
    write_text_new,
)
from gsit.analysis.weight_stats import (
    FUSION_SCOPES,
    PAPER_TABLE5,
    STATS,
    TENSOR_CHOICES,
    attention_stats,
    model_kind,
    weight_stats,
)
from gsit.build import build_model, load_text_encoder
from gsit.data.batch import SplitDataset
from gsit.errors import GsitError
from gsit.models.gsit import GsiT
from gsit.models.mult import MulT
from gsit.models.registry import model_class
from gsit.runs import load_run_config, model_from_run_dir, run_seeds, versions
from gsit.train import set_seed

WEIGHT_ROWS = ("cross_forward", "cross_backward", "self", "overall", "fusion_pooled", "front_end", "head")
DEFINITIONS = {
    "variance": "population variance m2 (ddof 0) = numpy.var",
    "skewness": "m3 / m2**1.5 = scipy.stats.skew(x, bias=True)",
    "kurtosis": "m4 / m2**2 - 3 (Fisher, excess) = scipy.stats.kurtosis(x, fisher=True, bias=True)",
    "overall": "arithmetic mean of the cross_forward, cross_backward and self rows (the paper's GsiT "
    "overall row equals this mean of its scope rows in all four statistics)",
    "fusion_pooled": "statistics of the three scopes' values pooled",
    "scopes": "GsiT: fusion.forward_encoder / backward_encoder / self_encoder; MulT: cross encoders q->k "
    "whose edge is in GsiT's forward cycle (text->vision, vision->audio, audio->text) = cross_forward, the "
    "other three = cross_backward, mem encoders = self",
    "tensors": "matrices: parameters with >= 2 dims (attention in/out projections, FFN weights, convs; no "
    "biases or LayerNorm); all: every parameter",
    "attention allowed": "probabilities at entries the model's own mask allows (GsiT graph blocks, padding "
    "included unless padding_aware; MulT causal mask), every head and depth call",
    "attention valid": "allowed entries whose query and key are both real tokens (not padding)",
}


def _fmt(row: dict[str, float] | tuple) -> str:
    vals = [row[s] for s in STATS] if isinstance(row, dict) else list(row)
    return " / ".join("n/a" if v is None or not np.isfinite(v) else f"{v:.4f}" for v in vals)


def _check_runs(run_dirs: list[str | Path], data_path) -> list[Any]:
    """Every run directory's config, checked before any output is written."""
    if not run_dirs:
        raise GsitError("weight-stats needs at least one run directory")
    runs = []
    for d in run_dirs:
        run = load_run_config(Path(d), data_path)  # ConfigError: not a run directory
        cls = model_class(run.model_name)
        if not issubclass(cls, (GsiT, MulT)):
            raise GsitError(
                f"{str(d)!r}: model {run.model_name!r} has none of the paper's scopes (cross forward, cross "
                f"backward, self); weight-stats supports gsit, mult and mult_dagger runs"
            )
        run_seeds(Path(d))  # ConfigError: no best checkpoint
        runs.append(run)
    return runs


def _read_text(path: Path) -> str:
    return path.read_text().strip() if path.is_file() else ""


def _init_model(run, data, seed: int):
    """The model as ``gsit train`` creates it before its first step (same seeding and calls); the global
    random states are restored afterwards."""
    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    try:
        set_seed(seed)
        return build_model(run, data, load_text_encoder(run, data)).eval()
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])


def collect(
    run_dirs: list[str | Path],
    *,
    data_path: str | None = None,
    seeds: list[int] | None = None,
    tensors: str = "matrices",
    split: str = "valid",
    samples: int = 32,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """One column per (run directory, seed): weights, init weights and attention statistics."""
    if tensors not in TENSOR_CHOICES:
        raise GsitError(f"--tensors {tensors!r}: expected one of {list(TENSOR_CHOICES)}")
    if samples < 1:
        raise GsitError(f"--samples {samples}: must be at least 1")
    runs = _check_runs(run_dirs, data_path)
    columns = []
    for run_dir, run in zip(run_dirs, runs):
        data = read_data(run)
        if split not in data.splits:
            raise GsitError(
                f"{str(run_dir)!r}: split {split!r} not in the data (splits: {sorted(data.splits)})"
            )
        part = data.splits[split]
        n = min(samples, len(part))
        batch = SplitDataset(part).__getitems__(list(range(n))).to(device)
        for seed in run_seeds(Path(run_dir)) if seeds is None else seeds:
            run_seeds(Path(run_dir), seed)  # ConfigError naming the run and its seeds
            _, model = model_from_run_dir(Path(run_dir), data, seed=seed, device=device)
            kind = model_kind(model)
            columns.append(
                {
                    "run_dir": str(run_dir),
                    "model": run.model_name,
                    "kind": kind,
                    "dataset": run.data.dataset,
                    "data_source": getattr(data, "source", ""),
                    "seed": seed,
                    "model_config": run.model,
                    "train_command": _read_text(Path(run_dir) / "command.txt"),
                    "weights": weight_stats(model, tensors, keep_values=True),
                    "init_weights": weight_stats(_init_model(run, data, seed), tensors, keep_values=True),
                    "attention": attention_stats(model, batch.inputs, batch.lengths),
                    "batch": {"split": split, "rows": n, "ids": [str(i) for i in part.ids[:n]]},
                }
            )
    labels = [f"{c['model']} s{c['seed']}" for c in columns]
    for c, label in zip(columns, labels):
        c["label"] = label if labels.count(label) == 1 else f"{label} ({Path(c['run_dir']).name})"
    return columns


# ----------------------------------------------------------------------------- tables
def csv_rows(columns: list[dict[str, Any]]) -> list[list[Any]]:
    rows = []

    def add(c, kind, scope, st):
        rows.append(
            [c["label"], c["run_dir"], c["model"], c["dataset"], c["seed"], kind, scope, st["n"]]
            + [st[s] for s in STATS]
        )

    for c in columns:
        for kind in ("weights", "init_weights"):
            for scope, st in c[kind]["rows"].items():
                add(c, kind, scope, st)
        att = c["attention"]
        for pop in ("allowed", "valid"):
            for scope, row in att["scopes"].items():
                add(c, f"attention_{pop}", scope, row[pop])
            for name, row in att["encoders"].items():
                if name not in att["scopes"]:  # MulT: one row per cross / mem encoder
                    add(c, f"attention_{pop}", name, row[pop])
    for model, label in (("gsit", "paper GsiT (MOSI)"), ("mult", "paper MulT (MOSI)")):
        for scope, vals in PAPER_TABLE5[model].items():
            rows.append([label, "", model, "mosi", "", "paper_table5", scope, ""] + list(vals))
    return rows


CSV_HEADER = ["column", "run_dir", "model", "dataset", "seed", "kind", "scope", "n", *STATS]


def tables_markdown(columns: list[dict[str, Any]], tensors: str) -> str:
    labels = [c["label"] for c in columns]
    head = ["scope"] + labels + ["paper GsiT (MOSI)", "paper MulT (MOSI)"]
    rows = []
    for scope in WEIGHT_ROWS:
        cells = [_fmt(c["weights"]["rows"][scope]) if scope in c["weights"]["rows"] else "" for c in columns]
        paper = [_fmt(PAPER_TABLE5[m][scope]) if scope in PAPER_TABLE5[m] else "" for m in ("gsit", "mult")]
        rows.append([scope] + cells + paper)
    out = [
        f"Weights (tensors={tensors}): mean / variance / skewness / kurtosis (Fisher)\n",
        markdown_table(head, rows),
        "\nThe same models at initialisation (set_seed(seed) + build_model, as gsit train starts)\n",
        markdown_table(
            ["scope"] + labels,
            [[s] + [_fmt(c["init_weights"]["rows"][s]) for c in columns] for s in WEIGHT_ROWS[:5]],
        ),
    ]
    for pop in ("allowed", "valid"):
        att_rows = [[s] + [_fmt(c["attention"]["scopes"][s][pop]) for c in columns] for s in FUSION_SCOPES]
        rows_of = columns[0]["batch"] if columns else {"rows": 0, "split": ""}
        out += [
            f"\nAttention probabilities ({pop} entries; first {rows_of['rows']} rows of the "
            f"{rows_of['split']} split): mean / variance / skewness / kurtosis\n",
            markdown_table(["scope"] + labels, att_rows),
        ]
    return "".join(out)


# ----------------------------------------------------------------------------- plots
def plot_weights(columns: list[dict[str, Any]], path: Path) -> Path:
    plt = require_matplotlib()
    scopes = (*FUSION_SCOPES, "fusion_pooled")
    fig, axes = plt.subplots(1, len(scopes), figsize=(4.4 * len(scopes), 3.8), squeeze=False)
    pooled = {
        id(c): {
            k: np.concatenate([c[k]["values"][s] for s in FUSION_SCOPES]) for k in ("weights", "init_weights")
        }
        for c in columns
    }
    every = np.concatenate([v for c in columns for v in pooled[id(c)].values()])
    lim = float(np.quantile(np.abs(every), 0.999)) if every.size else 1.0
    bins = np.linspace(-lim, lim, 121)
    for j, scope in enumerate(scopes):
        ax = axes[0, j]
        for i, c in enumerate(columns):
            color = f"C{i}"
            for kind, style, suffix in (("weights", "-", ""), ("init_weights", ":", " init")):
                v = pooled[id(c)][kind] if scope == "fusion_pooled" else c[kind]["values"][scope]
                dens, edges = np.histogram(v, bins=bins, density=True)
                ax.step(
                    edges[:-1], dens, where="post", color=color, ls=style, lw=1.1, label=c["label"] + suffix
                )
        ax.set_title(scope, fontsize=10)
        ax.set_xlabel("weight value")
    axes[0, 0].set_ylabel("density")
    axes[0, -1].legend(fontsize=7)
    fig.suptitle(
        "Weight distributions per scope (solid: trained best checkpoint; dotted: initialisation)", fontsize=10
    )
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def plot_attention(columns: list[dict[str, Any]], path: Path) -> Path:
    plt = require_matplotlib()
    fig, axes = plt.subplots(1, len(FUSION_SCOPES), figsize=(4.6 * len(FUSION_SCOPES), 3.8), squeeze=False)
    for j, scope in enumerate(FUSION_SCOPES):
        ax = axes[0, j]
        for i, c in enumerate(columns):
            att = c["attention"]
            lo, hi = att["log10_range"]
            edges = np.linspace(lo, hi, att["bins"] + 1)
            for pop, style in (("allowed", "-"), ("valid", "--")):
                counts = np.asarray(att["scopes"][scope]["hist"][pop], dtype=np.float64)
                if counts.sum() == 0:
                    continue
                ax.step(
                    edges[:-1],
                    counts / counts.sum(),
                    where="post",
                    color=f"C{i}",
                    ls=style,
                    lw=1.1,
                    label=f"{c['label']} {pop}",
                )
        ax.set_yscale("log")
        ax.set_title(f"attention: {scope}", fontsize=10)
        ax.set_xlabel("log10 probability (first bin: all values <= 1e-8)")
    axes[0, 0].set_ylabel("fraction of entries")
    axes[0, -1].legend(fontsize=7)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


# ----------------------------------------------------------------------------- the command
def run_weight_stats(
    run_dirs: list[str | Path],
    *,
    out: str | Path | None = None,
    data_path: str | None = None,
    seeds: list[int] | None = None,
    tensors: str = "matrices",
    split: str = "valid",
    samples: int = 32,
    device: str = "cpu",
    plots: bool = True,
    command: list[str] | None = None,
) -> dict[str, Any]:
    """Collect every column, then write the files into a new directory ``out`` (default
    ``runs/weight-stats-<time>``); returns ``{"out", "paths", "markdown", "columns"}``."""
    if plots:
        require_matplotlib()
    if out is not None and Path(out).exists() and (not Path(out).is_dir() or any(Path(out).iterdir())):
        new_dir(out, default_root=Path("runs"), prefix="weight-stats")  # the refusal, before any work
    columns = collect(
        run_dirs,
        data_path=data_path,
        seeds=seeds,
        tensors=tensors,
        split=split,
        samples=samples,
        device=device,
    )
    out_dir = new_dir(out, default_root=Path("runs"), prefix="weight-stats")
    md = tables_markdown(columns, tensors)
    paths = {
        "csv": write_text_new(out_dir / "weight_stats.csv", csv_text(CSV_HEADER, csv_rows(columns))),
        "md": write_text_new(out_dir / "weight_stats.md", md),
    }
    if plots:
        paths["weight_png"] = plot_weights(columns, out_dir / "weight_hist.png")
        paths["attention_png"] = plot_attention(columns, out_dir / "attention_hist.png")
    for c in columns:  # the JSON keeps statistics, not raw values
        for k in ("weights", "init_weights"):
            c[k].pop("values", None)
    header = {
        "what": "weight statistics per scope (paper Table 5 / Figure 7) and attention-probability statistics",
        "command": shlex.join(command or sys.argv),
        "versions": versions(),
        "tensors": tensors,
        "definitions": DEFINITIONS,
        "paper_table5_mosi": PAPER_TABLE5,
    }
    paths["json"] = write_json_new(out_dir / "weight_stats.json", {**header, "columns": columns})
    return {
        "out": str(out_dir),
        "paths": {k: str(v) for k, v in paths.items()},
        "markdown": md,
        "columns": columns,
    }
