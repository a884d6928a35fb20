"""Evaluation metrics with MMSA's exact names, edge rules and rounding.

Regression (MOSI / MOSEI) follows MMSA's ``__eval_mosei_regression``; SIMS / SIMSv2 follow
``__eval_sims_regression``; MIntRec is 20-way intent classification scored with sklearn-style
macro and weighted precision / recall / F1.  Everything is implemented in NumPy (no sklearn at run
time); the tests check agreement with sklearn.

Conventions shared with MMSA:

* inputs are flattened and converted to float32 before any arithmetic, so thresholds and bin edges
  are compared in float32 (NumPy 2 weak-scalar semantics);
* ``np.round`` (round half to even) is used for the multi-class accuracies;
* every value is returned as a Python ``float`` rounded with ``round(x, 4)``;
* ``Corr`` is ``np.corrcoef(p, t)[0, 1]`` and is ``nan`` (never an exception or escaping warning)
  when either side is constant or there is a single sample.

One deliberate difference: when every truth value is exactly 0, MMSA crashes computing the
``Non0_*`` metrics (there is no sample left); here they are ``nan``.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from gsit.data.spec import DATASETS
from gsit.errors import DataError

__all__ = [
    "DATASET_TASK",
    "classification_metrics",
    "compute_metrics",
    "primary_metric_names",
    "regression_metrics",
]

# the real datasets this module scores, and their task (gsit.data.spec); the generated synthetic task has
# no metrics of its own: callers score it with its spec's metric_family
DATASET_TASK: dict[str, str] = {n: spec.task for n, spec in DATASETS.items() if not spec.generated}

_MOSI_KEYS = (
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
)
_SIMS_KEYS = ("Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr")
_CLS_KEYS = (
    "acc",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "f1_weighted",
    "precision_weighted",
    "recall_weighted",
)

# the reported columns of each metric family (gsit.data.spec.DatasetSpec.metric_family)
_PRIMARY: dict[str, list[str]] = {
    "mosi": ["Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score", "Mult_acc_7", "MAE", "Corr"],
    "sims": ["Mult_acc_2", "F1_score", "Mult_acc_3", "Mult_acc_5", "MAE", "Corr"],
    "mintrec": [
        "acc",
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "precision_weighted",
        "recall_macro",
        "recall_weighted",
    ],
}

# SIMS bin edges: half-open (lo, hi] intervals, compared in float32 against float32 values.
_SIMS_EDGES_2 = (-1.01, 0.0, 1.01)
_SIMS_EDGES_3 = (-1.01, -0.1, 0.1, 1.01)
_SIMS_EDGES_5 = (-1.01, -0.7, -0.1, 0.1, 0.7, 1.01)


# --------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------


def _norm_dataset(dataset: str) -> str:
    if not isinstance(dataset, str):
        raise ValueError(
            f"dataset must be a string, got {type(dataset).__name__}; known datasets: "
            f"{', '.join(DATASET_TASK)}"
        )
    name = dataset.strip().lower()
    if name not in DATASET_TASK:
        raise ValueError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASET_TASK)}")
    return name


def _to_numpy(x: Any, name: str) -> np.ndarray:
    """Array-like or torch tensor -> NumPy array (no copy when possible)."""
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):
        t = x.detach().cpu()
        if t.is_floating_point() and t.element_size() < 4:  # float16 / bfloat16 have no NumPy view
            t = t.float()
        x = t.numpy()
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"{name} cannot be converted to an array: {exc}") from exc
    if arr.dtype == object or arr.dtype.kind not in "biuf":
        raise DataError(f"{name} must be numeric, got dtype {arr.dtype} (shape {arr.shape})")
    return arr


def _check_finite(arr: np.ndarray, name: str, shape: tuple) -> None:
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(arr.size - finite.sum()) - n_nan
        raise DataError(
            f"{name} contains non-finite values: {n_nan} NaN and {n_inf} inf out of {arr.size} "
            f"(shape {shape})"
        )


def _check_pair(p: np.ndarray, t: np.ndarray, p_shape: tuple, t_shape: tuple) -> None:
    if p.size == 0 or t.size == 0:
        raise DataError(
            f"empty input: pred has {p.size} value(s) (shape {p_shape}), "
            f"true has {t.size} value(s) (shape {t_shape})"
        )
    if p.shape[0] != t.shape[0]:
        raise DataError(
            f"pred and true have different lengths: {p.shape[0]} vs {t.shape[0]} "
            f"(pred shape {p_shape}, true shape {t_shape})"
        )


def _regression_inputs(pred: Any, true: Any) -> tuple[np.ndarray, np.ndarray]:
    p_raw = _to_numpy(pred, "pred")
    t_raw = _to_numpy(true, "true")
    p_flat, t_flat = p_raw.reshape(-1), t_raw.reshape(-1)
    _check_pair(p_flat, t_flat, p_raw.shape, t_raw.shape)
    _check_finite(p_flat, "pred", p_raw.shape)
    _check_finite(t_flat, "true", t_raw.shape)
    p = p_flat.astype(np.float32)
    t = t_flat.astype(np.float32)
    # values finite in float64 but beyond float32's range
    _check_finite(p, "pred (as float32)", p_raw.shape)
    _check_finite(t, "true (as float32)", t_raw.shape)
    return p, t


def _r4(x: Any) -> float:
    return round(float(x), 4)


def _pearson(p: np.ndarray, t: np.ndarray) -> float:
    """``np.corrcoef(p, t)[0, 1]``; nan (silently) for constant inputs or a single sample."""
    if p.size < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            c = np.corrcoef(p, t)[0, 1]
    return float(c)


def _mae(p: np.ndarray, t: np.ndarray) -> float:
    # MMSA: np.mean(np.absolute(p - t)) on float32 arrays, then .astype(np.float64)
    return float(np.mean(np.absolute(p - t)))


def _multiclass_acc(p: np.ndarray, t: np.ndarray) -> float:
    return float(np.sum(np.round(p) == np.round(t)) / float(len(t)))


def _prf_support(y_true: np.ndarray, y_pred: np.ndarray):
    """Per-label precision, recall, F1 and support over labels in y_true ∪ y_pred (sorted).

    zero_division=0: precision of a never-predicted label and recall of a label absent from
    y_true are 0.  F1 = 2tp / (2tp + fp + fn), which is defined for every label of the union.
    """
    labels = np.union1d(y_true, y_pred)
    n = labels.size
    ti = np.searchsorted(labels, y_true)
    pi = np.searchsorted(labels, y_pred)
    tp = np.bincount(ti[ti == pi], minlength=n).astype(np.float64)
    support = np.bincount(ti, minlength=n).astype(np.float64)
    pred_count = np.bincount(pi, minlength=n).astype(np.float64)
    zeros = np.zeros(n, dtype=np.float64)
    precision = np.divide(tp, pred_count, out=zeros.copy(), where=pred_count > 0)
    recall = np.divide(tp, support, out=zeros.copy(), where=support > 0)
    denom = support + pred_count  # = 2tp + fp + fn
    f1 = np.divide(2.0 * tp, denom, out=zeros.copy(), where=denom > 0)
    return precision, recall, f1, support


def _weighted(values: np.ndarray, support: np.ndarray) -> float:
    total = support.sum()
    if total == 0:
        return 0.0
    return float(np.sum(values * support) / total)


def _weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn ``f1_score(y_true, y_pred, average='weighted')``."""
    _, _, f1, support = _prf_support(y_true, y_pred)
    return _weighted(f1, support)


def _accuracy(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def _bin(x: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    """Class index of each value for half-open (lo, hi] intervals, compared in float32."""
    out = np.zeros(x.shape, dtype=np.int64)
    for i in range(len(edges) - 1):
        lo, hi = np.float32(edges[i]), np.float32(edges[i + 1])
        out[(x > lo) & (x <= hi)] = i
    return out


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


def _mosi_metrics(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    p_a7, t_a7 = np.clip(p, -3.0, 3.0), np.clip(t, -3.0, 3.0)
    p_a5, t_a5 = np.clip(p, -2.0, 2.0), np.clip(t, -2.0, 2.0)

    nz = t != 0
    if nz.any():
        nz_truth, nz_pred = t[nz] > 0, p[nz] > 0
        non0_acc = _accuracy(nz_pred, nz_truth)
        non0_f1 = _weighted_f1(nz_truth, nz_pred)
    else:
        non0_acc = non0_f1 = float("nan")

    b_truth, b_pred = t >= 0, p >= 0
    res = {
        "Has0_acc_2": _accuracy(b_pred, b_truth),
        "Has0_F1_score": _weighted_f1(b_truth, b_pred),
        "Non0_acc_2": non0_acc,
        "Non0_F1_score": non0_f1,
        "Mult_acc_5": _multiclass_acc(p_a5, t_a5),
        "Mult_acc_7": _multiclass_acc(p_a7, t_a7),
        "MAE": _mae(p, t),
        "Corr": _pearson(p, t),
    }
    return {k: _r4(res[k]) for k in _MOSI_KEYS}


def _sims_metrics(p: np.ndarray, t: np.ndarray) -> dict[str, float]:
    p = np.clip(p, -1.0, 1.0)
    t = np.clip(t, -1.0, 1.0)
    p2, t2 = _bin(p, _SIMS_EDGES_2), _bin(t, _SIMS_EDGES_2)
    p3, t3 = _bin(p, _SIMS_EDGES_3), _bin(t, _SIMS_EDGES_3)
    p5, t5 = _bin(p, _SIMS_EDGES_5), _bin(t, _SIMS_EDGES_5)
    res = {
        "Mult_acc_2": _accuracy(p2, t2),
        "Mult_acc_3": _accuracy(p3, t3),
        "Mult_acc_5": _accuracy(p5, t5),
        "F1_score": _weighted_f1(t2, p2),
        "MAE": _mae(p, t),
        "Corr": _pearson(p, t),
    }
    return {k: _r4(res[k]) for k in _SIMS_KEYS}


def regression_metrics(dataset: str, pred: Any, true: Any) -> dict[str, float]:
    """MMSA regression metrics for ``mosi``/``mosei`` or ``sims``/``simsv2`` (case-insensitive).

    ``pred`` and ``true`` are array-likes or torch tensors of any shape that flattens to N values.
    Raises :class:`gsit.errors.DataError` on empty input, mismatched lengths or NaN/inf values.
    """
    name = _norm_dataset(dataset)
    if DATASET_TASK[name] != "regression":
        raise ValueError(
            f"dataset {dataset!r} is a {DATASET_TASK[name]} dataset; regression datasets: "
            f"{', '.join(k for k, v in DATASET_TASK.items() if v == 'regression')}"
        )
    p, t = _regression_inputs(pred, true)
    if DATASETS[name].metric_family == "mosi":
        return _mosi_metrics(p, t)
    return _sims_metrics(p, t)


def _as_labels(arr: np.ndarray, name: str, shape: tuple) -> np.ndarray:
    if arr.dtype.kind == "f":
        _check_finite(arr, name, shape)
        if not np.all(arr == np.round(arr)):
            raise DataError(f"{name} must hold integer class ids, found non-integer values (shape {shape})")
    out = arr.astype(np.int64)
    if out.size and out.min() < 0:
        raise DataError(f"{name} holds negative class id {int(out.min())} (shape {shape})")
    return out


def classification_metrics(pred: Any, true: Any, num_classes: int | None = None) -> dict[str, float]:
    """Accuracy and macro/weighted F1, precision, recall (sklearn semantics, zero_division=0).

    ``pred`` is either class ids (N,) or logits/scores (N, C) (argmax over the last axis);
    ``true`` holds class ids (N,).  Macro averages run over the labels present in
    ``true ∪ pred``, as sklearn does by default; ``num_classes`` only validates ids and C.
    """
    p_raw = _to_numpy(pred, "pred")
    t_raw = _to_numpy(true, "true")
    if p_raw.ndim == 2 and p_raw.shape[1] > 1:
        _check_pair(p_raw, t_raw.reshape(-1), p_raw.shape, t_raw.shape)
        _check_finite(p_raw, "pred", p_raw.shape)
        if num_classes is not None and p_raw.shape[1] != num_classes:
            raise DataError(
                f"pred logits have {p_raw.shape[1]} classes (shape {p_raw.shape}), "
                f"expected num_classes={num_classes}"
            )
        p = np.argmax(p_raw, axis=1).astype(np.int64)
    elif p_raw.ndim <= 1 or (p_raw.ndim == 2 and p_raw.shape[1] == 1):
        p_flat = p_raw.reshape(-1)
        _check_pair(p_flat, t_raw.reshape(-1), p_raw.shape, t_raw.shape)
        p = _as_labels(p_flat, "pred", p_raw.shape)
    else:
        raise DataError(f"pred must be class ids (N,) or logits (N, C), got shape {p_raw.shape}")

    t_flat = t_raw.reshape(-1)
    _check_pair(p, t_flat, p_raw.shape, t_raw.shape)
    t = _as_labels(t_flat, "true", t_raw.shape)
    if num_classes is not None:
        for arr, nm, shp in ((p, "pred", p_raw.shape), (t, "true", t_raw.shape)):
            if arr.max() >= num_classes:
                raise DataError(
                    f"{nm} holds class id {int(arr.max())} >= num_classes={num_classes} (shape {shp})"
                )

    precision, recall, f1, support = _prf_support(t, p)
    res = {
        "acc": _accuracy(p, t),
        "f1_macro": float(np.mean(f1)),
        "precision_macro": float(np.mean(precision)),
        "recall_macro": float(np.mean(recall)),
        "f1_weighted": _weighted(f1, support),
        "precision_weighted": _weighted(precision, support),
        "recall_weighted": _weighted(recall, support),
    }
    return {k: _r4(res[k]) for k in _CLS_KEYS}


def compute_metrics(dataset: str, pred: Any, true: Any) -> dict[str, float]:
    """Dispatch on the dataset: ``mintrec`` -> classification, the others -> regression."""
    name = _norm_dataset(dataset)
    if DATASET_TASK[name] == "classification":
        return classification_metrics(pred, true)
    return regression_metrics(name, pred, true)


def primary_metric_names(dataset: str) -> list[str]:
    """The metric columns papers report for ``dataset``, in the usual table order."""
    return list(_PRIMARY[DATASETS[_norm_dataset(dataset)].metric_family])
