"""Helpers shared by the analysis tools: optional imports with clear errors, data loading like ``gsit train``,
output paths that never overwrite, and small table writers (CSV, Markdown, LaTeX)."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gsit.data import load_run_data
from gsit.data.spec import dataset_spec
from gsit.errors import GsitError
from gsit.runs import load_run_config
from gsit.runs import run_seeds as seeds_of


class MissingDependency(GsitError):
    """An optional package (matplotlib, optuna) is needed and not installed."""


def require_matplotlib():
    """``matplotlib.pyplot`` with the non-interactive Agg backend, or a clear error."""
    try:
        import matplotlib
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            "this command draws PNG plots and needs matplotlib: pip install matplotlib "
            "(or pip install 'gsit[analysis]')"
        ) from e
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def require_optuna():
    try:
        import optuna
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise MissingDependency(
            "gsit tune needs optuna: pip install optuna (or pip install 'gsit[analysis]')"
        ) from e
    return optuna


# ----------------------------------------------------------------------------- data


def read_data(run, *, quiet: bool = True):
    """The data a run config names, exactly as ``gsit train`` reads it (see ``gsit.data.load_run_data``)."""
    return load_run_data(run.data, quiet=quiet)


def run_config_from_dir(run_dir: Path, data_path: str | None = None):
    """(RunConfig, data) of a trained run directory; ``data_path`` replaces the run's data path."""
    run = load_run_config(Path(run_dir), data_path)
    return run, read_data(run)


def run_seeds(run_dir: Path) -> list[int]:
    return seeds_of(Path(run_dir))


def metric_dataset(dataset: str) -> str:
    """The metric family of a dataset (gsit.data.spec; the synthetic task is scored like MOSI)."""
    return dataset_spec(dataset).metric_family


def lower_is_better(metric: str) -> bool:
    return metric in ("MAE", "Loss")


# ----------------------------------------------------------------------------- outputs that never overwrite


def new_dir(path: str | Path | None, *, default_root: Path, prefix: str) -> Path:
    """``path`` if it does not exist or is an empty directory, else an error; without ``path`` a fresh
    ``default_root/<prefix>-<timestamp>[-n]``."""
    if path is not None:
        p = Path(path)
        if p.exists() and (not p.is_dir() or any(p.iterdir())):
            raise GsitError(
                f"output directory {str(p)!r} already exists and is not empty; nothing is overwritten "
                f"(choose a new path)"
            )
        p.mkdir(parents=True, exist_ok=True)
        return p
    default_root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        p = default_root / (f"{prefix}-{stamp}" if n == 0 else f"{prefix}-{stamp}-{n}")
        try:
            p.mkdir()
            return p
        except FileExistsError:
            continue
    raise GsitError(f"could not create a new output directory under {str(default_root)!r}")


def new_file(path: str | Path) -> Path:
    """Refuse an existing file (never overwrite); create the parent directory."""
    p = Path(path)
    if p.exists():
        raise GsitError(f"output file {str(p)!r} already exists; choose a new path (nothing is overwritten)")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p


def write_text_new(path: Path, text: str) -> Path:
    with open(new_file(path), "x") as fh:
        fh.write(text)
    return Path(path)


def write_json_new(path: Path, obj: Any) -> Path:
    return write_text_new(path, json.dumps(_plain(obj), indent=2) + "\n")


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    return obj


def save_figure(fig, path: Path) -> Path:
    path = new_file(path)
    with open(path, "xb") as fh:
        fig.savefig(fh, format="png", dpi=110, bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------- tables


def csv_text(header: list[str], rows: Iterable[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow(r)
    return buf.getvalue()


def fmt_mean_std(mean: float, std: float, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def latex_escape(s: str) -> str:
    for a, b in (
        ("\\", r"\textbackslash{}"),
        ("_", r"\_"),
        ("&", r"\&"),
        ("%", r"\%"),
        ("#", r"\#"),
        ("±", r"$\pm$"),
    ):
        s = s.replace(a, b)
    return s


def latex_table(header: list[str], rows: list[list[Any]], caption: str = "") -> str:
    cols = "l" * len(header)
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\begin{{tabular}}{{{cols}}}",
        r"\toprule",
        " & ".join(latex_escape(h) for h in header) + r" \\",
        r"\midrule",
    ]
    lines += [" & ".join(latex_escape(str(c)) for c in r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def mean_std(values: list[float]) -> tuple[float, float]:
    vals = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if vals.size == 0:
        return float("nan"), float("nan")
    return float(np.mean(vals)), float(np.std(vals)) if vals.size > 1 else 0.0
