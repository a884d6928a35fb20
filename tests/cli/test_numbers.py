"""Paper-ready numbers (issue 14, item 5): --percent in train/eval/report, report's aligned LaTeX with the
best in bold, the MMSA-style per-dataset CSV, and predict --seed all|N with rounded labels and --ensemble."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from gsit import cli
from gsit.analysis.report import report
from gsit.data import make_synthetic, save_converted
from gsit.formatting import format_mean_std, format_metric, percent_values

TINY = ["model.d_model=16", "model.num_layers=1", "train.max_epochs=2", "train.batch_size=16"]


def tiny_data():
    return make_synthetic(n_train=48, n_valid=24, n_test=24, text_len=10, audio_len=12, vision_len=12, seed=2)


def test_metric_formatting():
    assert format_metric("Has0_acc_2", 0.842566, percent=True) == "84.26"
    assert format_metric("Non0_F1_score", 0.8, percent=True) == "80.00"
    assert format_metric("f1_weighted", 0.71234, percent=True) == "71.23"
    assert format_metric("MAE", 0.71251, percent=True) == "0.713"
    assert format_metric("Corr", -0.1234, percent=True) == "-0.123"
    assert format_metric("Loss", 0.5, percent=True) == "0.500"
    assert format_metric("Has0_acc_2", 0.842566) == "0.8426"
    assert format_metric("MAE", float("nan"), percent=True) == "n/a"
    assert format_mean_std("Mult_acc_7", 0.4, 0.0, 1, percent=True) == "40.00"
    assert format_mean_std("Mult_acc_7", 0.4, 0.01234, 3, percent=True) == "40.00 ± 1.23"
    assert percent_values({"Mult_acc_7": 0.41236, "MAE": 0.71251, "note": "x"}) == {
        "Mult_acc_7": 41.24,
        "MAE": 0.713,
        "note": "x",
    }


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("numbers")
    data_dir = save_converted(tiny_data(), root / "data")
    return root, Path(data_dir)


def test_train_percent_and_results_csv(two_seed_run, capsys):
    root, data_dir = two_seed_run
    run_dir = root / "runs" / "a"
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_dir),
            "--dataset",
            "synthetic",
            "--run-dir",
            str(run_dir),
            "--seeds",
            "3,4",
            "--percent",
            "--results-csv",
            str(root / "results"),
            *TINY,
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads((run_dir / "results.json").read_text())
    acc, sd = res["mean"]["Non0_acc_2"], res["std"]["Non0_acc_2"]
    assert f"Non0_acc_2       {acc * 100:.2f} ± {sd * 100:.2f}" in out
    assert f"MAE              {res['mean']['MAE']:.3f} ± {res['std']['MAE']:.3f}" in out
    # one seed: no spread; a second row appended to the same per-dataset table
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_dir),
            "--dataset",
            "synthetic",
            "--run-dir",
            str(root / "runs" / "b"),
            "--seeds",
            "5",
            "--results-csv",
            str(root / "results"),
            *TINY,
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert " ± " not in out and "+-" not in out
    with open(root / "results" / "synthetic.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and rows[0]["Model"] == "gsit" and rows[1]["Seeds"] == "5"
    assert rows[0]["Non0_acc_2"] == f"({acc * 100:.2f}, {sd * 100:.2f})"
    assert rows[1]["MAE"].endswith(", 0.000)") and rows[0]["Run"] == str(run_dir)


def test_eval_percent(two_seed_run, capsys):
    root, _ = two_seed_run
    run_dir = root / "runs" / "a"
    assert cli.main(["eval", str(run_dir), "--percent"]) == 0
    out = json.loads(capsys.readouterr().out)
    res = json.loads((run_dir / "results.json").read_text())
    assert out["mean"]["Has0_acc_2"] == pytest.approx(round(res["mean"]["Has0_acc_2"] * 100, 2), abs=0.011)
    assert out["mean"]["MAE"] == pytest.approx(round(res["mean"]["MAE"], 3), abs=0.0011)


def test_report_latex_is_aligned_with_the_best_in_bold(two_seed_run, capsys):
    root, _ = two_seed_run
    res = report(root / "runs", out=root / "rep", curves=False, percent=True)
    tex = (Path(res["out"]) / "report.tex").read_text()
    md = (Path(res["out"]) / "report.md").read_text()
    rows = {r["variant"]: r for r in res["rows"]}
    assert len(res["rows"]) == 1  # both runs are the same (model, dataset, variant): seeds pooled
    r = res["rows"][0]
    assert r["n_seeds"] == 3
    assert r"\begin{tabular}{llr@{\,}r" in tex and r"\textbf{" in tex and r"$\pm$" in tex
    assert r"MAE $\downarrow$" in tex and r"Corr $\uparrow$" in tex
    assert "**" in md and "Acc/F1 in \\%" in tex
    assert rows


def _fake_run(root: Path, name: str, model: str, per_seed: list[dict]) -> None:
    from gsit.config import load_config

    d = root / name
    d.mkdir(parents=True)
    cfg = load_config(model, "mosi").to_dict()
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "results.json").write_text(json.dumps({"model": model, "dataset": "mosi", "per_seed": per_seed}))


def test_report_bold_best_per_column_and_no_spread_for_one_seed(tmp_path):
    metrics = ["Has0_acc_2", "Non0_acc_2", "Has0_F1_score", "Non0_F1_score", "Mult_acc_7", "MAE", "Corr"]

    def seed(s, acc, mae):
        return {"seed": s, "test": {**{m: acc for m in metrics}, "MAE": mae, "Corr": 0.5}}

    _fake_run(tmp_path / "runs", "a", "gsit", [seed(1, 0.80, 0.70), seed(2, 0.82, 0.74)])
    _fake_run(tmp_path / "runs", "b", "mult", [seed(1, 0.79, 0.69)])
    res = report(tmp_path / "runs", out=tmp_path / "rep", curves=False, percent=True)
    tex = (Path(res["out"]) / "report.tex").read_text().splitlines()
    gsit_row = next(line for line in tex if line.startswith("gsit"))
    mult_row = next(line for line in tex if line.startswith("mult"))
    assert r"\textbf{81.00} & $\pm$1.00" in gsit_row  # higher accuracy is better
    assert r"\textbf{0.690} & " in mult_row and r"0.720 & $\pm$0.020" in gsit_row  # lower MAE is better
    assert "pm" not in mult_row  # one seed: no "± 0"
    assert r"\textbf{0.500}" in gsit_row and r"\textbf{0.500}" in mult_row  # ties both bold
    md = (Path(res["out"]) / "report.md").read_text()
    assert "**81.00** ± 1.00" in md and "| **0.690** |" in md
    with open(Path(res["out"]) / "mosi.csv", newline="") as fh:
        rows = {r["Model"]: r for r in csv.DictReader(fh)}
    assert rows["gsit"]["Non0_acc_2"] == "(81.00, 1.00)" and rows["mult"]["MAE"] == "(0.690, 0.000)"
    assert rows["gsit"]["Seeds"] == "2"


def test_predict_all_seeds_rounded_and_ensemble(two_seed_run, tmp_path, capsys):
    root, _ = two_seed_run
    run_dir = root / "runs" / "a"
    out_csv = tmp_path / "p.csv"
    assert cli.main(["predict", str(run_dir), "--out", str(out_csv), "--ensemble"]) == 0
    assert "24 samples x seeds [3, 4] and their ensemble mean" in capsys.readouterr().out
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["seed", "id", "prediction", "label"] and len(rows) == 72
    labels = tiny_data().splits["test"].labels
    for r, y in zip(rows[:24], labels):
        assert r["label"] == str(np.float32(y)) and len(r["label"]) <= 12  # no float32 noise
    by_seed = {
        s: np.array([float(r["prediction"]) for r in rows if r["seed"] == s]) for s in ("3", "4", "ensemble")
    }
    np.testing.assert_allclose(by_seed["ensemble"], (by_seed["3"] + by_seed["4"]) / 2, atol=1e-6)
    one = tmp_path / "one.csv"
    assert cli.main(["predict", str(run_dir), "--out", str(one), "--seed", "4"]) == 0
    with open(one, newline="") as fh:
        rows4 = list(csv.DictReader(fh))
    assert {r["seed"] for r in rows4} == {"4"}
    np.testing.assert_allclose([float(r["prediction"]) for r in rows4], by_seed["4"])
    capsys.readouterr()
    assert cli.main(["predict", str(run_dir), "--out", str(tmp_path / "x.csv"), "--seed", "9"]) == 2
    assert "seed 9" in capsys.readouterr().err
    assert cli.main(["predict", str(run_dir), "--out", str(tmp_path / "y.csv"), "--seed", "first"]) == 2
    assert "'first'" in capsys.readouterr().err
