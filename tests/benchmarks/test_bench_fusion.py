"""Smoke test of the fusion benchmark on CPU: tiny shapes (lengths / 16), eager only, reference / pairs /
MulT.  It checks the plumbing (correctness-first rows, CSV columns, statuses), not speed."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load_bench():
    """The fusion benchmark lives outside the package (benchmarks/bench_fusion.py): import it by path."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location("bench_fusion", BENCHMARKS / "bench_fusion.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_fusion"] = module
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_bench_quick_cpu_writes_checked_rows(tmp_path):
    out = tmp_path / "bench.csv"
    assert (
        bench.main(
            [
                "--quick",
                "--device",
                "cpu",
                "--scale",
                "16",
                "--reps",
                "2",
                "--warmup",
                "1",
                "--padding-batches",
                "1",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    rows = _rows(out)
    assert list(rows[0]) == list(bench.CSV_COLUMNS)
    variants = {(r["model"], r["backend"]) for r in rows}
    assert variants == {("gsit", "reference"), ("gsit", "pairs"), ("mult", "sdpa")}
    assert {r["padding"] for r in rows} == set(bench.PADDINGS)
    for r in rows:
        assert r["status"] == "ok", r
        assert r["dtype"] == "fp32" and r["mode"] == "eager"
        assert float(r["check_rel_err"]) < 1e-4, r
        assert float(r["p10_ms"]) <= float(r["median_ms"]) <= float(r["p90_ms"])


def test_bench_records_refusals_and_budget_skips(tmp_path):
    out = tmp_path / "bench.csv"
    # flex has no CPU backward: its check refuses, and the row says why instead of timing something else
    bench.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--scale",
            "16",
            "--reps",
            "1",
            "--warmup",
            "0",
            "--no-padding",
            "--no-mult",
            "--backends",
            "flex,pairs",
            "--out",
            str(out),
        ]
    )
    rows = {r["backend"]: r for r in _rows(out)}
    assert rows["flex"]["status"].startswith("refused: ") and "no backward on CPU" in rows["flex"]["status"]
    assert rows["flex"]["median_ms"] == ""
    assert rows["pairs"]["status"] == "ok"
    bench.main(
        [
            "--quick",
            "--device",
            "cpu",
            "--scale",
            "16",
            "--no-padding",
            "--max-seconds",
            "0",
            "--out",
            str(out),
        ]
    )
    assert all(r["status"].startswith("skipped: --max-seconds") for r in _rows(out))


def test_bench_only_filter_and_unknown_field(tmp_path):
    cfg, _ = bench.parse_args(["--device", "cpu", "--only", "backend=pairs", "--only", "mode=eager"])
    jobs = bench.plan(cfg)
    assert jobs and all(j.backend == "pairs" and j.mode == "eager" for j in jobs)
    with pytest.raises(SystemExit):
        bench.parse_args(["--device", "cpu", "--only", "colour=red"])


def test_padding_cases_share_samples_and_trim_to_the_batch_maximum():
    cfg = bench.BenchConfig(device="cpu", scale=16, padding_batch=4, padding_batches=3)
    cases = bench.padding_cases(cfg)
    full = cases["padded"].batches[0].layout
    for b in cases["aware"].batches + cases["aware_bucketed"].batches:
        assert b.layout.lengths == tuple(int(v) for v in b.valid.max(dim=0).values)
        assert all(n <= f for n, f in zip(b.layout.lengths, full.lengths))
    tot = [int(b.valid.sum(dim=1).max()) for b in cases["aware_bucketed"].batches]
    assert tot == sorted(tot)  # bucketed batches follow the total valid length
    # the same samples in every padding row
    assert sum(b.valid_tokens for b in cases["aware"].batches) == sum(
        b.valid_tokens for b in cases["aware_bucketed"].batches
    )


def test_plot_writes_png(tmp_path):
    pytest.importorskip("matplotlib")
    import importlib.util
    from pathlib import Path

    out = tmp_path / "bench.csv"
    writer = bench.CsvWriter(out)
    base = {
        "gpu": "cpu",
        "torch": "x",
        "model": "gsit",
        "dataset": "mosei",
        "batch": 32,
        "dtype": "bf16",
        "status": "ok",
        "note": "",
    }
    for backend in ("pairs", "flex"):
        for mult in (1, 2, 4, 8):
            writer.add(
                {
                    **base,
                    "backend": backend,
                    "mode": "eager",
                    "length_mult": mult,
                    "padding": "padded",
                    "median_ms": 10.0 * mult,
                }
            )
        for padding in bench.PADDINGS:
            writer.add(
                {
                    **base,
                    "backend": backend,
                    "mode": "eager",
                    "dataset": "mosi",
                    "length_mult": 1,
                    "padding": padding,
                    "median_ms": 5.0,
                    "note": "8 batches; valid tokens/batch 3000",
                }
            )
    writer.add(
        {
            **base,
            "backend": "triton",
            "mode": "eager",
            "length_mult": 1,
            "padding": "padded",
            "status": "error: RuntimeError: boom",
        }
    )  # not drawn
    spec = importlib.util.spec_from_file_location(
        "plot", Path(__file__).resolve().parents[2] / "benchmarks" / "plot.py"
    )
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    rows = plot.read_rows(out)
    assert set(plot.scaling_series(rows, dataset="mosei", batch="32", dtype="bf16")) == {
        "gsit/pairs/eager",
        "gsit/flex/eager",
    }
    assert set(plot.padding_groups(rows)["gsit/flex/eager"]) == set(bench.PADDINGS)
    png = tmp_path / "bench.png"
    assert plot.main([str(out), "--out", str(png)]) == 0
    assert png.stat().st_size > 1000
