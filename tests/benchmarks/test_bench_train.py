"""CPU smoke test of benchmarks/bench_train.py: real `gsit train` runs in subprocesses, rows parsed from
the run directories (epochs.csv, results.json, config.json).  Plumbing only, not speed."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_train.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module
    spec.loader.exec_module(module)
    return module


def test_bench_train_cpu_rows(tmp_path):
    bench = _load()
    out = tmp_path / "train.csv"
    rc = bench.main(
        [
            "--datasets",
            "mosi",
            "--models",
            "gsit",
            "--encoders",
            "none",
            "--paths",
            "eager,fast",
            "--device",
            "cpu",
            "--epochs",
            "2",
            "--scale",
            "0.004",
            "--work",
            str(tmp_path / "w"),
            "--out",
            str(out),
            "model.d_model=8",
            "model.num_heads=2",
            "model.num_layers=1",
            "train.batch_size=4",
            "train.accumulation_steps=1",
        ]
    )
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rc == 0, rows
    assert [r["path"] for r in rows] == ["eager", "fast"]
    for r in rows:
        assert r["status"] == "ok" and r["execution"] == "eager"  # auto on a CPU is eager, and says so
        assert float(r["epoch_s"]) > 0 and r["recompiles_after_warmup"] == "0"
        assert int(r["train_samples"]) >= 2 and r["full_train_samples"] == "1284"
        assert r["gpu"] == "cpu"
    assert list(rows[0]) == list(bench.COLUMNS)
