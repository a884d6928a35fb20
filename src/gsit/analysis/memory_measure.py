"""One point of the memory-scaling sweep (``gsit memory-scaling``, :mod:`gsit.analysis.memory_scaling`): the
scaled layout, the score-size estimates, the peak-memory measures, the forward + backward case of one
(scope, backend) and :func:`measure`, which checks it against the fp32 reference and then measures it.

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

What it does not do: loop over scales, write files or fit slopes (:mod:`gsit.analysis.memory_scaling`,
:mod:`gsit.analysis.memory_plot`).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from fractions import Fraction

import torch

from gsit.analysis.fusion_block import (
    DATASET_LENGTHS,
    GSIT_MODALITIES,
    BenchInputs,
    build_fusion,
    percentile,
    rel_err,
    run_oracle,
    time_steps,
)
from gsit.analysis.memory_plot import SCOPES
from gsit.attention import check_backend, graph_attention
from gsit.graph import GraphMask, ModalGraph, SequenceLayout

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

            return max(rel_err(x, y) for x, y in zip(run(backend, dtype), run("reference", torch.float32)))

        return clear, run, check
    module = build_fusion("gsit", backend, cfg).to(cfg.device, dtype)
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
        ref_out, ref_grad = run_oracle("gsit", one, 1, cfg)
        x1 = x[:1].detach().clone().requires_grad_(True)
        out = module(x1, layout)
        out.backward(up[:1])
        return max(rel_err(out, ref_out), rel_err(x1.grad, ref_grad))

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
            median_ms=statistics.median(times), p10_ms=percentile(times, 10), p90_ms=percentile(times, 90)
        )
        return {**row, "status": "ok"}
    except Exception as exc:  # noqa: BLE001 -- recorded in the row, the sweep goes on
        msg = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]
        return {**row, "status": f"failed: OOM ({msg})" if _is_oom(exc) else f"error: {msg}"}
    finally:
        clear = run = check = None  # free the case before the next row
        _release(cfg.device)
