"""``gsit memory-scaling`` (gsit.analysis.memory_scaling / memory_measure / memory_plot) on CPU: the CSV it
writes through the CLI, its option errors, the CPU peak-memory measure, the slope fit (with a quadratic
negative control), and the ``naive`` decomposition against the dense ``reference`` in float64."""

from __future__ import annotations

import csv
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from gsit.analysis import memory_measure
from gsit.analysis import memory_plot as plot_memory
from gsit.analysis import memory_scaling as sweep
from gsit.attention import graph_attention
from gsit.cli import main
from gsit.errors import GsitError
from gsit.graph import GraphMask, ModalGraph, SequenceLayout

MODALITIES = ("text", "vision", "audio")


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# --------------------------------------------------------------------------- the command
def _smoke(tmp_path: Path, scopes: str) -> list[dict]:
    argv = ["memory-scaling", "--device", "cpu", "--out", str(tmp_path), "--scales", "1/32,1/16"]
    argv += ["--scopes", scopes, "--warmup", "0", "--reps", "1"]
    assert main(argv) == 0
    csv_path, png_path = tmp_path / "memory_scaling_cpu.csv", tmp_path / "memory_scaling_cpu.png"
    assert png_path.stat().st_size > 0
    with open(csv_path, newline="") as f:
        assert tuple(next(csv.reader(f))) == sweep.COLUMNS
    rows = _rows(csv_path)
    points = [r for r in rows if r["row"] == "point"]
    assert {(r["scope"], r["backend"]) for r in points} == {
        (s, b) for s in scopes.split(",") for b in ("reference", "naive", "pairs", "triton")
    }
    assert len(points) == 2 * 4 * len(scopes.split(","))
    for r in points:
        assert r["torch"] == torch.__version__ and r["device"] == "cpu" and r["dtype"] == "fp32"
        assert r["command"] == "gsit " + " ".join(argv)
        assert r["mem_method"].startswith("torch.profiler")
        if r["backend"] == "triton":  # never timed on CPU, never replaced by another backend
            assert r["status"].startswith("not run: triton needs CUDA"), r["status"]
            assert r["peak_mem_mb"] == "" and r["median_ms"] == ""
        else:
            assert r["status"] == "ok", r
            assert float(r["peak_mem_mb"]) > 0 and float(r["median_ms"]) > 0
            assert float(r["check_rel_err"]) < 1e-4
    slopes = {(r["scope"], r["backend"]): r for r in rows if r["row"] == "slope"}
    assert len(slopes) == 4 * len(scopes.split(","))
    assert slopes[(scopes.split(",")[0], "triton")]["status"] == "no fit"
    return rows


def test_memory_scaling_cli_attention_writes_csv_and_png_and_never_overwrites(tmp_path, capsys):
    rows = _smoke(tmp_path, "attention")
    before = (tmp_path / "memory_scaling_cpu.csv").read_bytes()
    assert main(["memory-scaling", "--out", str(tmp_path), "--scales", "1/32", "--scopes", "attention"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gsit: error: ") and "memory_scaling_cpu.csv exists" in err
    assert (tmp_path / "memory_scaling_cpu.csv").read_bytes() == before
    slope = next(r for r in rows if r["row"] == "slope" and r["backend"] == "reference")
    assert float(slope["slope_mem"]) > 1.5  # the dense (N, N) scores dominate already at N = 33..65


@pytest.mark.slow
def test_memory_scaling_cli_both_scopes(tmp_path):
    _smoke(tmp_path, "attention,fusion_block")


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--scales", "0,1", "--scales '0,1': need positive"),
        ("--scales", "a/b", "--scales 'a/b'"),
        ("--scales", "1/0", "--scales '1/0'"),
        ("--backends", "pairs,flash", "--backends 'pairs,flash': unknown ['flash']"),
        ("--scopes", "model", "--scopes 'model': unknown ['model']"),
        ("--dataset", "sims", "--dataset 'sims'"),
        ("--dtype", "fp16", "--dtype 'fp16'"),
        ("--device", "tpu", "--device 'tpu'"),
        ("--reps", "0", "--reps 0: must be >= 1"),
        ("--fit-from", "x", "--fit-from 'x'"),
    ],
)
def test_memory_scaling_cli_bad_option_is_one_error_line(tmp_path, capsys, option, value, says):
    assert main(["memory-scaling", "--out", str(tmp_path / "out"), option, value]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gsit: error: ") and says in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()  # nothing started


def test_make_config_defaults_per_device():
    cfg = sweep.make_config()
    assert (cfg.batch, cfg.dtype, cfg.threads, cfg.check_max_n) == (1, "fp32", 1, 600)
    assert cfg.scales == tuple(Fraction(s) for s in ("1/8", "1/4", "1/2", "1", "2"))
    assert (cfg.d_model, cfg.num_heads, cfg.num_layers) == (128, 4, 4)  # the gsit preset
    with pytest.raises(GsitError, match="--scales"):
        sweep.parse_scales("")


def test_cpu_cap_skips_the_dense_rows(tmp_path):
    cfg = memory_measure.MemConfig(scales=(Fraction(1, 8),), cpu_mem_cap_gb=1e-4, reps=1, warmup=0)
    row = memory_measure.measure("attention", "reference", Fraction(1, 8), cfg)
    assert row["status"].startswith("skipped: scores ~") and "cpu-mem-cap-gb" in row["status"]
    assert (
        memory_measure.measure("attention", "pairs", Fraction(1, 8), cfg)["status"] == "ok"
    )  # no scores: never capped


# --------------------------------------------------------------------------- what is measured
def test_cpu_peak_bytes_counts_the_transient_peak_not_what_came_before():
    kept = torch.ones(1 << 20)  # 4 MiB allocated before: not counted

    def step():
        a = torch.ones(1 << 18)  # 1 MiB, freed at return
        b = torch.ones(1 << 20)  # 4 MiB transient
        del b
        return a.sum()

    peak = memory_measure.cpu_peak_bytes(step)
    assert 5 * 2**20 <= peak < 5 * 2**20 + 64 * 1024
    assert memory_measure.cpu_peak_bytes(lambda: kept.add_(1)) < 1024  # in place: nothing allocated


def test_measured_attention_memory_is_quadratic_dense_and_linear_pairs():
    """The measured peak of the dense reference grows ~N^2, the SDPA pairs' ~N (the benchmark's claim,
    on a short CPU sweep)."""
    cfg = memory_measure.MemConfig()
    slopes = {}
    for backend in ("reference", "naive", "pairs"):
        ns, peaks = [], []
        for scale in (Fraction(1, 4), Fraction(1, 2), Fraction(1)):
            layout = memory_measure.scaled_layout("mosei", scale)
            clear, run, _ = memory_measure.make_case("attention", backend, layout, cfg)
            run()
            clear()
            ns.append(layout.total)
            peaks.append(memory_measure.peak_step_bytes(run, "cpu"))
        slopes[backend] = plot_memory.loglog_slope(ns, peaks)
    assert slopes["reference"] > 1.8
    assert slopes["naive"] > 1.6  # per-block scores: still quadratic
    assert slopes["pairs"] < 1.2


def test_score_estimates_order_dense_over_naive_over_flash():
    layout = memory_measure.scaled_layout("mosei", Fraction(1))
    fwd = ModalGraph.named("forward", MODALITIES)
    dense, naive = (memory_measure.score_elements(b, layout, fwd) for b in ("reference", "naive"))
    assert dense == layout.total**2
    assert naive == 46 * 496 + 496 * 496 + 496 * 46  # text->vision, vision->audio, audio->text
    assert (
        memory_measure.score_elements("pairs", layout, fwd)
        == memory_measure.score_elements("triton", layout, fwd)
        == 0
    )


# --------------------------------------------------------------------------- the slope fit
def test_loglog_slope_linear_and_quadratic():
    ns = [128, 256, 512, 1024, 2048, 4096]
    assert plot_memory.loglog_slope(ns, [3.0 * n + 7 for n in ns]) == pytest.approx(1.0, abs=0.02)
    quadratic = plot_memory.loglog_slope(ns, [0.5 * n * n + 3 * n for n in ns])
    assert quadratic == pytest.approx(2.0, abs=0.05)  # the negative control: not linear
    assert math.isnan(plot_memory.loglog_slope([1000], [5.0]))  # one point: no fit


def test_slope_rows_fit_only_ok_points_from_the_fit_scale():
    def point(backend, scale, n, mem, status="ok"):
        return {"row": "point", "scope": "attention", "backend": backend, "scale": scale, "n": n,
                "status": status, "peak_mem_mb": mem, "median_ms": mem}  # fmt: skip

    rows = [point("reference", s, n, n * n / 1e4) for s, n in (("1/8", 100), ("1", 800), ("2", 1600))]
    rows += [point("reference", "4", 3200, "", "failed: OOM (x)")]
    rows += [point("pairs", s, n, n / 100 + (50 if s == "1/8" else 0)) for s, n in (("1/8", 100), ("1", 800))]
    rows += [point("pairs", "2", 1600, 16.0)]
    out = {r["backend"]: r for r in plot_memory.slope_rows(rows, Fraction(1))}
    assert out["reference"]["slope_mem"] == pytest.approx(2.0)
    assert out["pairs"]["slope_mem"] == pytest.approx(1.0)  # the 1/8 outlier is left out of the fit
    assert "2 points" in out["pairs"]["fit"]


# --------------------------------------------------------------------------- the naive decomposition
@pytest.mark.parametrize("graph", ["forward", "backward", "self", "bidirectional"])
@pytest.mark.parametrize("padded", [False, True])
def test_naive_decomposition_equals_reference_float64(graph, padded):
    lengths = (7, 13, 10)
    mask = GraphMask(
        ModalGraph.named(graph, MODALITIES),
        SequenceLayout(MODALITIES, lengths),
        torch.tensor([[7, 0, 4], [2, 13, 10]]) if padded else None,
    )
    g = torch.Generator().manual_seed(len(graph))
    q, k, v, up = (torch.randn(2, 3, sum(lengths), 8, generator=g, dtype=torch.float64) for _ in range(4))

    def run(backend, graph_mask=mask):
        a = [t.clone().requires_grad_(True) for t in (q, k, v)]
        out = graph_attention(*a, graph_mask, backend=backend)
        return [out, *torch.autograd.grad(out, a, up)]

    got, ref = run("naive"), run("reference")
    for name, x, y in zip(("out", "dq", "dk", "dv"), got, ref):
        assert x.dtype == torch.float64
        # the reference's softmax is fp32 by its spec, so agreement is to fp32 precision
        torch.testing.assert_close(x, y, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")
    other = mask.with_graph(ModalGraph.named("full", MODALITIES))  # negative control: a different graph
    assert not torch.allclose(run("naive", other)[0], ref[0], atol=1e-3)
