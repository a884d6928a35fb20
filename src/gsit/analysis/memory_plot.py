"""Log-log slopes and the PNG of a memory-scaling CSV (from ``gsit memory-scaling``).  Reads result rows only.

    python -m gsit.analysis.memory_plot benchmarks/results/memory_scaling_cpu.csv [--out FILE.png]   # redraw

:func:`slope_rows` fits, per (scope, backend), the least-squares slope of log(peak memory) and of log(time)
against log(N) (slope ~1: linear in length, ~2: quadratic).  :func:`plot` draws 2 x 2 log-log panels:
(attention, fusion block) x (peak memory, median time) against N, one line per backend, its slopes in
the legend, a cross where a backend first ran out of memory.  Only ``ok`` rows are drawn or fitted.
matplotlib is imported when :func:`plot` runs.  What it does not do: measure (that is
:mod:`gsit.analysis.memory_scaling`).
"""

from __future__ import annotations

import argparse
import csv
from fractions import Fraction
from pathlib import Path

import numpy as np

SCOPES = ("attention", "fusion_block")


# --------------------------------------------------------------------------- slopes
def loglog_slope(ns, ys) -> float:
    """Least-squares slope of log(y) against log(n) (nan with fewer than two points)."""
    if len(ns) < 2:
        return float("nan")
    return float(np.polyfit(np.log(np.asarray(ns, float)), np.log(np.asarray(ys, float)), 1)[0])


def slope_rows(rows: list[dict], fit_from: Fraction) -> list[dict]:
    """One ``row=slope`` line per (scope, backend) with points: memory and time slopes over the ok points
    at scale >= ``fit_from`` (all ok points when fewer than two are there)."""
    out = []
    keys = dict.fromkeys((r["scope"], r["backend"]) for r in rows if r.get("row") == "point")
    for scope, backend in keys:
        ok = [
            r
            for r in rows
            if r.get("row") == "point"
            and (r["scope"], r["backend"]) == (scope, backend)
            and r.get("status") == "ok"
            and float(r["peak_mem_mb"]) > 0
        ]
        fit = [r for r in ok if Fraction(r["scale"]) >= fit_from]
        fit = fit if len(fit) >= 2 else ok
        row = {
            "row": "slope",
            "scope": scope,
            "backend": backend,
            "status": "ok" if len(fit) >= 2 else "no fit",
        }
        if len(fit) >= 2:
            ns = [int(r["n"]) for r in fit]
            row["slope_mem"] = loglog_slope(ns, [float(r["peak_mem_mb"]) for r in fit])
            row["slope_time"] = loglog_slope(ns, [float(r["median_ms"]) for r in fit])
            row["fit"] = (
                f"n={min(ns)}..{max(ns)} ({len(ns)} points, scale {fit[0]['scale']}..{fit[-1]['scale']})"
            )
        out.append(row)
    return out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def plot(rows: list[dict], out: Path) -> Path:
    """2 x 2 log-log panels: (attention, fusion block) x (peak memory, time) against N, one line per
    backend (legend: its fitted slopes); a cross marks a backend's first failed (OOM) length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    slopes = {(r["scope"], r["backend"]): r for r in rows if r["row"] == "slope"}
    fig, axes = plt.subplots(2, 2, figsize=(12, 9))
    for i, scope in enumerate(SCOPES):
        for j, (col, label) in enumerate((("peak_mem_mb", "peak memory, MiB"), ("median_ms", "median ms"))):
            ax = axes[i][j]
            for k, backend in enumerate(dict.fromkeys(r["backend"] for r in rows if r["scope"] == scope)):
                pts = [
                    r for r in rows if r["row"] == "point" and (r["scope"], r["backend"]) == (scope, backend)
                ]
                ok = [(int(r["n"]), float(r[col])) for r in pts if r["status"] == "ok"]
                if not ok:
                    continue
                s = slopes.get((scope, backend), {})
                key = "slope_mem" if col == "peak_mem_mb" else "slope_time"
                name = (
                    f"{backend} (slope {float(s[key]):.2f})"
                    if s.get(key) not in (None, "", "nan")
                    else backend
                )
                line = ax.plot(*zip(*ok), marker="o", label=name, color=f"C{k}")[0]
                oom = [int(r["n"]) for r in pts if r["status"].startswith("failed: OOM")]
                if oom:
                    ax.plot([oom[0]], [ok[-1][1]], "x", ms=10, mew=2, color=line.get_color())
                capped = [int(r["n"]) for r in pts if r["status"].startswith("skipped: scores")]
                if capped:  # CPU: not run, the scores would pass the memory cap
                    ax.plot([capped[0]], [ok[-1][1]], "^", ms=8, mfc="none", color=line.get_color())
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_yscale("log")
            ax.set_xlabel("sequence length N (tokens, all segments)")
            ax.set_ylabel(label)
            ax.set_title(f"{scope}: fwd+bwd {label.split(',')[0]}")
            ax.grid(True, which="both", alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=8)
    first = next((r for r in rows if r["row"] == "point"), {})
    not_run = sorted({r["backend"] for r in rows if r["status"].startswith("not run")})
    fig.suptitle(
        f"{first.get('gpu', '?')}  torch {first.get('torch', '?')}  {first.get('dtype', '')}  "
        f"B={first.get('batch', '')}  (x: out of memory; ^: over the CPU memory cap; slopes: log-log "
        f"fit{'; not run here: ' + ', '.join(not_run) if not_run else ''})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m gsit.analysis.memory_plot", description=__doc__.split("\n")[0]
    )
    p.add_argument("csv", type=Path)
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: the CSV's path with .png)")
    args = p.parse_args(argv)
    out = args.out or args.csv.with_suffix(".png")
    if out.exists():
        p.error(f"{out} exists; not overwritten (pick another --out)")
    rows = read_csv(args.csv)
    if not any(r.get("row") == "slope" for r in rows):  # an interrupted sweep: fit here
        rows += slope_rows(rows, Fraction(1, 2))
    print(f"wrote {plot(rows, out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
