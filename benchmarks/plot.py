"""Plot a fusion-benchmark CSV (from bench_fusion.py) into one PNG with two panels.

    python benchmarks/plot.py benchmarks/results/NVIDIA-H200.csv [--out FILE.png] [--dataset mosei]
           [--batch 32] [--dtype bf16]

Left: fwd+bwd step time of the fusion block against the length multiplier, one line per variant
(model/backend/mode), log y, for one dataset / batch / dtype (default MOSEI, 32, bf16), padded rows.
Right: the padding experiment (MOSI): step time per GsiT backend for padded, padding-aware untrimmed,
padding-aware (trimmed batches) and padding-aware + length bucketing, one group per backend and mode.
Only rows with status ``ok`` are drawn; the legend names variants exactly as the CSV does.
Reads result files only; matplotlib is imported when the script runs.
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

PADDINGS = ("padded", "aware_untrimmed", "aware", "aware_bucketed")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def scaling_series(rows, *, dataset: str, batch: str, dtype: str) -> dict[str, list[tuple[int, float]]]:
    """variant -> [(length_mult, median_ms)] of the padded grid rows with status ok."""
    series = defaultdict(list)
    for r in rows:
        if (
            r["status"] == "ok"
            and r["padding"] == "padded"
            and r["dataset"] == dataset
            and r["batch"] == batch
            and r["dtype"] == dtype
            and "batches" not in r["note"]
        ):
            name = f"{r['model']}/{r['backend']}/{r['mode']}"
            series[name].append((int(r["length_mult"]), float(r["median_ms"])))
    return {k: sorted(v) for k, v in sorted(series.items())}


def padding_groups(rows) -> dict[str, dict[str, float]]:
    """Per "backend/mode": padding -> median_ms of the padding experiment's rows (several batches each)."""
    groups = defaultdict(dict)
    for r in rows:
        if r["status"] == "ok" and "batches" in r["note"] and r["padding"] in PADDINGS:
            groups[f"{r['model']}/{r['backend']}/{r['mode']}"][r["padding"]] = float(r["median_ms"])
    return dict(sorted(groups.items()))


def plot(rows, out: Path, *, dataset: str, batch: str, dtype: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(15, 6))
    series = scaling_series(rows, dataset=dataset, batch=batch, dtype=dtype)
    for name, points in series.items():
        xs, ys = zip(*points)
        style = "--" if name.startswith("mult/") else "-"
        ax1.plot(xs, ys, style, marker="o", label=name)
    ax1.set_xscale("log", base=2)
    ax1.set_yscale("log")
    ax1.set_xlabel("length multiplier (every segment)")
    ax1.set_ylabel("fwd+bwd step, median ms")
    ax1.set_title(f"fusion block, {dataset.upper()}, B={batch}, {dtype}")
    if series:
        ax1.legend(fontsize=7, ncol=2)
    else:
        ax1.text(0.5, 0.5, "no ok rows", ha="center", transform=ax1.transAxes)

    groups = padding_groups(rows)
    width = 0.8 / len(PADDINGS)
    for i, padding in enumerate(PADDINGS):
        xs = [g + (i - (len(PADDINGS) - 1) / 2) * width for g in range(len(groups))]
        ys = [groups[name].get(padding, float("nan")) for name in groups]
        ax2.bar(xs, ys, width, label=padding)
    ax2.set_xticks(range(len(groups)))
    ax2.set_xticklabels(list(groups), rotation=30, ha="right", fontsize=8)
    ax2.set_ylabel("fwd+bwd step, mean of per-batch medians, ms")
    ax2.set_title("padding-aware vs padded (MOSI lengths)")
    if groups:
        ax2.legend(fontsize=8)
    else:
        ax2.text(0.5, 0.5, "no ok rows", ha="center", transform=ax2.transAxes)

    gpu = rows[0]["gpu"] if rows else "?"
    fig.suptitle(f"{gpu}  torch {rows[0]['torch'] if rows else '?'}")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("csv", type=Path)
    p.add_argument("--out", type=Path, default=None, help="PNG path (default: the CSV's path with .png)")
    p.add_argument("--dataset", default="mosei")
    p.add_argument("--batch", default="32")
    p.add_argument("--dtype", default="bf16")
    args = p.parse_args(argv)
    out = plot(
        read_rows(args.csv),
        args.out or args.csv.with_suffix(".png"),
        dataset=args.dataset,
        batch=args.batch,
        dtype=args.dtype,
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
