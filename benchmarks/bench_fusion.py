"""Fusion-block benchmark: correctness first, then time.  Writes one CSV row per variant.

    PYTHONPATH=src python benchmarks/bench_fusion.py           # full grid -> benchmarks/results/<gpu>.csv
    PYTHONPATH=src python benchmarks/bench_fusion.py --quick   # smoke run (x1, B=32, bf16)
    python benchmarks/bench_fusion.py --quick --device cpu --scale 16 --out /tmp/bench.csv   # CPU smoke

The fusion-block builder, its fp32 oracle, step timing and the environment columns live in the package
(:mod:`gsit.analysis.fusion_block`, shared with ``gsit memory-scaling``); this script holds the grid.

What is timed: one training step (forward + backward) of the *fusion block only*, from the conv outputs
``x`` (B, N, d) (``requires_grad``) to the pooled features, with a fixed random upstream gradient --
no text encoder, no conv, no head, no optimizer.

* ``gsit``: :class:`gsit.models.gsit.GraphFusion` (forward + backward interlaced encoders of width d, self
  encoder of width 2d, last-step pooling) with each attention backend of the registry;
* ``mult``: MulT's fusion (six cross encoders + three mem encoders + last-step pooling, backend ``sdpa``),
  in the GsiT repository's MulT-dagger setting (d=128, 4 heads, depth-shared layers, causal mask, no
  positional embedding; SPEC §13).

Every dropout is 0 (FlexAttention has none, and the check needs determinism), so the modules run in eval
mode; gradients flow as in training.  Variants (``mode``):

* ``eager``: plain PyTorch;
* ``cudagraph``: one ``torch.cuda.CUDAGraph`` capturing the whole forward + backward step with static
  input/upstream tensors (warmed up on a side stream first); timing replays it;
* ``compile``: ``torch.compile(module, dynamic=False)`` (default mode); ``compile_s`` = wall time of the
  first step (compilation included);
* ``compile_cudagraph``: ``torch.compile(..., mode="reduce-overhead")`` (inductor's CUDA graph trees).

Correctness before time: every variant's pooled output and input gradient ``x.grad`` for the first
``check_batch`` samples of the timed batch are compared with an fp32 eager oracle run on those samples
alone (samples never interact in the fusion block): ``GraphFusion`` with the dense ``reference`` backend,
or MulT's fusion with the math SDPA kernel.  ``check_rel_err`` = max over (output, input gradient) of
``||got - oracle|| / ||oracle||``.  A variant whose error exceeds the tolerance of its dtype is recorded
as failed and not timed; a backend whose ``check`` refuses the input is recorded as ``refused: <reason>``;
an exception is recorded as ``error: <message>``; nothing falls back to another backend.

Timing: CUDA events around each step (``time.perf_counter`` on CPU), ``warmup`` steps, then ``reps``
steps; the CSV holds their median, 10th and 90th percentiles.  ``peak_mem_mb`` is
``torch.cuda.max_memory_allocated`` from just before the module is built to the end of its timing
(inputs included; CUDA graph pools included, since they are allocated during capture).

Padding experiment (``padding`` column; MOSI, B=32): per-sample valid lengths are drawn from a gamma
distribution (shape 2) with the realistic MOSI means (text 14, vision 42, audio 38 of 50/500/375 raw
frames), converted to conv-output lengths, and the same samples are timed as

* ``padded``: the paper's mode, full padded lengths, no valid lengths;
* ``aware_untrimmed``: full padded lengths plus valid lengths (only kernels that skip padded tiles gain);
* ``aware``: each batch trimmed to its longest valid length per modality, plus valid lengths -- what
  ``GsiTConfig(padding_aware=True)`` does;
* ``aware_bucketed``: as ``aware``, after sorting the samples by total valid length (length bucketing).

These rows run ``padding_batches`` batches; ``median_ms`` is the mean over batches of each batch's median
step time (p10/p90: percentiles of the per-batch medians), ``n_tokens`` the mean padded tokens per batch.
For grid rows ``n_tokens`` = B * N (the padded tokens of the batch).

Command line (``python benchmarks/bench_fusion.py --help``): ``--quick`` (x1, B=32, bf16, 5 reps; on CPU a
tiny fp32 eager run of reference / pairs / MulT at lengths / 16), ``--max-seconds`` (rows are run most
informative first, see :func:`plan`; once the budget is spent the remaining rows are written as skipped),
``--only FIELD=V1,V2`` filters, ``--out PATH``.  The CSV is rewritten atomically after every row.
"""

from __future__ import annotations

import argparse
import csv
import gc
import io
import math
import os
import re
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from gsit.analysis.fusion_block import (  # the builders this benchmark shares with gsit memory-scaling
    CONV_KERNEL,
    DATASET_LENGTHS,
    GSIT_MODALITIES,
    BenchInputs,
    build_fusion,
    environment,
    percentile,
    rel_err,
    run_oracle,
    time_steps,
)
from gsit.attention import check_backend
from gsit.data.spec import DATASETS
from gsit.graph import GraphMask, ModalGraph, SequenceLayout

CSV_COLUMNS = (
    "gpu",
    "torch",
    "triton",
    "cudnn",
    "cuda",
    "model",
    "backend",
    "mode",
    "dataset",
    "batch",
    "length_mult",
    "dtype",
    "padding",
    "n_tokens",
    "check_rel_err",
    "status",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "peak_mem_mb",
    "compile_s",
    "note",
)

# the padding experiment: MOSI raw padded lengths (50, 500, 375) and realistic mean valid lengths per modality
MOSI_RAW_MAX = tuple(DATASETS["mosi"].shapes[m][0] for m in GSIT_MODALITIES)
MOSI_RAW_MEAN = (14, 42, 38)
GAMMA_SHAPE = 2.0

BACKENDS = ("reference", "pairs", "flex", "triton")  # GsiT attention backends, registry names
MODES = ("eager", "cudagraph", "compile", "compile_cudagraph")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
PADDINGS = ("padded", "aware_untrimmed", "aware", "aware_bucketed")
MULT_NOTE = "MulT-dagger fusion: 6 cross + 3 mem encoders / shared layers / causal / no positions"


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cuda"
    datasets: tuple[str, ...] = ("mosei", "mosi")
    batches: tuple[int, ...] = (32, 64)
    mults: tuple[int, ...] = (1, 2, 4, 8)
    dtypes: tuple[str, ...] = ("bf16", "fp32")
    backends: tuple[str, ...] = BACKENDS
    modes: tuple[str, ...] = MODES
    mult_model: bool = True  # include MulT rows
    padding: bool = True  # include the padding experiment
    padding_batch: int = 32
    padding_batches: int = 8  # batches per padding row
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    scale: int = 1  # divide every segment length by this (tiny CPU smoke runs)
    warmup: int = 3
    reps: int = 15
    check_batch: int = 2  # samples checked against the fp32 oracle
    tol: dict = field(default_factory=lambda: {"fp32": 1e-4, "bf16": 5e-2})
    mem_budget_gb: float | None = None  # dense reference skipped above this estimate; None: 80% of the GPU
    max_seconds: float | None = None  # stop starting rows after this; later rows are written as skipped
    compile_reserve_s: float = 90.0  # a compile row starts only with this much budget left
    only: tuple[tuple[str, tuple[str, ...]], ...] = ()
    seed: int = 0


@dataclass(frozen=True)
class Job:
    """One CSV row: a variant on one case."""

    model: str
    backend: str
    mode: str
    dataset: str
    batch: int
    length_mult: int
    dtype: str
    padding: str
    tier: float = 0
    experiment: str = "grid"  # grid | padding

    def value(self, name: str) -> str:
        return str(getattr(self, name))


# --------------------------------------------------------------------------- inputs
@dataclass
class Case:
    """The inputs shared by every variant of one (model-independent) configuration."""

    key: tuple
    batches: list[BenchInputs]


def scaled_lengths(lengths: tuple[int, ...], mult: int, scale: int) -> tuple[int, ...]:
    return tuple(max(1, math.ceil(n * mult / scale)) for n in lengths)


def _randn(shape, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def grid_case(dataset: str, batch: int, mult: int, cfg: BenchConfig) -> Case:
    layout = SequenceLayout(GSIT_MODALITIES, scaled_lengths(DATASET_LENGTHS[dataset], mult, cfg.scale))
    n, d, cb = layout.total, cfg.d_model, min(cfg.check_batch, batch)
    out_dim = len(GSIT_MODALITIES) * 2 * d
    # the first cb samples depend only on (dataset, mult): the oracle is shared by every batch size
    seed = cfg.seed * 1000 + mult * 10 + (1 if dataset == "mosei" else 0)
    x = torch.cat([_randn((cb, n, d), seed), _randn((batch - cb, n, d), seed + 1)])
    g = torch.cat([_randn((cb, out_dim), seed + 2), _randn((batch - cb, out_dim), seed + 3)])
    return Case(
        ("grid", dataset, mult, layout.lengths),
        [BenchInputs(layout, x.to(cfg.device), g.to(cfg.device), None, batch * n)],
    )


def sample_valid_lengths(n: int, cfg: BenchConfig) -> np.ndarray:
    """(n, M) conv-output valid lengths with the realistic MOSI distribution (gamma, shape 2, the given
    means), raw lengths clipped to [1, max], then ``max(raw - k + 1, 1)``; divided by ``scale``."""
    rng = np.random.default_rng(cfg.seed + 12345)
    cols = []
    for mean, top in zip(MOSI_RAW_MEAN, MOSI_RAW_MAX):
        raw = np.clip(np.rint(rng.gamma(GAMMA_SHAPE, mean / GAMMA_SHAPE, size=n)), 1, top).astype(np.int64)
        conv = np.maximum(raw - CONV_KERNEL + 1, 1)
        cols.append(np.maximum(np.ceil(conv / cfg.scale), 1).astype(np.int64))
    return np.stack(cols, axis=1)


def padding_cases(cfg: BenchConfig) -> dict[str, Case]:
    """The four padding rows' inputs over the same samples (see the module docstring)."""
    B, K, d = cfg.padding_batch, cfg.padding_batches, cfg.d_model
    full = SequenceLayout(GSIT_MODALITIES, scaled_lengths(DATASET_LENGTHS["mosi"], 1, cfg.scale))
    valid_all = sample_valid_lengths(B * K, cfg)  # (n, M)
    x_all = _randn((B * K, full.total, d), cfg.seed + 777)  # (n, N, d) on CPU
    g_all = _randn((B * K, len(GSIT_MODALITIES) * 2 * d), cfg.seed + 778)
    random_order = np.arange(B * K)
    bucketed_order = np.argsort(valid_all.sum(axis=1), kind="stable")
    cases = {}
    for padding in PADDINGS:
        order = bucketed_order if padding == "aware_bucketed" else random_order
        batches = []
        for i in range(K):
            idx = order[i * B : (i + 1) * B]
            vl = torch.from_numpy(valid_all[idx])  # (B, M)
            if padding in ("padded", "aware_untrimmed"):
                layout, x = full, x_all[idx]
            else:  # trim every segment to the batch's longest valid length
                keep = tuple(int(vl[:, m].max()) for m in range(len(GSIT_MODALITIES)))
                layout = SequenceLayout(GSIT_MODALITIES, keep)
                x = torch.cat([x_all[idx][:, full.segment(m)][:, : keep[m]] for m in range(len(keep))], dim=1)
            valid = None if padding == "padded" else vl.to(cfg.device)
            batches.append(
                BenchInputs(
                    layout,
                    x.to(cfg.device),
                    g_all[idx].to(cfg.device),
                    valid,
                    int(vl.clamp(max=torch.tensor(layout.lengths)).sum()),
                )
            )
        cases[padding] = Case(("padding", padding), batches)
    return cases


# --------------------------------------------------------------------------- the dense reference's size
def reference_bytes(batch: int, n: int, heads: int) -> float:
    """Rough peak of the dense reference fwd+bwd: 12 attention calls, each keeping ~4 fp32 (B, H, N, N)
    tensors for backward, plus ~3 transient ones."""
    return (12 * 4 + 3) * batch * heads * n * n * 4.0


def memory_budget(cfg: BenchConfig) -> float:
    """Bytes the dense reference may take: ``--mem-budget-gb`` or 80% of the GPU (unbounded on CPU)."""
    if cfg.mem_budget_gb is not None:
        return cfg.mem_budget_gb * 2**30
    if str(cfg.device).startswith("cuda"):
        return 0.8 * torch.cuda.get_device_properties(torch.device(cfg.device)).total_memory
    return float("inf")


# --------------------------------------------------------------------------- runners
@dataclass
class Runner:
    step: Callable[[], None]
    result: Callable[[], tuple[torch.Tensor, torch.Tensor]]  # (output, x.grad) of the last step
    compile_s: float | None = None
    note: str = ""


def _zero_grads(module: nn.Module, x: torch.Tensor) -> None:
    for p in module.parameters():
        p.grad = None
    x.grad = None


def make_runner(
    mode: str, module: nn.Module, batch: BenchInputs, dtype: torch.dtype, cfg: BenchConfig
) -> Runner:
    x = batch.x.to(dtype).detach().requires_grad_(True)  # static input
    g = batch.upstream.to(dtype)
    layout, valid = batch.layout, batch.valid
    state: dict = {}

    def eager_step(fn=module):
        _zero_grads(module, x)
        out = fn(x, layout, valid)
        out.backward(g)
        state["out"] = out

    def result():
        return state["out"].detach(), x.grad.detach()

    if mode == "eager":
        eager_step()
        return Runner(eager_step, result)

    if mode == "cudagraph":
        if not str(cfg.device).startswith("cuda"):
            raise RuntimeError("cudagraph mode needs a CUDA device")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (lazy inits, caches, autotuning) outside the capture
            for _ in range(3):
                eager_step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        _zero_grads(module, x)  # grads are allocated inside the graph's pool and rewritten by each replay
        with torch.cuda.graph(graph):
            out = module(x, layout, valid)
            out.backward(g)
        state["out"] = out
        state["graph"] = graph
        graph.replay()
        return Runner(graph.replay, result)

    if mode in ("compile", "compile_cudagraph"):
        from torch._dynamo.utils import counters

        counters.clear()
        compiled = torch.compile(
            module, dynamic=False, mode="reduce-overhead" if mode == "compile_cudagraph" else None
        )

        def compiled_step():
            if mode == "compile_cudagraph":
                torch.compiler.cudagraph_mark_step_begin()
            eager_step(compiled)

        t0 = time.perf_counter()
        compiled_step()
        _sync(cfg.device)
        compile_s = time.perf_counter() - t0
        breaks = sum(counters["graph_break"].values())
        graphs = counters["stats"]["unique_graphs"]
        return Runner(compiled_step, result, compile_s, f"graph_breaks={breaks} graphs={graphs}")

    raise ValueError(f"unknown mode {mode!r}; known: {list(MODES)}")


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


# --------------------------------------------------------------------------- output
def default_out_path(results_dir: Path, device: str) -> Path:
    name = environment(device)["gpu"]
    return Path(results_dir) / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") + ".csv")


class CsvWriter:
    """Rewrites the whole CSV atomically after every row, so an interrupted run keeps its results."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.rows: list[dict] = []
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: dict) -> None:
        self.rows.append(row)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(r.get(k)) for k in CSV_COLUMNS})
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(buf.getvalue())
        os.replace(tmp, self.path)


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "inf" if math.isinf(v) else f"{v:.6g}"
    return str(v)


# --------------------------------------------------------------------------- the plan
def plan(cfg: BenchConfig) -> list[Job]:
    """Every row, most informative first (a ``--max-seconds`` budget cuts from the end):
    tier 0: the first dataset / batch / dtype (default MOSEI, 32, bf16) over the length multipliers, eager
    and CUDA graph (the main plot);  tier 1: the padding experiment;  tier 2: the compiled modes of the
    main configuration at the first multiplier, CUDA-graphed compile first (a compile takes 30-60 s; flex
    and reference later);  tier 3: the fused triton backend compiled + CUDA-graphed at the last
    multiplier;  tier 3.5: the same for the padded and padding-aware bucketed padding rows (one compile
    per batch shape);  tier 4: everything else eager / CUDA graph;  tier 5: everything else compiled."""
    cuda = str(cfg.device).startswith("cuda")
    modes = [m for m in cfg.modes if cuda or m == "eager"]
    variants = [("gsit", b) for b in cfg.backends] + ([("mult", "sdpa")] if cfg.mult_model else [])
    jobs = []
    for dataset in cfg.datasets:
        for batch in cfg.batches:
            for dtype in cfg.dtypes:
                for mult in cfg.mults:
                    main = dataset == cfg.datasets[0] and batch == cfg.batches[0] and dtype == cfg.dtypes[0]
                    for mode in modes:
                        compiled = mode.startswith("compile")
                        for model, backend in variants:
                            if not compiled:
                                tier = 0 if main else 4
                            elif not main or backend in ("flex", "reference"):
                                tier = 5
                            elif mult == cfg.mults[0]:
                                tier = 2 if mode == "compile_cudagraph" else 2.5
                            elif (
                                backend == "triton" and mode == "compile_cudagraph" and mult == cfg.mults[-1]
                            ):
                                tier = 3
                            else:
                                tier = 5
                            jobs.append(
                                Job(model, backend, mode, dataset, batch, mult, dtype, "padded", tier)
                            )
    if cfg.padding:
        dtype = "bf16" if "bf16" in cfg.dtypes else cfg.dtypes[0]
        for padding in PADDINGS:
            for mode in modes:  # compiled rows recompile for every new batch shape: last tier
                for model, backend in variants:
                    if model == "mult" and padding != "padded":
                        continue  # MulT has no padding-aware mode
                    if not mode.startswith("compile"):
                        tier = 1
                    elif (
                        backend == "triton"
                        and mode == "compile_cudagraph"
                        and padding in ("padded", "aware_bucketed")
                    ):
                        tier = 3.5
                    else:
                        tier = 5
                    jobs.append(
                        Job(
                            model,
                            backend,
                            mode,
                            "mosi",
                            cfg.padding_batch,
                            1,
                            dtype,
                            padding,
                            tier,
                            "padding",
                        )
                    )
    jobs = [j for j in jobs if all(j.value(k) in vals for k, vals in cfg.only)]
    return sorted(jobs, key=lambda j: j.tier)  # stable: the grid order inside a tier


# --------------------------------------------------------------------------- one row
def _backend_refusal(job: Job, batch: BenchInputs, dtype: torch.dtype, cfg: BenchConfig) -> str | None:
    """``check`` of the backend on the attention inputs the fusion block will give it (both widths)."""
    fwd, bwd = ModalGraph.structure("original", GSIT_MODALITIES)
    reasons: list[str] = []
    B, n = batch.x.shape[0], batch.layout.total
    for graph, width in (
        (fwd, cfg.d_model),
        (bwd, cfg.d_model),
        (ModalGraph.named("self", GSIT_MODALITIES), 2 * cfg.d_model),
    ):
        hd = width // cfg.num_heads
        q = torch.empty(B, cfg.num_heads, n, hd, device=cfg.device, dtype=dtype, requires_grad=True)
        mask = GraphMask(graph, batch.layout, batch.valid)
        for r in check_backend(job.backend, q, q, q, mask, dropout_p=0.0):
            if r not in reasons:
                reasons.append(r)
    return "; ".join(reasons) if reasons else None


def _cleanup(device: str) -> None:
    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def run_job(job: Job, case: Case, oracle: Callable[[BenchInputs], tuple], cfg: BenchConfig) -> dict:
    dtype = DTYPES[job.dtype]
    cuda = str(cfg.device).startswith("cuda")
    first = case.batches[0]
    row = {
        "model": job.model,
        "backend": job.backend,
        "mode": job.mode,
        "dataset": job.dataset,
        "batch": job.batch,
        "length_mult": job.length_mult,
        "dtype": job.dtype,
        "padding": job.padding,
        "n_tokens": round(statistics.fmean(b.x.shape[0] * b.layout.total for b in case.batches)),
    }
    notes = [MULT_NOTE] if job.model == "mult" else []
    if job.padding != "padded" or len(case.batches) > 1:
        vt = statistics.fmean(b.valid_tokens for b in case.batches)
        notes.append(
            f"{len(case.batches)} batches; valid tokens/batch {vt:.0f}; median_ms = mean of per-batch medians"
        )
    module = runner = None
    try:
        if job.model == "gsit":
            reason = _backend_refusal(job, first, dtype, cfg)
            if reason:
                return {**row, "status": f"refused: {reason}", "note": "; ".join(notes)}
            if job.backend == "reference" and cuda:
                need = max(reference_bytes(b.x.shape[0], b.layout.total, cfg.num_heads) for b in case.batches)
                budget = memory_budget(cfg)
                if need > budget:
                    status = (
                        f"skipped: dense reference needs ~{need / 2**30:.0f} GiB > budget "
                        f"{budget / 2**30:.0f} GiB"
                    )
                    return {**row, "status": status, "note": "; ".join(notes)}
        # correctness first, on the first batch, in the variant's own mode and shape
        ref_out, ref_grad = oracle(first)
        if oracle.note:
            notes.append(oracle.note)
        if cuda:
            _cleanup(cfg.device)
            torch.cuda.reset_peak_memory_stats()
        module = build_fusion(job.model, job.backend, cfg).to(cfg.device, dtype)
        runner = make_runner(job.mode, module, first, dtype, cfg)
        runner.step()
        out, xgrad = runner.result()
        cb = ref_out.shape[0]
        err = max(rel_err(out[:cb], ref_out), rel_err(xgrad[:cb], ref_grad))
        row["check_rel_err"] = err
        if runner.note:
            notes.append(runner.note)
        row["compile_s"] = runner.compile_s
        tol = cfg.tol[job.dtype]
        if not err <= tol:
            status = f"failed: check rel err {err:.3g} > tol {tol:g}"
            return {**row, "status": status, "note": "; ".join(notes)}
        medians = []
        all_times = []
        for i, batch in enumerate(case.batches):
            if i > 0:  # later batches of a padding row: same module, new shapes
                runner = None
                _cleanup(cfg.device)
                runner = make_runner(job.mode, module, batch, dtype, cfg)
            times = time_steps(runner.step, cfg)
            medians.append(statistics.median(times))
            all_times.append(times)
        if len(medians) == 1:
            row.update(
                median_ms=medians[0],
                p10_ms=percentile(all_times[0], 10),
                p90_ms=percentile(all_times[0], 90),
            )
        else:
            row.update(
                median_ms=statistics.fmean(medians),
                p10_ms=percentile(medians, 10),
                p90_ms=percentile(medians, 90),
            )
        if cuda:
            row["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
        return {**row, "status": "ok", "note": "; ".join(notes)}
    except Exception as exc:  # noqa: BLE001 -- recorded in the row, and the run goes on
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")
        if len(msg) > 400:
            msg = msg[:400] + "..."
        traceback.print_exc(limit=3, file=sys.stderr)
        return {**row, "status": f"error: {msg}", "note": "; ".join(notes)}
    finally:
        del module, runner
        if job.mode.startswith("compile"):
            torch._dynamo.reset()  # drop compiled graphs and CUDA graph trees of this module
        _cleanup(cfg.device)


class Oracles:
    """fp32 oracle results, computed once per (model, inputs) and shared by every backend / mode / dtype /
    batch size of that case."""

    def __init__(self, cfg: BenchConfig) -> None:
        self.cfg = cfg
        self.cache: dict = {}

    def for_case(self, model: str, case: Case, cb: int):
        cfg = self.cfg
        backend, note = "reference", ""
        n = case.batches[0].layout.total
        if model == "gsit" and reference_bytes(cb, n, cfg.num_heads) > memory_budget(cfg):
            backend, note = "pairs", "oracle: pairs backend fp32 (the dense reference does not fit)"

        def oracle(batch: BenchInputs):
            key = (model, case.key, cb, backend)
            if key not in self.cache:
                if len(self.cache) > 8:
                    self.cache.clear()
                self.cache[key] = run_oracle(model, batch, cb, cfg, backend=backend)
                _cleanup(cfg.device)
            return self.cache[key]

        oracle.note = note
        return oracle


def _log(msg: str) -> None:
    print(msg, flush=True)


def run(cfg: BenchConfig, out_path: Path, *, log=_log) -> list[dict]:
    """Run the plan, writing ``out_path`` after every row; returns the rows."""
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (PyTorch's default, made explicit)
    torch.backends.cudnn.allow_tf32 = False
    if hasattr(torch._dynamo.config, "recompile_limit"):
        torch._dynamo.config.recompile_limit = 64  # many shapes in one process
    else:  # pragma: no cover - older torch
        torch._dynamo.config.cache_size_limit = 64
    if hasattr(torch._dynamo.config, "fail_on_recompile_limit_hit"):
        torch._dynamo.config.fail_on_recompile_limit_hit = True  # never a silent fall back to eager
    env = environment(cfg.device)
    writer = CsvWriter(out_path)
    oracles = Oracles(cfg)
    jobs = plan(cfg)
    start = time.perf_counter()
    log(
        f"[bench] {len(jobs)} rows planned on {env['gpu']} (torch {env['torch']}, triton {env['triton']}) "
        f"-> {out_path}"
    )
    cases: dict = {}
    padding = None
    for i, job in enumerate(jobs):
        elapsed = time.perf_counter() - start
        left = None if cfg.max_seconds is None else cfg.max_seconds - elapsed
        compiled = job.mode.startswith("compile")
        if left is not None and (left <= 0 or (compiled and left < cfg.compile_reserve_s)):
            row = {
                "model": job.model,
                "backend": job.backend,
                "mode": job.mode,
                "dataset": job.dataset,
                "batch": job.batch,
                "length_mult": job.length_mult,
                "dtype": job.dtype,
                "padding": job.padding,
                "status": f"skipped: --max-seconds {cfg.max_seconds:g} budget ({elapsed:.0f} s used)",
            }
            writer.add({**env, **row})
            continue
        if job.experiment == "padding":
            if padding is None:
                padding = padding_cases(cfg)
            case = padding[job.padding]
        else:
            key = (job.dataset, job.batch, job.length_mult)
            if key not in cases:
                cases.clear()  # one grid case at a time on the device
                _cleanup(cfg.device)
                cases[key] = grid_case(job.dataset, job.batch, job.length_mult, cfg)
            case = cases[key]
        cb = min(cfg.check_batch, job.batch)
        n = case.batches[0].layout.total
        if job.model == "gsit" and n > 4096:
            cb = 1  # the dense oracle at long lengths: one sample
        t0 = time.perf_counter()
        row = run_job(job, case, oracles.for_case(job.model, case, cb), cfg)
        writer.add({**env, **row})
        log(
            f"[bench] {i + 1}/{len(jobs)} {job.model}/{job.backend}/{job.mode} {job.dataset} B={job.batch} "
            f"x{job.length_mult} {job.dtype} {job.padding}: {row['status'][:160]} "
            f"median={_fmt(row.get('median_ms'))} ms err={_fmt(row.get('check_rel_err'))} "
            f"({time.perf_counter() - t0:.1f} s)"
        )
    log(f"[bench] done in {time.perf_counter() - start:.0f} s; {len(writer.rows)} rows in {out_path}")
    return writer.rows


# --------------------------------------------------------------------------- command line
def _csv_list(text: str, cast=str) -> tuple:
    return tuple(cast(t.strip()) for t in text.split(",") if t.strip())


def parse_args(argv: list[str] | None = None, *, results_dir: Path | None = None):
    p = argparse.ArgumentParser(
        description="GsiT / MulT fusion-block benchmark (correctness first, then time)"
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: x1, B=32, bf16, few reps (on CPU: B=2, fp32, eager, reference/pairs/MulT)",
    )
    p.add_argument("--out", default=None, help="CSV path (default: benchmarks/results/<gpu-name>.csv)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=None,
        help="stop starting rows after this many seconds (the rest are written as skipped)",
    )
    p.add_argument(
        "--only",
        action="append",
        default=[],
        help="keep rows whose FIELD is one of the values: FIELD=V1,V2 (fields: model backend mode "
        "dataset batch length_mult dtype padding); repeatable",
    )
    p.add_argument("--datasets", default=None, help="comma list (default mosei,mosi)")
    p.add_argument("--batches", default=None, help="comma list (default 32,64)")
    p.add_argument("--mults", default=None, help="length multipliers (default 1,2,4,8)")
    p.add_argument("--dtypes", default=None, help="bf16,fp32")
    p.add_argument("--backends", default=None, help=f"GsiT attention backends (default {','.join(BACKENDS)})")
    p.add_argument("--modes", default=None, help=f"default {','.join(MODES)}")
    p.add_argument("--no-mult", action="store_true", help="leave out the MulT rows")
    p.add_argument("--no-padding", action="store_true", help="leave out the padding experiment")
    p.add_argument("--padding-batches", type=int, default=None, help="batches per padding row (default 8)")
    p.add_argument(
        "--scale",
        type=int,
        default=None,
        help="divide every segment length by this (default 1; 16 with --quick on CPU)",
    )
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--check-batch", type=int, default=2)
    p.add_argument("--tol-fp32", type=float, default=1e-4)
    p.add_argument("--tol-bf16", type=float, default=5e-2)
    p.add_argument("--mem-budget-gb", type=float, default=None)
    p.add_argument(
        "--compile-reserve",
        type=float,
        default=90.0,
        help="seconds of budget a compile row needs to start (with --max-seconds)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)

    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU (use --device cpu)")
    scale = args.scale if args.scale is not None else (16 if args.quick and not cuda else 1)
    cfg = BenchConfig(
        device=args.device,
        scale=scale,
        check_batch=args.check_batch,
        seed=args.seed,
        tol={"fp32": args.tol_fp32, "bf16": args.tol_bf16},
        mem_budget_gb=args.mem_budget_gb,
        max_seconds=args.max_seconds,
        compile_reserve_s=args.compile_reserve,
    )
    if args.quick and cuda:
        cfg = replace(cfg, mults=(1,), warmup=2, reps=5, padding_batches=2, batches=(32,), dtypes=("bf16",))
    elif args.quick:  # a CPU smoke run of the plumbing, well under a minute
        cfg = replace(
            cfg,
            mults=(1,),
            warmup=1,
            reps=3,
            padding_batches=2,
            batches=(2,),
            dtypes=("fp32",),
            modes=("eager",),
            backends=("reference", "pairs"),
            padding_batch=2,
            datasets=("mosi",),
        )
    overrides = {}
    if args.datasets:
        overrides["datasets"] = _csv_list(args.datasets)
    if args.batches:
        overrides["batches"] = _csv_list(args.batches, int)
    if args.mults:
        overrides["mults"] = _csv_list(args.mults, int)
    if args.dtypes:
        overrides["dtypes"] = _csv_list(args.dtypes)
    if args.backends:
        overrides["backends"] = _csv_list(args.backends)
    if args.modes:
        overrides["modes"] = _csv_list(args.modes)
    if args.padding_batches is not None:
        overrides["padding_batches"] = args.padding_batches
    if args.warmup is not None:
        overrides["warmup"] = args.warmup
    if args.reps is not None:
        overrides["reps"] = args.reps
    if args.no_mult:
        overrides["mult_model"] = False
    if args.no_padding:
        overrides["padding"] = False
    only = []
    for spec in args.only:
        if "=" not in spec:
            p.error(f"--only {spec!r}: expected FIELD=V1,V2")
        name, values = spec.split("=", 1)
        if name not in Job.__dataclass_fields__ or name in ("tier", "experiment"):
            p.error(f"--only {spec!r}: unknown field {name!r}")
        only.append((name, _csv_list(values)))
    overrides["only"] = tuple(only)
    cfg = replace(cfg, **overrides)
    for name, allowed in (("dtypes", DTYPES), ("modes", MODES), ("datasets", DATASET_LENGTHS)):
        bad = [v for v in getattr(cfg, name) if v not in allowed]
        if bad:
            p.error(f"--{name}: unknown {bad}; known: {list(allowed)}")
    results_dir = results_dir or Path("benchmarks/results")
    out = Path(args.out) if args.out else default_out_path(results_dir, cfg.device)
    return cfg, out


def main(argv: list[str] | None = None, *, results_dir: Path | None = None) -> int:
    cfg, out = parse_args(argv, results_dir=results_dir)
    run(cfg, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(results_dir=Path(__file__).resolve().parent / "results"))
