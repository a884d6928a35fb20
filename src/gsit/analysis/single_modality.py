"""``gsit robustness RUN_DIR --keep-one``: the single-modality sanity check of a trained run.

For every seed of the run the chosen split is scored with the full input, then with all modalities but one
removed -- for each kept modality (text only, audio only, vision only) and with none kept -- under the
removal policies of :mod:`gsit.analysis.robustness` (``zeroed``, ``mean``, ``graph``; ``mean`` is skipped
for token-id text, ``graph`` for MulT).  Every row carries the metrics as mean and std over seeds and, per
metric, the difference of its mean from the full model's (``<metric>_delta``).  The "none kept" rows show
what the model predicts from no information at all (a constant under ``zeroed`` and ``graph``), the floor
a single-modality row is to be read against.

It shows how much of the full model's score each modality carries *alone, in the trained model*: on a task
whose label needs two modalities jointly the single-modality rows should collapse to the floor.  It does
not show what a model trained on one modality would reach (that is a training-time control, e.g. the
``text_only`` variant of ``gsit ablate``), and a collapse under ``zeroed`` may also come from inputs far off
the training distribution -- compare the ``mean`` and ``graph`` rows, which stay closer to it.

Outputs (new files only): ``single_modality.csv``, ``single_modality.md`` (the primary metrics), and
``single_modality.json`` (plus per-seed values, the command line and package versions).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from gsit.analysis._common import (
    csv_text,
    fmt_mean_std,
    markdown_table,
    metric_dataset,
    new_dir,
    write_json_new,
    write_text_new,
)
from gsit.analysis.robustness import (
    MODALITIES,
    aggregate,
    dropped_from_graph,
    mean_split,
    score_seeds,
    supports_graph_drop,
    zeroed_split,
)
from gsit.metrics import primary_metric_names
from gsit.models.registry import model_config_class
from gsit.runs import versions

KEPT = MODALITIES + ("none",)  # text, audio, vision, then nothing kept


def _default(model_name: str, key: str):
    """The default of ``model.<key>`` for ``model_name`` (None if the model has no such key)."""
    fields = {f.name: f for f in dataclasses.fields(model_config_class(model_name))}
    return fields[key].default if key in fields else None


def _cell(r: dict[str, Any], m: str) -> str:
    if math.isnan(r[f"{m}_mean"]):
        return "n/a"
    return fmt_mean_std(r[f"{m}_mean"], r[f"{m}_std"]) + f" ({r[f'{m}_delta']:+.4f})"


def kept_label(kept: str) -> str:
    return "full" if kept == "all" else ("none kept" if kept == "none" else f"{kept} only")


def keep_one_sweep(model, part, means, score) -> list[dict[str, Any]]:
    """The full input, then every kept modality (and none) under each removal policy."""
    rows = [{"kept": "all", "policy": "intact", **score(part)}]
    for kept in KEPT:
        removed = tuple(m for m in MODALITIES if m != kept)
        rows.append({"kept": kept, "policy": "zeroed", **score(zeroed_split(part, removed))})
        ms = mean_split(part, removed, means)
        if ms is not None:
            rows.append({"kept": kept, "policy": "mean", **score(ms)})
        if supports_graph_drop(model):
            with dropped_from_graph(model, removed):
                rows.append({"kept": kept, "policy": "graph", **score(part)})
    return rows


def single_modality(
    run_dir: str | Path,
    *,
    data_path: str | None = None,
    split: str = "test",
    seeds: list[int] | None = None,
    device: str = "cpu",
    command: str = "",
) -> dict[str, Any]:
    """Score the full input and each single kept modality for every seed of ``run_dir``."""
    scored = score_seeds(
        run_dir, keep_one_sweep, data_path=data_path, split=split, seeds=seeds, device=device
    )
    run, per_seed = scored["run"], scored["per_seed"]
    metric_names, rows = aggregate(per_seed, ("kept", "policy"))
    full = rows[0]
    for r in rows:
        r["label"] = kept_label(r["kept"])
        for k in metric_names:
            r[f"{k}_delta"] = round(r[f"{k}_mean"] - full[f"{k}_mean"], 6)
    return {
        "run_dir": str(run_dir),
        "split": split,
        "dataset": run.data.dataset,
        "data_source": scored["data"].source,
        "model": run.model_name,
        "structure": run.model.get("structure", _default(run.model_name, "structure")),
        "seeds": scored["seeds"],
        "metrics": metric_names,
        "primary_metrics": primary_metric_names(metric_dataset(run.data.dataset)),
        "rows": rows,
        "per_seed": per_seed,
        "command": command,
        "versions": versions(),
    }


def lookup(result: dict[str, Any], kept: str, policy: str, metric: str) -> float:
    for r in result["rows"]:
        if r["kept"] == kept and r["policy"] == policy:
            return r[f"{metric}_mean"]
    raise KeyError((kept, policy))


def write_single_modality(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    metrics = result["metrics"]
    cols = ["label", "kept", "policy", "n_seeds"] + [
        f"{k}_{s}" for k in metrics for s in ("mean", "std", "delta")
    ]
    shown = [m for m in result["primary_metrics"] if m in metrics] or metrics
    md_rows = [[r["label"], r["policy"]] + [_cell(r, m) for m in shown] for r in result["rows"]]
    md = (
        f"Single-modality check of {result['model']} ({result['structure']}) on {result['dataset']} "
        f"({result['split']} split; mean ± std over seeds {result['seeds']}; in brackets: difference from "
        f"the full model)\n\nData: {result['data_source']}\n\nCommand: `{result['command']}`\n\n"
        + markdown_table(["Input", "Policy"] + shown, md_rows)
    )
    return {
        "csv": write_text_new(
            out_dir / "single_modality.csv", csv_text(cols, [[r[c] for c in cols] for r in result["rows"]])
        ),
        "md": write_text_new(out_dir / "single_modality.md", md),
        "json": write_json_new(out_dir / "single_modality.json", result),
    }


def run_single_modality(
    run_dir,
    *,
    data_path=None,
    out=None,
    split="test",
    seeds=None,
    device: str = "cpu",
    command: str = "",
) -> dict[str, Any]:
    """The CLI's entry point: score, then write CSV/MD/JSON into a new directory (default
    ``RUN_DIR/single-modality-<timestamp>``); ``command`` is recorded in the outputs."""
    result = single_modality(
        run_dir, data_path=data_path, split=split, seeds=seeds, device=device, command=command
    )
    out_dir = new_dir(out, default_root=Path(run_dir), prefix="single-modality")
    result["paths"] = {k: str(v) for k, v in write_single_modality(result, out_dir).items()}
    return result
