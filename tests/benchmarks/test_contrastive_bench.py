"""benchmarks/contrastive.py collect: per-seed rows and mean/std rows from ablation directories, the
commands kept in the JSON, and no file overwritten.  (The ``features`` step needs the shared MOSI data and
MiniLM; it is what produced benchmarks/results/contrastive/.)"""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "contrastive.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_contrastive", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_contrastive"] = module
    spec.loader.exec_module(module)
    return module


def _arm(root: Path, name: str, weight: float, maes: list[float]) -> None:
    d = root / name
    d.mkdir(parents=True)
    cfg = {"model_name": "gsit", "train": {"contrastive_weight": weight, "contrastive_temperature": 0.1}}
    (d / "config.json").write_text(json.dumps(cfg))
    metrics = ("Corr", "Non0_acc_2", "Has0_acc_2", "Non0_F1_score", "Mult_acc_7")
    for i, m in enumerate(maes):
        r = {
            "seed": 1111 + i,
            "best_epoch": 3,
            "epochs": 7,
            "valid_loss": m + 0.1,
            "test": {"MAE": m, **{k: 0.5 for k in metrics}},
        }
        (d / f"seed-{1111 + i}").mkdir()
        (d / f"seed-{1111 + i}" / "results.json").write_text(json.dumps(r))


def test_collect_writes_per_seed_and_mean_std_rows(tmp_path):
    bench = _load()
    root = tmp_path / "abl"
    _arm(root, "original", 0.0, [1.0, 2.0, 3.0])
    _arm(root, "contrastive", 0.1, [1.0, 1.0, 1.0])
    (tmp_path / "cmds.txt").write_text("gsit ablate --variants original,contrastive\n")
    _arm(tmp_path / "again", "contrastive", 0.1, [1.0])  # the same seed from another process: kept once
    out = tmp_path / "res"
    args = [
        "collect",
        "--run",
        f"recall={root}",
        "--run",
        f"recall={tmp_path / 'again'}",
        "--commands",
        str(tmp_path / "cmds.txt"),
        "--out",
        str(out),
    ]
    assert bench.main(args) == 0
    rows = list(csv.DictReader((out / "contrastive.csv").open()))
    assert len(rows) == 6 + 4  # 2 arms x 3 seeds, then mean and std per arm
    mean = next(r for r in rows if r["arm"] == "original" and r["seed"] == "mean")
    std = next(r for r in rows if r["arm"] == "original" and r["seed"] == "std")
    assert float(mean["MAE"]) == pytest.approx(2.0) and float(std["MAE"]) == pytest.approx((2 / 3) ** 0.5)
    doc = json.loads((out / "contrastive.json").read_text())
    assert doc["commands"] == ["gsit ablate --variants original,contrastive"]
    assert doc["summary"]["recall/contrastive"]["MAE"]["std"] == 0.0
    with pytest.raises(SystemExit, match="exists"):
        bench.main(args)
    _arm(tmp_path / "other", "contrastive", 0.1, [9.0])  # negative control: a disagreeing copy is refused
    bad = [
        "collect",
        "--run",
        f"recall={root}",
        "--run",
        f"recall={tmp_path / 'other'}",
        "--out",
        str(out / "b"),
    ]
    with pytest.raises(SystemExit, match="differs"):
        bench.main(bad)
