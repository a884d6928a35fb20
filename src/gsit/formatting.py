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


def format_mean_std(name: str, mean: float | None, std: float | None, n: int, *, percent: bool = False,
                    sep: str = " ± ") -> str:
    """``mean ± std``; a single value (``n == 1``) has no spread and is shown alone."""
    text = format_metric(name, mean, percent=percent)
    if n > 1 and text != "n/a" and std is not None:
        text += sep + format_metric(name, std, percent=percent)
    return text
