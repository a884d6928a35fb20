"""Attention alone: the fused Triton kernel against one cuDNN/flash SDPA call per query block (``pairs``).

Times forward + backward of ``graph_attention`` for the GsiT forward graph (text->vision, vision->audio,
audio->text; every query block reads one key block) at MOSEI conv-output lengths (46/496/496) times
``--mults``, B=32, 4 heads, head dims 32 (d=128: the forward/backward encoders) and 64 (2d=256: the self
encoder), bf16.  Every variant is first checked against the fp32 ``reference`` oracle on the first
sample; a variant over the tolerance is recorded as failed and not timed.

``--sweep`` also times a list of Triton tile configurations per (head dim, length) and records each;
``best`` marks the fastest.  Writes ``benchmarks/results/<gpu>-kernel.csv`` (median of ``--reps`` steps
after warm-up, CUDA events; peak memory from ``torch.cuda.max_memory_allocated``).

    PYTHONPATH=src python benchmarks/bench_kernel.py [--sweep] [--mults 1,4,8] [--out PATH]
"""

from __future__ import annotations

import argparse
import csv
import os
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from gsit.analysis.fusion_block import DATASET_LENGTHS, GSIT_MODALITIES, environment  # noqa: E402
from gsit.attention import graph_attention  # noqa: E402
from gsit.attention.triton.function import TileConfig, default_config  # noqa: E402
from gsit.graph import GraphMask, ModalGraph, SequenceLayout  # noqa: E402

COLUMNS = (
    "gpu",
    "torch",
    "triton",
    "cudnn",
    "cuda",
    "graph",
    "batch",
    "heads",
    "head_dim",
    "length_mult",
    "n",
    "dtype",
    "backend",
    "tiles",
    "check_rel_err",
    "status",
    "fwd_ms",
    "fwd_bwd_ms",
    "peak_mem_mb",
    "best",
)

# (fwd m, n, warps, stages), (dkdv m, n, warps, stages), (dq m, n, warps, stages)
SWEEP = {
    32: [
        ((64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 2)),
        ((128, 64, 4, 3), (64, 128, 4, 2), (128, 64, 4, 2)),
        ((128, 64, 8, 3), (64, 128, 8, 2), (128, 64, 8, 2)),
        ((128, 128, 8, 3), (128, 128, 8, 2), (128, 128, 8, 2)),
        ((128, 64, 4, 4), (32, 128, 4, 3), (128, 32, 4, 3)),
        ((64, 128, 4, 3), (128, 64, 8, 3), (64, 128, 4, 3)),
    ],
    64: [
        ((64, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 2)),
        ((128, 64, 4, 3), (64, 128, 8, 2), (128, 64, 8, 2)),
        ((128, 64, 8, 3), (64, 128, 8, 3), (128, 64, 8, 3)),
        ((128, 128, 8, 2), (128, 128, 8, 2), (128, 128, 8, 2)),
        ((64, 128, 4, 3), (32, 128, 4, 2), (64, 64, 4, 3)),
    ],
}


def tile_config(spec) -> TileConfig:
    (fm, fn, fw, fs), (km, kn, kw, ks), (qm, qn, qw, qs) = spec
    return TileConfig(fm, fn, fw, fs, km, kn, kw, ks, qm, qn, qw, qs)


def tiles_str(c: TileConfig) -> str:
    return (
        f"fwd{c.fwd_m}x{c.fwd_n}w{c.fwd_warps}s{c.fwd_stages}/dkdv{c.dkdv_m}x{c.dkdv_n}w{c.dkdv_warps}"
        f"s{c.dkdv_stages}/dq{c.dq_m}x{c.dq_n}w{c.dq_warps}s{c.dq_stages}"
    )


def time_ms(fn, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def rel_err(got, ref) -> float:
    return float((got.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-30))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mults", default="1,2,4,8")
    p.add_argument("--head-dims", default="32,64")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--sweep", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1":
        print("bench_kernel.py needs a CUDA GPU (and TRITON_INTERPRET unset)", file=sys.stderr)
        return 2
    dev = "cuda"
    env = environment(dev)
    out = (
        Path(args.out)
        if args.out
        else (Path(__file__).resolve().parent / "results" / (env["gpu"].replace(" ", "-") + "-kernel.csv"))
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def flush():
        tmp = out.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, out)

    graph = ModalGraph.named("forward", GSIT_MODALITIES)
    B, H = args.batch, args.heads
    for hd in [int(x) for x in args.head_dims.split(",")]:
        for mult in [int(x) for x in args.mults.split(",")]:
            lengths = tuple(n * mult for n in DATASET_LENGTHS["mosei"])
            layout = SequenceLayout(GSIT_MODALITIES, lengths)
            mask = GraphMask(graph, layout, None)
            n = layout.total
            g = torch.Generator(device=dev).manual_seed(hd * 100 + mult)
            q, k, v = [
                torch.randn(B, H, n, hd, device=dev, generator=g, dtype=torch.bfloat16).requires_grad_()
                for _ in range(3)
            ]
            do = torch.randn(B, H, n, hd, device=dev, generator=g, dtype=torch.bfloat16)
            # the oracle on sample 0
            q0, k0, v0 = [t[:1].detach().float().requires_grad_() for t in (q, k, v)]
            ref = graph_attention(q0, k0, v0, mask, backend="reference")
            ref_grads = torch.autograd.grad(ref, (q0, k0, v0), do[:1].float())
            variants = [("pairs", None)]
            configs = [default_config(hd, torch.bfloat16, torch.device(dev), lengths)]
            if args.sweep:
                configs += [tile_config(s) for s in SWEEP.get(hd, [])]
            variants += [("triton", c) for c in dict.fromkeys(configs)]
            case_rows = []
            for backend, cfg in variants:

                def call(q, k, v, backend=backend, cfg=cfg, mask=mask):
                    if backend == "pairs":
                        return graph_attention(q, k, v, mask, backend="pairs")
                    return graph_attention(q, k, v, mask, backend="triton", config=cfg)

                row = dict(
                    env,
                    graph="forward",
                    batch=B,
                    heads=H,
                    head_dim=hd,
                    length_mult=mult,
                    n=n,
                    dtype="bf16",
                    backend=backend,
                    tiles="" if cfg is None else tiles_str(cfg),
                    best="",
                )
                try:
                    a = [t[:1].detach().requires_grad_() for t in (q, k, v)]
                    o = call(*a)
                    grads = torch.autograd.grad(o, a, do[:1])
                    err = max([rel_err(o, ref)] + [rel_err(x, y) for x, y in zip(grads, ref_grads)])
                    row["check_rel_err"] = f"{err:.4g}"
                    if err > 0.03:
                        row["status"] = "failed check"
                    else:
                        torch.cuda.synchronize()
                        torch.cuda.reset_peak_memory_stats()
                        with torch.no_grad():
                            fwd_ms = time_ms(lambda q=q, k=k, v=v: call(q, k, v), args.warmup, args.reps)
                        row["fwd_ms"] = f"{fwd_ms:.4g}"

                        def step(q=q, k=k, v=v, do=do, call=call):
                            o = call(q, k, v)
                            torch.autograd.grad(o, (q, k, v), do)

                        row["fwd_bwd_ms"] = f"{time_ms(step, args.warmup, args.reps):.4g}"
                        row["peak_mem_mb"] = f"{torch.cuda.max_memory_allocated() / 2**20:.1f}"
                        row["status"] = "ok"
                except Exception as exc:  # recorded, never replaced by another backend
                    row["status"] = f"error: {type(exc).__name__}: {str(exc)[:160]}"
                case_rows.append(row)
                print(
                    f"hd={hd} x{mult} {backend:6s} {row['tiles']:48s} {row.get('status'):12s} "
                    f"fwd {row.get('fwd_ms', '-'):>8s} fwd+bwd {row.get('fwd_bwd_ms', '-'):>8s} ms",
                    flush=True,
                )
            tri = [r for r in case_rows if r["backend"] == "triton" and r["status"] == "ok"]
            if tri:
                min(tri, key=lambda r: float(r["fwd_bwd_ms"]))["best"] = "yes"
            rows += case_rows
            flush()
            q = k = v = do = None  # free before the next case
            torch.cuda.empty_cache()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
