"""Tests of gsit.metrics against an independent sklearn-based re-implementation of MMSA's rules."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import sklearn
import torch
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from gsit.errors import DataError
from gsit.metrics import (
    DATASET_TASK,
    classification_metrics,
    compute_metrics,
    primary_metric_names,
    regression_metrics,
)

DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"

MOSI_KEYS = [
    "Has0_acc_2",
    "Has0_F1_score",
    "Non0_acc_2",
    "Non0_F1_score",
    "Mult_acc_5",
    "Mult_acc_7",
    "MAE",
    "Corr",
]
SIMS_KEYS = ["Mult_acc_2", "Mult_acc_3", "Mult_acc_5", "F1_score", "MAE", "Corr"]
CLS_KEYS = [
    "acc",
    "f1_macro",
    "precision_macro",
    "recall_macro",
    "f1_weighted",
    "precision_weighted",
    "recall_weighted",
]


# --------------------------------------------------------------------------------------------------
# reference implementation (written from the MMSA rules, sklearn for accuracy / F1)
# --------------------------------------------------------------------------------------------------


def _ref_corr(p, t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            return np.corrcoef(p, t)[0][1]


def _ref_multiclass_acc(a, b):
    return np.sum(np.round(a) == np.round(b)) / float(len(b))


def ref_mosi(pred, true):
    test_preds = np.asarray(pred, dtype=np.float32).reshape(-1)
    test_truth = np.asarray(true, dtype=np.float32).reshape(-1)
    test_preds_a7 = np.clip(test_preds, a_min=-3.0, a_max=3.0)
    test_truth_a7 = np.clip(test_truth, a_min=-3.0, a_max=3.0)
    test_preds_a5 = np.clip(test_preds, a_min=-2.0, a_max=2.0)
    test_truth_a5 = np.clip(test_truth, a_min=-2.0, a_max=2.0)

    mae = np.mean(np.absolute(test_preds - test_truth)).astype(np.float64)
    corr = _ref_corr(test_preds, test_truth)
    mult_a7 = _ref_multiclass_acc(test_preds_a7, test_truth_a7)
    mult_a5 = _ref_multiclass_acc(test_preds_a5, test_truth_a5)

    non_zeros = np.array([i for i, e in enumerate(test_truth) if e != 0], dtype=np.int64)
    if len(non_zeros):
        nz_truth = test_truth[non_zeros] > 0
        nz_preds = test_preds[non_zeros] > 0
        non0_acc2 = accuracy_score(nz_preds, nz_truth)
        non0_f1 = f1_score(nz_truth, nz_preds, average="weighted")
    else:
        non0_acc2 = non0_f1 = float("nan")

    binary_truth = test_truth >= 0
    binary_preds = test_preds >= 0
    acc2 = accuracy_score(binary_preds, binary_truth)
    f_score = f1_score(binary_truth, binary_preds, average="weighted")
    return {
        "Has0_acc_2": round(acc2, 4),
        "Has0_F1_score": round(f_score, 4),
        "Non0_acc_2": round(non0_acc2, 4),
        "Non0_F1_score": round(non0_f1, 4),
        "Mult_acc_5": round(mult_a5, 4),
        "Mult_acc_7": round(mult_a7, 4),
        "MAE": round(mae, 4),
        "Corr": round(corr, 4),
    }


def ref_sims(pred, true):
    test_preds = np.clip(np.asarray(pred, dtype=np.float32).reshape(-1), a_min=-1.0, a_max=1.0)
    test_truth = np.clip(np.asarray(true, dtype=np.float32).reshape(-1), a_min=-1.0, a_max=1.0)

    def binned(x, ms):
        y = x.copy()
        for i in range(len(ms) - 1):
            y[np.logical_and(x > ms[i], x <= ms[i + 1])] = i
        return y

    ms_2 = [-1.01, 0.0, 1.01]
    ms_3 = [-1.01, -0.1, 0.1, 1.01]
    ms_5 = [-1.01, -0.7, -0.1, 0.1, 0.7, 1.01]
    p2, t2 = binned(test_preds, ms_2), binned(test_truth, ms_2)
    p3, t3 = binned(test_preds, ms_3), binned(test_truth, ms_3)
    p5, t5 = binned(test_preds, ms_5), binned(test_truth, ms_5)

    mae = np.mean(np.absolute(test_preds - test_truth)).astype(np.float64)
    corr = _ref_corr(test_preds, test_truth)
    return {
        "Mult_acc_2": round(_ref_multiclass_acc(p2, t2), 4),
        "Mult_acc_3": round(_ref_multiclass_acc(p3, t3), 4),
        "Mult_acc_5": round(_ref_multiclass_acc(p5, t5), 4),
        "F1_score": round(f1_score(t2, p2, average="weighted"), 4),
        "MAE": round(mae, 4),
        "Corr": round(corr, 4),
    }


def assert_close(got: dict, exp: dict, tol: float = 1e-4, ctx: str = ""):
    assert list(got) == list(exp), ctx
    for k in exp:
        g, e = got[k], float(exp[k])
        assert isinstance(g, float), (k, type(g))
        if math.isnan(e):
            assert math.isnan(g), (ctx, k, g, e)
        else:
            assert abs(g - e) <= tol + 1e-12, (ctx, k, g, e)


TIE_VALUES = np.array([0.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 0.1, -0.1, 0.7, -0.7, 1.0, -1.0, 3.0, -3.0])


def _draw(rng, n, tie_frac):
    x = rng.normal(0.0, 1.5, size=n)
    mask = rng.random(n) < tie_frac
    x[mask] = rng.choice(TIE_VALUES, size=int(mask.sum()))
    return x.astype(np.float32)


# --------------------------------------------------------------------------------------------------
# random trials vs the reference
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset,ref,alias", [("mosi", ref_mosi, "mosei"), ("sims", ref_sims, "simsv2")])
def test_random_trials_match_reference(dataset, ref, alias):
    rng = np.random.default_rng(1234 + len(dataset))
    # skip sklearn's input validation (speed only; the inputs are clean)
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for trial in range(200):
            n = int(rng.integers(2, 80))
            tie_frac = [0.0, 0.5, 0.9, 1.0][trial % 4]
            p, t = _draw(rng, n, tie_frac), _draw(rng, n, tie_frac)
            if dataset == "sims" and trial % 2:
                p, t = p / 2, t / 2  # keep most values inside [-1, 1]
            got = regression_metrics(dataset, p, t)
            assert_close(got, ref(p, t), ctx=f"{dataset} trial {trial}")
            if trial % 20 == 0:
                assert regression_metrics(alias, p, t) == got


def test_mosi_all_zero_truth_gives_nan_non0():
    p = np.array([0.3, -0.2, 0.0], dtype=np.float32)
    t = np.zeros(3, dtype=np.float32)
    r = regression_metrics("mosi", p, t)
    assert math.isnan(r["Non0_acc_2"]) and math.isnan(r["Non0_F1_score"])
    assert r["Has0_acc_2"] == round(2 / 3, 4)
    assert math.isnan(r["Corr"])


# --------------------------------------------------------------------------------------------------
# MOSI / MOSEI edge cases
# --------------------------------------------------------------------------------------------------


def test_round_half_to_even():
    # truth rounds: 0.5->0, 1.5->2, 2.5->2 (clip 3); -0.5->-0 == 0, -1.5->-2
    t = np.array([0.5, 1.5, 2.5, -0.5, -1.5], dtype=np.float32)
    p = np.array([0.0, 2.0, 2.0, 0.0, -2.0], dtype=np.float32)
    r = regression_metrics("mosi", p, t)
    assert r["Mult_acc_7"] == 1.0
    assert r["Mult_acc_5"] == 1.0
    # half-up rounding would put 0.5 in class 1 and 2.5 in class 3
    p_bad = np.array([1.0, 2.0, 3.0, -1.0, -2.0], dtype=np.float32)
    r_bad = regression_metrics("mosi", p_bad, t)
    assert r_bad["Mult_acc_7"] == round(2 / 5, 4)
    # clip ±2 for 5 classes: 3.0 -> 2, 2.5 -> 2 (clip) and -2.7 -> -2
    r5 = regression_metrics("mosi", np.array([3.0, -2.7]), np.array([2.5, -2.0]))
    assert r5["Mult_acc_5"] == 1.0
    assert r5["Mult_acc_7"] == 0.0  # clip ±3: 3 vs round(2.5)=2 and round(-2.7)=-3 vs -2 both differ


def test_mult_acc_7_clip():
    r = regression_metrics("mosi", np.array([4.0, -3.4]), np.array([3.0, -5.0]))
    assert r["Mult_acc_7"] == 1.0  # both sides clipped to ±3
    assert r["Mult_acc_5"] == 1.0
    assert r["MAE"] == round((1.0 + 1.6) / 2, 4)  # MAE on unclipped values


def test_zero_truth_in_has0_dropped_in_non0():
    t = np.array([0.0, 1.0, -1.0, 0.0], dtype=np.float32)
    p = np.array([0.5, 1.0, -1.0, -0.5], dtype=np.float32)
    r = regression_metrics("mosi", p, t)
    # Has0: t>=0 -> [T, T, F, T]; p>=0 -> [T, T, F, F]  => 3/4
    assert r["Has0_acc_2"] == 0.75
    # Non0: only samples 1, 2 survive, both right
    assert r["Non0_acc_2"] == 1.0
    assert r["Non0_F1_score"] == 1.0
    # p == 0 is positive for Has0 but negative for Non0
    r2 = regression_metrics("mosi", np.array([0.0, 0.0]), np.array([1.0, -1.0]))
    assert r2["Has0_acc_2"] == 0.5
    assert r2["Non0_acc_2"] == 0.5
    assert_close(r2, ref_mosi([0.0, 0.0], [1.0, -1.0]))


def test_mosi_key_order_and_float_types():
    r = regression_metrics("MOSI", [0.1, -0.3, 2.0], [0.2, -1.0, 1.5])
    assert list(r) == MOSI_KEYS
    assert all(type(v) is float for v in r.values())
    assert list(regression_metrics("sims", [0.1, -0.3], [0.2, -1.0])) == SIMS_KEYS


# --------------------------------------------------------------------------------------------------
# SIMS edge cases
# --------------------------------------------------------------------------------------------------


def _sims_bins(x):
    """Classes (2, 3, 5) of single values, read back through the accuracy of pred == x vs truth."""
    out = []
    for ncls, key in ((2, "Mult_acc_2"), (3, "Mult_acc_3"), (5, "Mult_acc_5")):
        found = []
        # representative interior point of each class
        reps = {2: [-0.5, 0.5], 3: [-0.5, 0.0, 0.5], 5: [-0.9, -0.4, 0.0, 0.4, 0.9]}[ncls]
        for c, rep in enumerate(reps):
            r = regression_metrics("sims", np.array([x], dtype=np.float32), np.array([rep], dtype=np.float32))
            if r[key] == 1.0:
                found.append(c)
        assert len(found) == 1, (x, ncls, found)
        out.append(found[0])
    return tuple(out)


@pytest.mark.parametrize(
    "x,expected",
    [
        (0.0, (0, 1, 2)),  # 0 is negative for 2 classes, neutral for 3/5
        (0.1, (1, 1, 2)),  # (lo, hi] -> 0.1 still neutral
        (-0.1, (0, 0, 1)),
        (0.7, (1, 2, 3)),
        (-0.7, (0, 0, 0)),
        (1.0, (1, 2, 4)),
        (-1.0, (0, 0, 0)),
        (5.0, (1, 2, 4)),  # clipped to 1
        (-5.0, (0, 0, 0)),
        (0.10001, (1, 2, 3)),
        (-0.09999, (0, 1, 2)),
    ],
)
def test_sims_bin_edges(x, expected):
    assert _sims_bins(np.float32(x)) == expected


def test_sims_float32_edge_semantics():
    # np.float32(0.1) > 0.1 in float64, but the comparison is done in float32 -> middle class.
    x = np.float32(0.1)
    assert float(x) > 0.1
    r = regression_metrics("sims", np.array([x]), np.array([0.0], dtype=np.float32))
    assert r["Mult_acc_3"] == 1.0
    assert r["Mult_acc_5"] == 1.0
    # torch float32 tensors behave the same
    r_t = regression_metrics("sims", torch.tensor([0.1]), torch.tensor([0.05]))
    assert r_t["Mult_acc_3"] == 1.0
    # float64 input is converted to float32 first, so 0.1 (float64) also lands in the middle class
    r64 = regression_metrics("sims", np.array([0.1], dtype=np.float64), np.array([0.0]))
    assert r64["Mult_acc_3"] == 1.0


def test_sims_mae_corr_on_clipped_values():
    p = np.array([3.0, -3.0, 0.5], dtype=np.float32)
    t = np.array([1.0, -1.0, 0.0], dtype=np.float32)
    r = regression_metrics("sims", p, t)
    assert r["MAE"] == round(0.5 / 3, 4)
    assert_close(r, ref_sims(p, t))


def test_sims_f1_zero_is_negative():
    p = np.array([0.0, 0.0, 0.3, -0.3], dtype=np.float32)
    t = np.array([-0.2, 0.2, 0.0, 0.0], dtype=np.float32)
    r = regression_metrics("sims", p, t)
    # bins2: p -> [0, 0, 1, 0]; t -> [0, 1, 0, 0]
    exp_f1 = f1_score([0, 1, 0, 0], [0, 0, 1, 0], average="weighted")
    assert r["Mult_acc_2"] == 0.5
    assert r["F1_score"] == round(exp_f1, 4)


# --------------------------------------------------------------------------------------------------
# Corr NaN
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "simsv2"])
def test_constant_prediction_corr_nan_no_warning(dataset):
    p = np.full(10, 0.3, dtype=np.float32)
    t = np.linspace(-1, 1, 10).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = regression_metrics(dataset, p, t)
        r1 = regression_metrics(dataset, [0.2], [0.4])  # a single sample
    assert math.isnan(r["Corr"]) and math.isnan(r1["Corr"])
    assert all(not math.isnan(v) for k, v in r.items() if k != "Corr")


def test_sims_clipping_can_make_corr_nan():
    # all predictions above 1 clip to the constant 1 -> Corr NaN for sims, finite for mosi
    p = np.array([2.0, 3.0, 4.0], dtype=np.float32)
    t = np.array([0.1, 0.5, 0.9], dtype=np.float32)
    assert math.isnan(regression_metrics("sims", p, t)["Corr"])
    assert regression_metrics("mosi", p, t)["Corr"] == 1.0


# --------------------------------------------------------------------------------------------------
# input handling and errors
# --------------------------------------------------------------------------------------------------


def test_torch_and_shapes():
    rng = np.random.default_rng(0)
    p, t = rng.normal(size=(12, 1)).astype(np.float32), rng.normal(size=12).astype(np.float32)
    exp = regression_metrics("mosi", p.reshape(-1), t)
    assert regression_metrics("mosi", torch.from_numpy(p), torch.from_numpy(t)) == exp
    assert regression_metrics("mosi", p.reshape(3, 4), t.reshape(2, 6)) == exp
    assert regression_metrics("mosi", torch.from_numpy(p).requires_grad_(), t.tolist()) == exp
    bf = regression_metrics("mosi", torch.from_numpy(p).bfloat16(), t)
    assert list(bf) == MOSI_KEYS


@pytest.mark.parametrize("dataset", ["mosi", "sims", "mintrec"])
def test_errors(dataset):
    good_p = [0.1, 0.2, 0.3] if dataset != "mintrec" else [0, 1, 2]
    with pytest.raises(DataError, match=r"different lengths: 3 vs 2"):
        compute_metrics(dataset, good_p, good_p[:2])
    with pytest.raises(DataError, match="empty"):
        compute_metrics(dataset, [], [])
    with pytest.raises(DataError, match="NaN"):
        compute_metrics(dataset, [0.1, float("nan"), 0.3], [0, 1, 2])
    with pytest.raises(DataError, match="inf"):
        compute_metrics(dataset, good_p, [0.0, float("inf"), 1.0])
    assert issubclass(DataError, ValueError)


def test_nan_in_logits_and_bad_labels():
    logits = np.zeros((3, 4), dtype=np.float32)
    logits[1, 2] = np.nan
    with pytest.raises(DataError, match=r"1 NaN"):
        classification_metrics(logits, [0, 1, 2])
    with pytest.raises(DataError, match="non-integer"):
        classification_metrics([0.5, 1.0], [0, 1])
    with pytest.raises(DataError, match="negative"):
        classification_metrics([0, 1], [0, -1])
    with pytest.raises(DataError, match="num_classes"):
        classification_metrics([0, 5], [0, 1], num_classes=5)
    with pytest.raises(DataError, match="num_classes"):
        classification_metrics(np.zeros((2, 3)), [0, 1], num_classes=20)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="mosi.*mosei.*sims.*simsv2.*mintrec"):
        compute_metrics("iemocap", [0.1], [0.1])
    with pytest.raises(ValueError, match="known datasets"):
        primary_metric_names("foo")
    with pytest.raises(ValueError):
        regression_metrics("mintrec", [0.1], [0.1])


def test_dispatch_and_primary_names():
    assert DATASET_TASK == {
        "mosi": "regression",
        "mosei": "regression",
        "sims": "regression",
        "simsv2": "regression",
        "mintrec": "classification",
    }
    assert list(compute_metrics("MIntRec", [0, 1], [0, 1])) == CLS_KEYS
    assert list(compute_metrics("SIMSv2", [0.1, 0.2], [0.3, -0.2])) == SIMS_KEYS
    assert primary_metric_names("mosi") == [
        "Has0_acc_2",
        "Non0_acc_2",
        "Has0_F1_score",
        "Non0_F1_score",
        "Mult_acc_7",
        "MAE",
        "Corr",
    ]
    assert primary_metric_names("MOSEI") == primary_metric_names("mosi")
    assert primary_metric_names("sims") == [
        "Mult_acc_2",
        "F1_score",
        "Mult_acc_3",
        "Mult_acc_5",
        "MAE",
        "Corr",
    ]
    assert primary_metric_names("simsv2") == primary_metric_names("sims")
    assert primary_metric_names("mintrec") == [
        "acc",
        "f1_macro",
        "f1_weighted",
        "precision_macro",
        "precision_weighted",
        "recall_macro",
        "recall_weighted",
    ]
    for ds in DATASET_TASK:
        names = primary_metric_names(ds)
        names.append("x")  # a copy: mutating it must not leak
        assert "x" not in primary_metric_names(ds)


# --------------------------------------------------------------------------------------------------
# MIntRec classification
# --------------------------------------------------------------------------------------------------


def ref_cls(p, t):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {
            "acc": accuracy_score(t, p),
            "f1_macro": f1_score(t, p, average="macro", zero_division=0),
            "precision_macro": precision_score(t, p, average="macro", zero_division=0),
            "recall_macro": recall_score(t, p, average="macro", zero_division=0),
            "f1_weighted": f1_score(t, p, average="weighted", zero_division=0),
            "precision_weighted": precision_score(t, p, average="weighted", zero_division=0),
            "recall_weighted": recall_score(t, p, average="weighted", zero_division=0),
        }


def test_classification_random_vs_sklearn():
    rng = np.random.default_rng(7)
    with sklearn.config_context(assume_finite=True, skip_parameter_validation=True):
        for trial in range(60):
            n = int(rng.integers(1, 120))
            t = rng.integers(0, 20, size=n)
            # predictions from a subset (classes never predicted) plus some classes absent from truth
            allowed = rng.choice(20, size=int(rng.integers(1, 21)), replace=False)
            p = np.where(rng.random(n) < 0.5, t, rng.choice(allowed, size=n))
            exp = {k: round(float(v), 4) for k, v in ref_cls(p, t).items()}
            assert_close(classification_metrics(p, t, num_classes=20), exp, ctx=f"trial {trial}")


def test_classification_logits_argmax():
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(50, 20)).astype(np.float32)
    t = rng.integers(0, 20, size=50)
    ids = logits.argmax(1)
    exp = classification_metrics(ids, t)
    assert classification_metrics(logits, t, num_classes=20) == exp
    assert classification_metrics(torch.from_numpy(logits), torch.from_numpy(t)) == exp
    assert classification_metrics(ids.astype(np.float64), t.reshape(-1, 1)) == exp
    assert_close(exp, {k: round(float(v), 4) for k, v in ref_cls(ids, t).items()})


def test_classification_macro_over_union_of_labels():
    # class 3 is predicted but never true; class 2 is true but never predicted
    t = np.array([0, 0, 1, 2])
    p = np.array([0, 3, 1, 1])
    r = classification_metrics(p, t)
    # labels {0,1,2,3}: precision [1, .5, 0, 0], recall [.5, 1, 0, 0], f1 [2/3, 2/3, 0, 0]
    assert r["precision_macro"] == round(1.5 / 4, 4)
    assert r["recall_macro"] == round(1.5 / 4, 4)
    assert r["f1_macro"] == round((4 / 3) / 4, 4)
    assert r["acc"] == 0.5 == r["recall_weighted"]


def test_mintrec_golden():
    labels_f = DATA_DIR / "mintrec" / "test_labels_official.npy"
    pred_f = DATA_DIR / "mintrec" / "test_pred_text_baseline.npy"
    if not (labels_f.exists() and pred_f.exists()):
        pytest.skip(f"MIntRec golden files not found under {DATA_DIR / 'mintrec'}")
    t = np.load(labels_f, allow_pickle=False)
    p = np.load(pred_f, allow_pickle=False)
    r = compute_metrics("mintrec", p, t)
    expected = {
        "acc": 70.34,
        "f1_macro": 65.63,
        "precision_macro": 66.44,
        "recall_macro": 65.84,
        "f1_weighted": 69.62,
        "precision_weighted": 69.51,
    }
    for k, v in expected.items():
        assert abs(r[k] * 100 - v) <= 0.01 + 1e-9, (k, r[k], v)
    assert r["recall_weighted"] == r["acc"]
