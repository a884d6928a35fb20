"""``gsit report``: collect run directories into paper-style tables and training-curve plots.

Every directory under RUNS_DIR holding a run-level ``results.json`` (one with ``per_seed``) and a
``config.json`` is a run.  Runs are grouped by (model, dataset, variant) and their seeds pooled:

* the variant is the ``variant`` of a ``variant.json`` (written by ``gsit ablate``), else the settings in
  which the run's config differs from the preset of its model and dataset (seeds, data path and text
  encoder ignored), e.g. ``model.d_model=16; train.max_epochs=5``, or ``default``;
* a metric is reported as mean ± std (population std, as ``results.json``) over the pooled seeds, with the
  numbers of seeds and runs; columns are each dataset's primary metrics; ``percent`` shows them in the
  papers' convention (:mod:`gsit.formatting`: Acc/F1 x100 with 2 decimals, MAE/Corr with 3).

Writes (new files only): ``report.md`` (one table per dataset, best mean per column in bold), ``report.csv``
(all groups, full-precision fractions), ``<dataset>.csv`` (MMSA's ``results/normal/<dataset>.csv`` layout:
``Model``, then ``"(mean, std)"`` per metric, Acc/F1 x100), ``report.tex`` (one booktabs table per dataset:
a right-aligned mean and ``±std`` column pair per metric, so decimal points line up; the best mean per
column in bold, lower is better for MAE and Loss; a one-seed row shows no spread) and
``curves-<model>-<dataset>-<variant>.png`` per group: training loss and validation loss per epoch from every
seed's ``epochs.csv``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from gsit.analysis._common import (
    csv_text,
    latex_escape,
    lower_is_better,
    markdown_table,
    mean_std,
    metric_dataset,
    new_dir,
    require_matplotlib,
    save_figure,
    write_text_new,
)
from gsit.config import canonical_train_keys, load_config
from gsit.errors import GsitError
from gsit.formatting import format_metric, mmsa_pair
from gsit.metrics import primary_metric_names

_IGNORED = {"train.seeds", "data.path", "data.text_encoder", "data.dataset"}


def _flat(prefix: str, d: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}.{k}": (list(v) if isinstance(v, tuple) else v) for k, v in d.items()}


def variant_of(run_dir: Path, config: dict[str, Any]) -> str:
    vfile = run_dir / "variant.json"
    if vfile.is_file():
        return str(json.loads(vfile.read_text())["variant"])
    try:
        preset = load_config(config["model_name"], config["data"]["dataset"])
    except GsitError:
        return "unknown"
    diffs = []
    model_preset = dict(preset.model)
    for k, v in sorted(config.get("model", {}).items()):
        if model_preset.get(k, object()) != v:
            diffs.append(f"model.{k}={json.dumps(v)}")
    for section, ref in (
        ("train", dataclasses.asdict(preset.train)),
        ("data", dataclasses.asdict(preset.data)),
    ):
        ref = _flat(section, ref)
        values = config.get(section, {})
        values = canonical_train_keys(values) if section == "train" else values
        for k, v in sorted(_flat(section, values).items()):
            if k not in _IGNORED and ref.get(k) != v:
                diffs.append(f"{k}={json.dumps(v)}")
    return "; ".join(diffs) or "default"


def collect_runs(runs_dir: str | Path) -> list[dict[str, Any]]:
    root = Path(runs_dir)
    if not root.is_dir():
        raise GsitError(f"{str(root)!r} is not a directory")
    runs = []
    for res in sorted(root.rglob("results.json")):
        run_dir = res.parent
        cfg = run_dir / "config.json"
        if not cfg.is_file():
            continue
        try:
            results = json.loads(res.read_text())
            config = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if "per_seed" not in results:
            continue
        runs.append(
            {
                "run_dir": run_dir,
                "model": results.get("model", config.get("model_name")),
                "dataset": results.get("dataset", config["data"]["dataset"]),
                "variant": variant_of(run_dir, config),
                "results": results,
            }
        )
    return runs


def group_runs(runs: list[dict[str, Any]]) -> OrderedDict[tuple[str, str, str], dict[str, Any]]:
    groups: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()
    for r in runs:
        key = (r["model"], r["dataset"], r["variant"])
        g = groups.setdefault(key, {"runs": [], "per_seed": []})
        g["runs"].append(r["run_dir"])
        for s in r["results"]["per_seed"]:
            g["per_seed"].append({**s, "run_dir": r["run_dir"]})
    return groups


def summarize_groups(groups) -> list[dict[str, Any]]:
    rows = []
    for (model, dataset, variant), g in groups.items():
        try:
            metrics = primary_metric_names(metric_dataset(dataset))
        except (GsitError, KeyError):
            metrics = sorted({k for s in g["per_seed"] for k in s.get("test", {})})
        row = {
            "model": model,
            "dataset": dataset,
            "variant": variant,
            "n_runs": len(g["runs"]),
            "n_seeds": len(g["per_seed"]),
            "metrics": metrics,
            "mean": {},
            "std": {},
        }
        for m in metrics:
            row["mean"][m], row["std"][m] = mean_std([s["test"].get(m) for s in g["per_seed"] if "test" in s])
        rows.append(row)
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_")[:80] or "default"


def read_epochs(seed_dir: Path) -> dict[str, list[float]]:
    path = seed_dir / "epochs.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    out: dict[str, list[float]] = {"epoch": [], "train_loss": [], "valid_loss": []}
    for r in rows:
        out["epoch"].append(int(r["epoch"]))
        out["train_loss"].append(float(r["train_loss"]))
        out["valid_loss"].append(float(r.get("valid_Loss", "nan") or "nan"))
    return out


def plot_curves(key: tuple[str, str, str], group: dict[str, Any], path: Path) -> Path | None:
    plt = require_matplotlib()
    curves = []
    for s in group["per_seed"]:
        ep = read_epochs(Path(s["run_dir"]) / f"seed-{s['seed']}")
        if ep:
            curves.append((f"{Path(s['run_dir']).name}/seed-{s['seed']}", ep, s.get("best_epoch")))
    if not curves:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=False)
    for i, (label, ep, best) in enumerate(curves):
        color = f"C{i % 10}"
        axes[0].plot(ep["epoch"], ep["train_loss"], color=color, label=label)
        axes[1].plot(ep["epoch"], ep["valid_loss"], color=color, label=label)
        if best:
            axes[1].axvline(best, color=color, ls=":", lw=0.8)
    axes[0].set_title("training loss")
    axes[1].set_title("validation loss (dotted: selected epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("loss")
    axes[1].legend(fontsize=7)
    model, dataset, variant = key
    fig.suptitle(f"{model} on {dataset} ({variant})", fontsize=10)
    fig.tight_layout()
    out = save_figure(fig, path)
    plt.close(fig)
    return out


def _shown(metric: str, value: float | None, percent: bool) -> str:
    return format_metric(metric, value, percent=percent)


def best_rows(part: list[dict[str, Any]], metrics: list[str], percent: bool) -> dict[str, set[int]]:
    """Per metric, the rows whose mean is best as shown (ties at the shown precision all count); higher is
    better except for MAE and Loss."""
    best: dict[str, set[int]] = {}
    for m in metrics:
        vals = [(i, r["mean"].get(m)) for i, r in enumerate(part)]
        vals = [(i, float(_shown(m, v, percent))) for i, v in vals if _shown(m, v, percent) != "n/a"]
        if not vals:
            best[m] = set()
            continue
        target = (min if lower_is_better(m) else max)(v for _, v in vals)
        best[m] = {i for i, v in vals if v == target}
    return best


def _md_cell(m: str, r: dict[str, Any], percent: bool, bold: bool) -> str:
    mean = _shown(m, r["mean"][m], percent)
    if bold and mean != "n/a":
        mean = f"**{mean}**"
    if r["n_seeds"] > 1 and mean != "n/a":
        mean += f" ± {_shown(m, r['std'][m], percent)}"
    return mean


def latex_results_table(
    part: list[dict[str, Any]], metrics: list[str], *, percent: bool, best: dict[str, set[int]], caption: str
) -> str:
    """A booktabs table with two right-aligned columns per metric (mean, then ``±std``): with a fixed number
    of decimals per metric the decimal points line up; the best mean of each column is bold; a one-seed row
    has no ``±`` cell."""
    cols = "ll" + "r@{\\,}r" * len(metrics) + "r"
    arrow = {True: "$\\downarrow$", False: "$\\uparrow$"}
    head = (
        ["Model", "Variant"]
        + [rf"\multicolumn{{2}}{{c}}{{{latex_escape(m)} {arrow[lower_is_better(m)]}}}" for m in metrics]
        + ["n"]
    )
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(head) + r" \\",
        r"\midrule",
    ]
    for i, r in enumerate(part):
        cells = [latex_escape(str(r["model"])), latex_escape(str(r["variant"]))]
        for m in metrics:
            mean = _shown(m, r["mean"][m], percent)
            cells.append(rf"\textbf{{{mean}}}" if i in best[m] and mean != "n/a" else mean)
            spread = r["n_seeds"] > 1 and mean != "n/a"
            cells.append(rf"$\pm${_shown(m, r['std'][m], percent)}" if spread else "")
        cells.append(f"{r['n_seeds']} ({r['n_runs']})")
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{caption}}}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def report(
    runs_dir: str | Path, *, out: str | Path | None = None, curves: bool = True, percent: bool = False
) -> dict[str, Any]:
    runs = collect_runs(runs_dir)
    if not runs:
        raise GsitError(f"no run directories (config.json + results.json) under {str(runs_dir)!r}")
    groups = group_runs(runs)
    rows = summarize_groups(groups)
    out_dir = new_dir(out, default_root=Path(runs_dir), prefix="report")
    all_metrics = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
    header = ["model", "dataset", "variant", "n_runs", "n_seeds"] + [
        f"{m}_{s}" for m in all_metrics for s in ("mean", "std")
    ]
    body = [
        [r["model"], r["dataset"], r["variant"], r["n_runs"], r["n_seeds"]]
        + [r[s].get(m, "") for m in all_metrics for s in ("mean", "std")]
        for r in rows
    ]
    write_text_new(out_dir / "report.csv", csv_text(header, body))
    units = "; Acc/F1 in % (2 decimals), MAE/Corr 3 decimals" if percent else ""
    md = [
        f"# Results under {runs_dir}\n",
        f"test split; mean ± std over seeds (one seed: no spread); best per column in bold; "
        f"n = seeds (runs){units}\n",
    ]
    tex = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        part = [r for r in rows if r["dataset"] == dataset]
        metrics = part[0]["metrics"]
        best = best_rows(part, metrics, percent)
        h = ["Model", "Variant"] + metrics + ["n"]
        b = [
            [r["model"], r["variant"]]
            + [_md_cell(m, r, percent, i in best[m]) for m in metrics]
            + [f"{r['n_seeds']} ({r['n_runs']})"]
            for i, r in enumerate(part)
        ]
        md.append(f"\n## {dataset}\n\n" + markdown_table(h, b))
        tex.append(
            latex_results_table(
                part,
                metrics,
                percent=percent,
                best=best,
                caption=latex_escape(f"{dataset}: test metrics, mean ± std over seeds{units}"),
            )
        )
    write_text_new(out_dir / "report.md", "".join(md))
    write_text_new(out_dir / "report.tex", "\n".join(tex))
    for dataset in dict.fromkeys(r["dataset"] for r in rows):  # MMSA's results/normal/<dataset>.csv layout
        part = [r for r in rows if r["dataset"] == dataset]
        metrics = part[0]["metrics"]
        body = [
            [
                r["model"],
                r["variant"],
                *[mmsa_pair(m, r["mean"][m], r["std"][m], r["n_seeds"]) for m in metrics],
                r["n_seeds"],
            ]
            for r in part
        ]
        write_text_new(
            out_dir / f"{_slug(dataset)}.csv", csv_text(["Model", "Variant", *metrics, "Seeds"], body)
        )
    pngs = []
    if curves:
        for key, g in groups.items():
            p = plot_curves(key, g, out_dir / f"curves-{_slug('-'.join(key))}.png")
            if p is not None:
                pngs.append(str(p))
    return {"out": str(out_dir), "rows": rows, "pngs": pngs}
