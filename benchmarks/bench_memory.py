"""Memory scaling of the decomposition (paper Appendix B.2): peak memory and time against sequence length.

    PYTHONPATH=src python benchmarks/bench_memory.py --device cpu  --out benchmarks/results   # ~3 min
    PYTHONPATH=src python benchmarks/bench_memory.py --device cuda --out benchmarks/results
    python benchmarks/plot_memory.py benchmarks/results/memory_scaling_cpu.csv --out /tmp/m.png  # redraw

Every segment of a MOSEI-like layout (conv-output lengths text 46, vision 496, audio 496; ``--dataset mosi``:
46/496/371) is multiplied by a length scale s in ``--scales`` (1/8 ... 64 on the GPU).  For each (scale,
scope, backend) one row: forward + backward of

* ``attention``: ``graph_attention`` alone on the GsiT forward graph, (B, H, N, d/H) inputs;
* ``fusion_block``: :class:`gsit.models.gsit.GraphFusion` (forward, backward and self encoders, depth-shared
  layers, the preset's d_model / num_heads / num_layers), from ``x`` (B, N, d) to the pooled features,

with the backends ``reference`` (dense masked softmax: materialises (B, H, N, N) fp32 scores), ``naive``
(the paper-era naive decomposition: one bmm + softmax + bmm per query block, materialises each block's
(B, H, Lq, Lk) scores), ``pairs`` (one SDPA call per query block) and ``triton`` (fused kernel, GPU only).

Peak memory (``peak_mem_mb``): bytes allocated during one forward + backward step above what was
allocated just before it (inputs, parameters, cached masks; gradients are set to None first, so the
gradients the step creates count).  GPU: ``torch.cuda.max_memory_allocated() - memory_allocated()`` after
``reset_peak_memory_stats``.  CPU: the running sum of the allocation / free events that torch's CPU
allocator reports to ``torch.profiler`` (``profile_memory=True``), its maximum over the step
(:func:`cpu_peak_bytes`).  The CPU number counts every tensor torch allocates on the CPU, like the GPU
number, but not memory that oneDNN / MKL / OpenMP allocate on their own, Python objects, or allocator
fragmentation; it is not resident-set size.  Neither counts what the un-measured warm-up step builds and
caches: the reference's (N, N) bool mask (N^2 bytes, cached per shape, as in training).  Time: median
(p10, p90) of ``--reps`` steps after ``--warmup`` (CUDA events on the GPU, wall clock on CPU), in other
steps than the memory step (the profiler adds overhead).

Correctness first: at lengths up to ``--check-max-n`` each row's output and input gradients on the first
sample are compared with the fp32 ``reference`` (``check_rel_err``); over the tolerance the row is
``failed`` and not timed.  Statuses: ``ok``; ``failed: OOM ...`` (the GPU ran out of memory; larger
scales of that backend and scope are then ``skipped``); ``skipped: ...`` (CPU: the dense score estimate is
over ``--cpu-mem-cap-gb``; or the ``--max-seconds`` budget); ``not run: <reason>`` (the backend refuses the
input, e.g. triton on CPU -- never another backend timed in its place); ``error: ...``.

Slopes: for each (scope, backend) one ``row=slope`` line with the least-squares slope of log(peak memory)
and of log(time) against log(N) over the ok points at scale >= ``--fit-from`` (default 1/2:
half the paper's lengths and above, where fixed costs weigh less).  Slope ~1: linear; ~2: quadratic.
What it does not show: padding-aware runs, other graphs than GsiT's, whole-model or optimizer memory.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import os
import re
import statistics
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_fusion import (  # noqa: E402  (this folder)
    DATASET_LENGTHS,
    GSIT_MODALITIES,
    BenchConfig,
    BenchInputs,
    _percentile,
    _rel_err,
    build_fusion,
    environment,
    run_oracle,
    time_steps,
)
from plot_memory import SCOPES, plot, slope_rows  # noqa: E402  (this folder)

from gsit.attention import check_backend, graph_attention  # noqa: E402
from gsit.config import load_config  # noqa: E402
from gsit.graph import GraphMask, ModalGraph, SequenceLayout  # noqa: E402

COLUMNS = (
    "row",
    "gpu",
    "torch",
    "triton",
    "cuda",
    "device",
    "scope",
    "backend",
    "dataset",
    "batch",
    "heads",
    "d_model",
    "dtype",
    "threads",
    "scale",
    "n",
    "lengths",
    "status",
    "check_rel_err",
    "peak_mem_mb",
    "median_ms",
    "p10_ms",
    "p90_ms",
    "slope_mem",
    "slope_time",
    "fit",
    "mem_method",
    "command",
)
BACKENDS = ("reference", "naive", "pairs", "triton")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
TOL = {"bf16": 5e-2, "fp32": 1e-4}
GPU_SCALES = "1/8,1/4,1/2,1,2,4,8,16,32,64"
CPU_SCALES = "1/8,1/4,1/2,1,2"
MEM_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated minus allocated before the step",
    "cpu": "torch.profiler allocation events (torch CPU allocator): peak of the running sum over the step",
}


@dataclass(frozen=True)
class MemConfig:
    device: str = "cpu"
    dataset: str = "mosei"
    batch: int = 1
    dtype: str = "fp32"
    d_model: int = 128
    num_heads: int = 4
    num_layers: int = 4
    scales: tuple[Fraction, ...] = tuple(Fraction(s) for s in CPU_SCALES.split(","))
    scopes: tuple[str, ...] = SCOPES
    backends: tuple[str, ...] = BACKENDS
    warmup: int = 1
    reps: int = 3
    cpu_mem_cap_gb: float = 2.0
    check_max_n: int = 2100
    fit_from: Fraction = Fraction(1, 2)
    max_seconds: float | None = None
    threads: int | None = None  # torch.set_num_threads on CPU (None: torch's default)
    seed: int = 0
    command: str = ""


# --------------------------------------------------------------------------- sizes
def scaled_layout(dataset: str, scale: Fraction) -> SequenceLayout:
    return SequenceLayout(GSIT_MODALITIES, tuple(max(1, round(n * scale)) for n in DATASET_LENGTHS[dataset]))


def score_elements(backend: str, layout: SequenceLayout, graph: ModalGraph) -> int:
    """Score-matrix entries one head of one sample materialises: N^2 (dense ``reference``), the sum of
    Lq * Lk over the allowed blocks (``naive``), 0 for the flash-style backends."""
    if backend == "reference":
        return layout.total**2
    if backend == "naive":
        lens = layout.lengths
        return sum(lens[i] * sum(lens[j] for j in ks) for i, ks in enumerate(graph.key_sets))
    return 0


def score_bytes_estimate(scope: str, backend: str, layout: SequenceLayout, cfg: MemConfig) -> float:
    """Rough fwd+bwd bytes of the materialised scores: ~4 fp32 score-sized tensors kept per attention call
    plus ~3 transient (12 calls in the fusion block: 3 encoders x 4 layers; forward graph alone else)."""
    fwd, bwd = ModalGraph.structure("original", GSIT_MODALITIES)
    per = cfg.batch * cfg.num_heads * 4.0
    if scope == "attention":
        return 7 * per * score_elements(backend, layout, fwd)
    graphs = (fwd, bwd, ModalGraph.named("self", GSIT_MODALITIES))
    worst = max(score_elements(backend, layout, g) for g in graphs)
    return (sum(4 * cfg.num_layers * score_elements(backend, layout, g) for g in graphs) + 3 * worst) * per


# --------------------------------------------------------------------------- measuring
def cpu_peak_bytes(step) -> int:
    """Peak bytes torch allocates on the CPU during ``step()`` above what was allocated before it: the
    maximum running sum of the allocation (+) and free (-) events of ``torch.profiler`` with
    ``profile_memory=True`` (ties in time: allocations first, an upper bound)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
            events.append((node.start_time_ns, -node.typed[1].alloc_size))
        stack.extend(node.children)
    if not events:
        raise RuntimeError("torch.profiler recorded no CPU allocation events (profile_memory=True)")
    running = peak = 0
    for _, neg_size in sorted(events):
        running -= neg_size
        peak = max(peak, running)
    return peak


def peak_step_bytes(step, device: str) -> int:
    if not device.startswith("cuda"):
        return cpu_peak_bytes(step)
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def _randn(shape, seed: int, cfg: MemConfig) -> torch.Tensor:
    t = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return t.to(cfg.device, DTYPES[cfg.dtype])


def make_case(scope: str, backend: str, layout: SequenceLayout, cfg: MemConfig):
    """(clear, run, check): ``clear()`` sets the gradients to None, ``run()`` is one fwd+bwd on the batch,
    ``check()`` the max relative error of the first sample's output and input gradients against the fp32
    reference."""
    n, H, d, dtype = layout.total, cfg.num_heads, cfg.d_model, DTYPES[cfg.dtype]
    if scope == "attention":
        mask = GraphMask(ModalGraph.named("forward", GSIT_MODALITIES), layout)
        shape = (cfg.batch, H, n, d // H)
        q, k, v = (_randn(shape, cfg.seed + i, cfg).requires_grad_(True) for i in range(3))
        up = _randn(shape, cfg.seed + 3, cfg)

        def clear():
            q.grad = k.grad = v.grad = None

        def run():
            graph_attention(q, k, v, mask, backend=backend).backward(up)

        def check():
            def run(name, dt):
                a = [t[:1].detach().to(dt).requires_grad_(True) for t in (q, k, v)]
                out = graph_attention(*a, mask, backend=name)
                return [out, *torch.autograd.grad(out, a, up[:1].to(dt))]

            return max(_rel_err(x, y) for x, y in zip(run(backend, dtype), run("reference", torch.float32)))

        return clear, run, check
    bench_cfg = BenchConfig(
        device=cfg.device, d_model=d, num_heads=H, num_layers=cfg.num_layers, seed=cfg.seed
    )
    module = build_fusion("gsit", backend, bench_cfg).to(cfg.device, dtype)
    x = _randn((cfg.batch, n, d), cfg.seed, cfg).requires_grad_(True)
    up = _randn((cfg.batch, len(GSIT_MODALITIES) * 2 * d), cfg.seed + 1, cfg)

    def clear():
        for p in module.parameters():
            p.grad = None
        x.grad = None

    def run():
        module(x, layout).backward(up)

    def check():
        one = BenchInputs(layout, x[:1].detach().float(), up[:1].float(), None, n)
        ref_out, ref_grad = run_oracle("gsit", one, 1, bench_cfg)
        x1 = x[:1].detach().clone().requires_grad_(True)
        out = module(x1, layout)
        out.backward(up[:1])
        return max(_rel_err(out, ref_out), _rel_err(x1.grad, ref_grad))

    return clear, run, check


def refusal(scope: str, backend: str, layout: SequenceLayout, cfg: MemConfig) -> str | None:
    """Why ``backend`` will not run here (its own ``check_backend`` reasons; triton under Triton's CPU
    interpreter is not timed: interpreter timings say nothing about the kernel)."""
    if backend == "triton" and not cfg.device.startswith("cuda"):
        return "triton needs CUDA tensors (TRITON_INTERPRET=1 runs it on CPU, far too slow to time)"
    widths = (cfg.d_model,) if scope == "attention" else (cfg.d_model, 2 * cfg.d_model)
    mask = GraphMask(ModalGraph.named("forward", GSIT_MODALITIES), layout)
    for w in widths:
        shape = (1, cfg.num_heads, layout.total, w // cfg.num_heads)
        q = torch.empty(shape, device=cfg.device, dtype=DTYPES[cfg.dtype], requires_grad=True)
        reasons = check_backend(backend, q, q, q, mask)
        if reasons:
            return "; ".join(reasons)
    return None


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _release(device: str) -> None:
    import gc

    from gsit import graph

    graph._static_dense.cache_clear()  # the reference's cached (N, N) masks: each row builds its own
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def measure(scope: str, backend: str, scale: Fraction, cfg: MemConfig) -> dict:
    """One row (without the environment columns)."""
    layout = scaled_layout(cfg.dataset, scale)
    row = {"row": "point", "scope": scope, "backend": backend, "scale": str(scale), "n": layout.total}
    row["lengths"] = "/".join(map(str, layout.lengths))
    reason = refusal(scope, backend, layout, cfg)
    if reason:
        return {**row, "status": f"not run: {reason}"}
    if not cfg.device.startswith("cuda"):
        need = score_bytes_estimate(scope, backend, layout, cfg)
        if need > cfg.cpu_mem_cap_gb * 2**30:
            gib = need / 2**30
            return {
                **row,
                "status": f"skipped: scores ~{gib:.1f} GiB > --cpu-mem-cap-gb {cfg.cpu_mem_cap_gb:g}",
            }
    clear = run = check = None
    try:
        clear, run, check = make_case(scope, backend, layout, cfg)
        if layout.total <= cfg.check_max_n:
            err = check()
            row["check_rel_err"] = err
            if not err <= TOL[cfg.dtype]:
                return {**row, "status": f"failed: check rel err {err:.3g} > tol {TOL[cfg.dtype]:g}"}
        _release(cfg.device)
        run()  # lazy initialisation (kernels, caches) outside the measured step
        clear()  # gradients freed before the measured step, not inside it
        row["peak_mem_mb"] = peak_step_bytes(run, cfg.device) / 2**20
        times = time_steps(lambda: (clear(), run()), cfg)
        row.update(
            median_ms=statistics.median(times), p10_ms=_percentile(times, 10), p90_ms=_percentile(times, 90)
        )
        return {**row, "status": "ok"}
    except Exception as exc:  # noqa: BLE001 -- recorded in the row, the sweep goes on
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        return {**row, "status": f"failed: OOM ({msg})" if _is_oom(exc) else f"error: {msg}"}
    finally:
        clear = run = check = None  # free the case before the next row
        _release(cfg.device)


# --------------------------------------------------------------------------- files
def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


def write_csv(path: Path, rows: list[dict]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _fmt(r.get(k)) for k in COLUMNS})
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(buf.getvalue())
    os.replace(tmp, path)


def output_paths(out_dir: Path, device: str) -> tuple[Path, Path]:
    tag = (
        "cpu"
        if not device.startswith("cuda")
        else re.sub(r"[^A-Za-z0-9_.-]+", "-", environment(device)["gpu"])
    )
    return out_dir / f"memory_scaling_{tag}.csv", out_dir / f"memory_scaling_{tag}.png"


# --------------------------------------------------------------------------- the sweep
def run(cfg: MemConfig, csv_path: Path, *, log=print) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    env = environment(cfg.device)
    fixed = {
        **{k: env[k] for k in ("gpu", "torch", "triton", "cuda")},
        "device": cfg.device,
        "dataset": cfg.dataset,
        "batch": cfg.batch,
        "heads": cfg.num_heads,
        "d_model": cfg.d_model,
        "dtype": cfg.dtype,
        "threads": cfg.threads if cfg.threads else torch.get_num_threads(),
        "mem_method": MEM_METHOD["cuda" if cfg.device.startswith("cuda") else "cpu"],
        "command": cfg.command,
    }
    rows: list[dict] = []
    dead: dict[tuple[str, str], str] = {}  # (scope, backend) -> why larger scales are skipped
    start = time.perf_counter()
    for scale in cfg.scales:
        for scope in cfg.scopes:
            for backend in cfg.backends:
                used = time.perf_counter() - start
                if (scope, backend) in dead:
                    layout = scaled_layout(cfg.dataset, scale)
                    row = {"row": "point", "scope": scope, "backend": backend, "scale": str(scale)}
                    row.update(n=layout.total, status=f"skipped: {dead[(scope, backend)]}")
                elif cfg.max_seconds is not None and used > cfg.max_seconds:
                    layout = scaled_layout(cfg.dataset, scale)
                    row = {"row": "point", "scope": scope, "backend": backend, "scale": str(scale)}
                    row.update(n=layout.total, status=f"skipped: --max-seconds {cfg.max_seconds:g} spent")
                else:
                    t0 = time.perf_counter()
                    row = measure(scope, backend, scale, cfg)
                    if row["status"].startswith(("failed: OOM", "skipped: scores")):
                        dead[(scope, backend)] = f"{row['status'].split(' (')[0]} at scale {scale}"
                    log(
                        f"[memory] x{scale} {scope} {backend} n={row['n']}: {row['status'][:120]} "
                        f"peak={_fmt(row.get('peak_mem_mb'))} MiB median={_fmt(row.get('median_ms'))} ms "
                        f"({time.perf_counter() - t0:.1f} s)"
                    )
                rows.append({**fixed, **row})
                write_csv(csv_path, rows)
    rows += [{**fixed, **r} for r in slope_rows(rows, cfg.fit_from)]
    write_csv(csv_path, rows)
    for r in (r for r in rows if r["row"] == "slope"):
        mem, tim = _fmt(r.get("slope_mem")), _fmt(r.get("slope_time"))
        log(f"[memory] slope {r['scope']} {r['backend']}: mem {mem} time {tim} {r.get('fit', '')}")
    log(f"[memory] done in {time.perf_counter() - start:.0f} s -> {csv_path}")
    return rows


# --------------------------------------------------------------------------- command line
def _scales(text: str) -> tuple[Fraction, ...]:
    try:
        scales = tuple(Fraction(t.strip()) for t in text.split(",") if t.strip())
    except (ValueError, ZeroDivisionError) as exc:
        raise argparse.ArgumentTypeError(f"--scales {text!r}: {exc} (expected e.g. 1/8,1/4,1,2)") from exc
    if not scales or any(s <= 0 for s in scales):
        raise argparse.ArgumentTypeError(f"--scales {text!r}: need positive fractions such as 1/8,1,2")
    return tuple(sorted(set(scales)))


def _names(text: str, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"{flag} {text!r}: unknown {bad}; known: {', '.join(known)}")
    return names


def parse_args(argv: list[str] | None = None) -> tuple[MemConfig, Path, Path]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", type=Path, required=True, help="folder for memory_scaling_<device>.csv / .png")
    p.add_argument("--dataset", default="mosei", choices=sorted(DATASET_LENGTHS))
    p.add_argument("--scales", type=_scales, default=None, help=f"GPU default {GPU_SCALES}; CPU {CPU_SCALES}")
    p.add_argument("--scopes", type=lambda t: _names(t, SCOPES, "--scopes"), default=SCOPES)
    p.add_argument(
        "--backends", type=lambda t: _names(t, BACKENDS + ("flex",), "--backends"), default=BACKENDS
    )
    p.add_argument("--batch", type=int, default=None, help="default 8 on the GPU, 1 on CPU")
    p.add_argument(
        "--dtype", choices=sorted(DTYPES), default=None, help="default bf16 on the GPU, fp32 on CPU"
    )
    p.add_argument("--warmup", type=int, default=None, help="default 3 on the GPU, 1 on CPU")
    p.add_argument("--reps", type=int, default=None, help="default 10 on the GPU, 3 on CPU")
    p.add_argument(
        "--cpu-mem-cap-gb", type=float, default=2.0, help="CPU: skip rows whose scores exceed this"
    )
    p.add_argument(
        "--check-max-n",
        type=int,
        default=None,
        help="check against the reference up to this N (GPU 2100, CPU 600)",
    )
    p.add_argument("--fit-from", type=Fraction, default=Fraction(1, 2), help="fit slopes over scales >= this")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default 1 on CPU: shared machines)"
    )
    p.add_argument("--max-seconds", type=float, default=None, help="later rows are written as skipped")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        p.error(f"--device {args.device}: torch {torch.__version__} sees no CUDA GPU (use --device cpu)")
    if not cuda and args.device != "cpu":
        p.error(f"--device {args.device!r}: expected cpu or cuda[:i]")
    if cuda and ":" in args.device:
        torch.cuda.set_device(torch.device(args.device))
    preset = load_config("gsit", args.dataset).model  # the paper preset's widths
    cfg = MemConfig(
        device=args.device,
        dataset=args.dataset,
        batch=args.batch or (8 if cuda else 1),
        dtype=args.dtype or ("bf16" if cuda else "fp32"),
        d_model=preset["d_model"],
        num_heads=preset["num_heads"],
        num_layers=preset["num_layers"],
        scales=args.scales or _scales(GPU_SCALES if cuda else CPU_SCALES),
        scopes=args.scopes,
        backends=args.backends,
        warmup=args.warmup if args.warmup is not None else (3 if cuda else 1),
        reps=args.reps if args.reps is not None else (10 if cuda else 3),
        cpu_mem_cap_gb=args.cpu_mem_cap_gb,
        check_max_n=args.check_max_n or (2100 if cuda else 600),
        threads=args.threads or (None if cuda else 1),
        fit_from=args.fit_from,
        max_seconds=args.max_seconds,
        seed=args.seed,
        command="python benchmarks/bench_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    csv_path, png_path = output_paths(args.out, cfg.device)
    for path in (csv_path, png_path):
        if path.exists():
            p.error(
                f"{path} exists; this benchmark never overwrites a result (move it or pick another --out)"
            )
    return cfg, csv_path, png_path


def main(argv: list[str] | None = None) -> int:
    cfg, csv_path, png_path = parse_args(argv)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows = run(cfg, csv_path)
    try:
        print(f"wrote {plot([{k: _fmt(r.get(k)) for k in COLUMNS} for r in rows], png_path)}")
    except ImportError as exc:  # matplotlib is optional: the CSV is the result
        print(f"no PNG ({exc}); draw it later: python benchmarks/plot_memory.py {csv_path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
