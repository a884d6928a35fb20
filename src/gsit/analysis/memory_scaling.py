"""Memory scaling of the decomposition (paper Appendix B.2): peak memory and time against sequence length.

    gsit memory-scaling --device cpu  --out benchmarks/results   # ~3 min -> memory_scaling_cpu.csv / .png
    gsit memory-scaling --device cuda --out benchmarks/results   # -> memory_scaling_<gpu>.csv / .png
    python -m gsit.analysis.memory_plot benchmarks/results/memory_scaling_cpu.csv --out /tmp/m.png  # redraw

Every segment of a MOSEI-like layout (conv-output lengths text 46, vision 496, audio 496; ``--dataset mosi``:
46/496/371) is multiplied by a length scale s in ``--scales`` (1/8 ... 64 on the GPU).  For each (scale,
scope, backend) one row: forward + backward of

* ``attention``: ``graph_attention`` alone on the GsiT forward graph, (B, H, N, d/H) inputs;
* ``fusion_block``: :class:`gsit.models.gsit.GraphFusion` (forward, backward and self encoders, depth-shared
  layers, the preset's d_model / num_heads / num_layers), from ``x`` (B, N, d) to the pooled features,

with the backends ``reference`` (dense masked softmax: materialises (B, H, N, N) fp32 scores), ``naive``
(the paper-era naive decomposition: one bmm + softmax + bmm per query block, materialises each block's
(B, H, Lq, Lk) scores), ``pairs`` (one SDPA call per query block) and ``triton`` (fused kernel, GPU only).

What one row measures (peak memory, time, the correctness check, the statuses): see
:mod:`gsit.analysis.memory_measure`.

Slopes: for each (scope, backend) one ``row=slope`` line with the least-squares slope of log(peak memory)
and of log(time) against log(N) over the ok points at scale >= ``--fit-from`` (default 1/2:
half the paper's lengths and above, where fixed costs weigh less).  Slope ~1: linear; ~2: quadratic.
What it does not show: padding-aware runs, other graphs than GsiT's, whole-model or optimizer memory.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import time
from fractions import Fraction
from pathlib import Path

import torch

from gsit.analysis.fusion_block import DATASET_LENGTHS, environment
from gsit.analysis.memory_measure import (
    BACKENDS,
    CPU_SCALES,
    DTYPES,
    GPU_SCALES,
    MemConfig,
    measure,
    scaled_layout,
)
from gsit.analysis.memory_plot import SCOPES, plot, slope_rows
from gsit.config import load_config
from gsit.errors import GsitError

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
MEM_METHOD = {
    "cuda": "torch.cuda.max_memory_allocated minus allocated before the step",
    "cpu": "torch.profiler allocation events (torch CPU allocator): peak of the running sum over the step",
}


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


# --------------------------------------------------------------------------- options
def parse_scales(text: str) -> tuple[Fraction, ...]:
    """``"1/8,1/4,1,2"`` -> sorted distinct positive fractions; a :class:`GsitError` naming the bad value."""
    try:
        scales = tuple(Fraction(t.strip()) for t in text.split(",") if t.strip())
    except (ValueError, ZeroDivisionError) as exc:
        raise GsitError(f"--scales {text!r}: {exc} (expected e.g. 1/8,1/4,1,2)") from exc
    if not scales or any(s <= 0 for s in scales):
        raise GsitError(f"--scales {text!r}: need positive fractions such as 1/8,1,2")
    return tuple(sorted(set(scales)))


def parse_names(text: str, known: tuple[str, ...], flag: str) -> tuple[str, ...]:
    names = tuple(t.strip() for t in text.split(",") if t.strip())
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise GsitError(f"{flag} {text!r}: unknown {bad}; known: {', '.join(known)}")
    return names


def make_config(
    *,
    device: str = "cpu",
    dataset: str = "mosei",
    scales: str | None = None,
    scopes: str | None = None,
    backends: str | None = None,
    batch: int | None = None,
    dtype: str | None = None,
    warmup: int | None = None,
    reps: int | None = None,
    cpu_mem_cap_gb: float = 2.0,
    check_max_n: int | None = None,
    fit_from: str = "1/2",
    threads: int | None = None,
    max_seconds: float | None = None,
    seed: int = 0,
    command: str = "",
) -> MemConfig:
    """The sweep's settings from the command's options (strings as typed; None: the device's default,
    see ``gsit memory-scaling --help``); every bad value is one :class:`GsitError` naming the option."""
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise GsitError(f"--device {device}: torch {torch.__version__} sees no CUDA GPU (use --device cpu)")
    if not cuda and device != "cpu":
        raise GsitError(f"--device {device!r}: expected cpu or cuda[:i]")
    if dataset not in DATASET_LENGTHS:
        raise GsitError(f"--dataset {dataset!r}: expected one of {', '.join(sorted(DATASET_LENGTHS))}")
    if dtype is not None and dtype not in DTYPES:
        raise GsitError(f"--dtype {dtype!r}: expected one of {', '.join(sorted(DTYPES))}")
    for flag, value, low in (("--batch", batch, 1), ("--warmup", warmup, 0), ("--reps", reps, 1),
                             ("--check-max-n", check_max_n, 1), ("--threads", threads, 1)):  # fmt: skip
        if value is not None and value < low:
            raise GsitError(f"{flag} {value}: must be >= {low}")
    if not cpu_mem_cap_gb > 0 or (max_seconds is not None and not max_seconds >= 0):
        raise GsitError(f"--cpu-mem-cap-gb {cpu_mem_cap_gb:g} must be > 0 and --max-seconds >= 0")
    try:
        fit = Fraction(fit_from)
    except (ValueError, ZeroDivisionError) as exc:
        raise GsitError(f"--fit-from {fit_from!r}: {exc} (expected a fraction such as 1/2)") from exc
    if cuda and ":" in device:
        torch.cuda.set_device(torch.device(device))
    preset = load_config("gsit", dataset).model  # the paper preset's widths
    return MemConfig(
        device=device,
        dataset=dataset,
        batch=batch or (8 if cuda else 1),
        dtype=dtype or ("bf16" if cuda else "fp32"),
        d_model=preset["d_model"],
        num_heads=preset["num_heads"],
        num_layers=preset["num_layers"],
        scales=parse_scales(scales or (GPU_SCALES if cuda else CPU_SCALES)),
        scopes=parse_names(scopes, SCOPES, "--scopes") if scopes else SCOPES,
        backends=parse_names(backends, BACKENDS + ("flex",), "--backends") if backends else BACKENDS,
        warmup=warmup if warmup is not None else (3 if cuda else 1),
        reps=reps if reps is not None else (10 if cuda else 3),
        cpu_mem_cap_gb=cpu_mem_cap_gb,
        check_max_n=check_max_n or (2100 if cuda else 600),
        threads=threads or (None if cuda else 1),
        fit_from=fit,
        max_seconds=max_seconds,
        seed=seed,
        command=command,
    )


# --------------------------------------------------------------------------- the command
def memory_scaling(cfg: MemConfig, out_dir: str | Path, *, log=print) -> dict[str, Path | None]:
    """Run the sweep into ``out_dir``/memory_scaling_<device>.csv (rewritten after every row) and draw its
    PNG (skipped with a note when matplotlib is missing: the CSV is the result).  Refuses to start when
    either file exists."""
    csv_path, png_path = output_paths(Path(out_dir), cfg.device)
    for path in (csv_path, png_path):
        if path.exists():
            raise GsitError(
                f"{path} exists; memory-scaling never overwrites a result (move it or pick another --out)"
            )
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows = run(cfg, csv_path, log=log)
    try:
        png = plot([{k: _fmt(r.get(k)) for k in COLUMNS} for r in rows], png_path)
    except ImportError as exc:  # matplotlib is optional: the CSV is the result
        log(f"no PNG ({exc}); draw it later: python -m gsit.analysis.memory_plot {csv_path}")
        return {"csv": csv_path, "png": None}
    log(f"wrote {csv_path} and {png}")
    return {"csv": csv_path, "png": png}
