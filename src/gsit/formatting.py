"""Paper-ready numbers (``--percent``): the convention of MMSA-family papers (GsiT's tables included).

* accuracies and F1 scores (``Has0_acc_2``, ``Non0_F1_score``, ``Mult_acc_7``, ``acc``, ``f1_macro``,
  ``precision_*``, ``recall_*``) are shown x100 with 2 decimals: 0.84256 -> ``84.26``;
* MAE, Corr and the loss keep their scale with 3 decimals: 0.71234 -> ``0.712``.

Without ``percent`` every metric is shown as a fraction with 4 decimals (what ``results.json`` rounds to).
Only the display changes: result files keep full-precision fractions.
"""

from __future__ import annotations

import math

_SCALE_KEEPING = ("mae", "corr", "loss")


def is_percent_metric(name: str) -> bool:
    """Accuracy-, F1-, precision- and recall-like metrics are shown in percent."""
    n = name.lower()
    return not any(n == k or n.endswith("_" + k) for k in _SCALE_KEEPING)


def lower_is_better(name: str) -> bool:
    return name.lower() in ("mae", "loss")


def metric_digits(name: str, percent: bool) -> int:
    if not percent:
        return 4
    return 2 if is_percent_metric(name) else 3


def scale_metric(name: str, value: float, percent: bool) -> float:
    return value * 100.0 if percent and is_percent_metric(name) else value


def format_metric(name: str, value: float | None, *, percent: bool = False) -> str:
    """One metric value as text (``n/a`` for a missing or NaN value)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{scale_metric(name, float(value), percent):.{metric_digits(name, percent)}f}"


def format_mean_std(
    name: str, mean: float | None, std: float | None, n: int, *, percent: bool = False, sep: str = " ± "
) -> str:
    """``mean ± std``; a single value (``n == 1``) has no spread and is shown alone."""
    text = format_metric(name, mean, percent=percent)
    if n > 1 and text != "n/a" and std is not None:
        text += sep + format_metric(name, std, percent=percent)
    return text


def percent_values(metrics: dict[str, float], *, percent: bool = True) -> dict[str, float]:
    """``{metric: value}`` scaled and rounded as :func:`format_metric` shows them (for JSON output)."""

    def shown(k: str, v):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return v
        return round(scale_metric(k, float(v), percent), metric_digits(k, percent))

    return {k: shown(k, v) for k, v in metrics.items()}


def results_lines(results: dict, run_dir, *, percent: bool = False) -> list[str]:
    """The console summary of a finished run: one line per metric, ``mean ± std`` (no spread for one seed)."""
    n = int(results.get("n_seeds", 1))
    unit = "; Acc/F1 in %" if percent else ""
    lines = [f"{results['model']} on {results['dataset']} ({n} seed(s){unit}); run: {run_dir}"]
    for k, v in results["mean"].items():
        lines.append(f"  {k:16s} {format_mean_std(k, v, results['std'][k], n, percent=percent)}")
    return lines


# ----------------------------------------------------------------------------- MMSA-style per-dataset CSV


def mmsa_pair(name: str, mean: float | None, std: float | None, n: int) -> str:
    """MMSA's ``"(mean, std)"`` cell in the paper convention (one seed: std 0)."""
    return (
        f"({format_metric(name, mean, percent=True)}, "
        f"{format_metric(name, std if n > 1 else 0.0, percent=True)})"
    )


def append_dataset_csv(folder, results: dict, run_dir):
    """Append one row for a finished run to ``folder/<dataset>.csv`` (like MMSA's
    ``results/normal/<dataset>.csv``): ``Model``, then one column per test metric holding MMSA's
    ``"(mean, std)"`` pair in the paper convention (Acc/F1 x100 with 2 decimals, MAE/Corr with 3), then the
    seeds and the run directory.  Several runs finishing at once append in turn (a lock file serialises
    them); a file whose header lacks this run's metrics is an error naming it, never rewritten."""
    import csv
    import fcntl
    import io
    from pathlib import Path

    from gsit.errors import GsitError

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{results['dataset']}.csv"
    metrics = list(results["mean"])
    header = ["Model", *metrics, "Seeds", "Run"]
    n = int(results.get("n_seeds", 1))
    row = [results["model"], *[mmsa_pair(k, results["mean"][k], results["std"][k], n) for k in metrics]]
    row += [" ".join(str(s) for s in results.get("seeds", [])), str(run_dir)]
    with open(folder / f".{path.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        new = not path.is_file() or path.stat().st_size == 0
        if not new:
            with open(path, newline="") as fh:
                existing = next(csv.reader(fh), [])
            if existing != header:
                raise GsitError(
                    f"{str(path)!r} has the columns {existing}, not {header}; move it away to "
                    f"start a new table"
                )
        buf = io.StringIO()
        w = csv.writer(buf)
        if new:
            w.writerow(header)
        w.writerow(row)
        with open(path, "a", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
    return path
