"""The paper's efficiency numbers: thop-style MACs (SPEC §12) next to true FLOPs and both parameter
conventions.

The paper's "FLOPS (G)" column is what ``thop.profile`` returns for one MOSI batch of 8 at the full padded
lengths, BERT excluded.  thop attaches a counting rule to *module types* only, so it sees:

* ``nn.Conv1d``: ``output.numel() * in_channels/groups * prod(kernel)`` (+1 per output with a bias);
* ``nn.Linear``: ``output.numel() * in_features`` (``out_proj``, ``fc1``, ``fc2`` and the head layers);
* ``nn.LayerNorm``: ``2 * input.numel()``, doubled with elementwise affine -> ``4 * numel`` per call;
* every call of a module counts, so a depth-shared layer called 4 times counts 4 times;

and it does NOT see the functional packed ``in_proj`` (``F.linear`` on a bare parameter), the attention
matmuls/softmax, activations, dropout or scaling.  :func:`thop_macs` reproduces this with forward hooks
(no thop dependency) and gives GsiT fusion + conv = 26.224 G and the GsiT repository's MulT-dagger
(d=128, 4 heads, depth-shared, causal, no positions; SPEC §13) = 26.294 G including its head.

One adjustment keeps the count faithful to the official code: MMSA's ``TransformerEncoderLayer`` calls its
first LayerNorm separately on the query, the key and the value of a cross-modal layer, even though key and
value are the same tensor at evaluation time; gsit's MulT normalises that shared tensor once.  The hook on
``MulTEncoderLayer`` adds the third call (``4 * key.numel()``) so the count matches thop on the official
model (this is the "extra LN calls" SPEC §12 mentions).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from gsit.analysis.profile import (  # noqa: F401  (count_thop_macs: re-exported, it lived here)
    build_for_profile,
    count_thop_macs,
    paper_convention,
    profile,
    profiled_spec,
    total_without_text,
    zero_inputs,
)
from gsit.attention import get_backend

# The GsiT repository's MulT-dagger baseline (SPEC §13) is the model ``mult_dagger`` (presets
# configs/mult_dagger_<dataset>.toml).  On MOSI it is the ``mult`` preset with these overrides: MMSA MulT with
# d=128, 4 heads, depth sharing, the causal future mask and no positional embedding.
MULT_DAGGER_OVERRIDES = (
    "model.d_model=128",
    "model.num_heads=4",
    "model.share_layers=true",
    "model.causal=true",
    "model.positional=false",
)
MULT_MODELS = ("mult", "mult_dagger")
PAPER_FLOPS_G = {("gsit", "mosi"): 26.224, ("mult_dagger", "mosi"): 26.294}
PAPER_PARAMS_M = {("gsit", "mosi"): 1.695, ("mult_dagger", "mosi"): 5.251}


def resolve_model(model_name: str, overrides=()) -> tuple[str, tuple[str, ...]]:
    """The model name and overrides to build (every model, ``mult_dagger`` included, has its own presets)."""
    return model_name, tuple(overrides)


def thop_macs(model_name: str, dataset: str, batch: int = 8, overrides=()) -> dict[str, Any]:
    """thop-convention MACs of one batch of ``batch`` at ``dataset``'s full padded lengths, BERT excluded.

    ``model_name``: gsit | mult | vanilla | mult_dagger (MulT with the GsiT repository's settings).
    Returns ``{"model", "dataset", "batch", "front_end", "fusion", "head", "fusion_plus_conv", "total",
    "paper_convention", "paper_convention_rule", "by_type"}`` (MACs as integers)."""
    base, ovr = resolve_model(model_name, overrides)
    _, model = build_for_profile(base, dataset, ovr)
    counts = count_thop_macs(model, zero_inputs(dataset, batch))
    part = counts["by_part"]
    conv, fusion, head = part.get("front_end", 0), part.get("fusion", 0), part.get("head", 0)
    paper, rule = paper_convention(base, part)
    return {
        "model": model_name,
        "dataset": dataset,
        "batch": batch,
        "front_end": conv,
        "fusion": fusion,
        "head": head,
        "fusion_plus_conv": conv + fusion,
        "total": total_without_text(part),
        "paper_convention": paper,
        "paper_convention_rule": rule,
        "by_type": counts["by_type"],
    }


def efficiency_row(
    model_name: str, dataset: str, batch: int = 8, overrides=(), step: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Params (both conventions), true forward FLOPs per sample and thop MACs per batch for one model;
    with ``step`` (keyword arguments of :func:`step_cost`), also the measured step time and memory."""
    base, ovr = resolve_model(model_name, overrides)
    prof = profile(base, dataset, ovr)
    thop = thop_macs(model_name, dataset, batch=batch, overrides=overrides)
    return {
        "model": model_name,
        "dataset": dataset,
        "params": prof["params"],
        "flops_per_sample": {k: v for k, v in prof["flops_per_sample"].items() if k != "by_op"},
        "thop": thop,
        "paper_flops_g": PAPER_FLOPS_G.get((model_name, dataset)),
        "paper_params_m": PAPER_PARAMS_M.get((model_name, dataset)),
        "step": None if step is None else step_cost(model_name, dataset, overrides=overrides, **step),
    }


def step_cost(
    model_name: str,
    dataset: str,
    *,
    batch: int = 32,
    device: str = "cpu",
    dtype: str = "fp32",
    backend: str | None = None,
    overrides=(),
    warmup: int = 3,
    reps: int = 10,
) -> dict[str, Any]:
    """Measured cost of one training step of the whole model (BERT excluded: text features in): forward,
    L1 loss, backward and an Adam step, on random inputs at ``dataset``'s full padded lengths.

    ``dtype``: fp32, or bf16 autocast (``torch.autocast``, fp32 weights).  ``backend``: the GsiT/Vanilla
    attention backend (default ``pairs``; MulT ignores it).  Returns the median and 10th/90th percentile
    step time in ms over ``reps`` steps after ``warmup`` (CUDA events on a GPU, wall clock on CPU) and, on
    a GPU, the peak allocated memory of the step (``peak_mem_mb``; None on CPU, where it is not tracked).
    """
    if dtype not in ("fp32", "bf16"):
        raise ValueError(f"dtype must be fp32 or bf16, got {dtype!r}")
    base, ovr = resolve_model(model_name, overrides)
    _, model = build_for_profile(base, dataset, ovr)
    if backend is not None and base not in MULT_MODELS:
        get_backend(backend)  # a clear error for an unknown name
        cfg = dataclasses.replace(model.config, attention_backend=backend)
        model = type(model)(cfg)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    model = model.to(dev).train()
    shapes = profiled_spec(dataset).shapes
    gen = torch.Generator().manual_seed(0)
    inputs = {
        m: torch.randn(batch, shapes[m][0], shapes[m][1], generator=gen).to(dev)
        for m in ("text", "audio", "vision")
    }
    target = torch.randn(batch, 1, generator=gen).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            pred = model(inputs)["prediction"]
        loss = torch.nn.functional.l1_loss(pred.float(), target)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    if cuda:
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    for _ in range(reps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize(dev)
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            step()
            times.append((time.perf_counter() - t0) * 1e3)
    arr = np.asarray(times)
    return {
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "batch": batch,
        "dtype": dtype,
        "backend": None if base in MULT_MODELS else (backend or "pairs"),
        "reps": reps,
        "median_ms": float(np.median(arr)),
        "p10_ms": float(np.percentile(arr, 10)),
        "p90_ms": float(np.percentile(arr, 90)),
        "peak_mem_mb": float(torch.cuda.max_memory_allocated(dev) / 2**20) if cuda else None,
    }


def format_efficiency(rows: list[dict[str, Any]]) -> str:
    header = (
        f"{'model':12s} {'dataset':8s} {'params total':>13s} {'params paper':>13s} {'GFLOP/sample':>14s} "
        f"{'attn GFLOPs':>12s} {'thop G (B)':>11s} {'thop paper G':>13s} {'paper says':>11s}"
    )
    if any(r.get("step") is not None for r in rows):
        st = next(r["step"] for r in rows if r.get("step") is not None)
        header += f" {'step ms (B)':>14s} {'peak MB':>9s}"
    lines = [header]
    for r in rows:
        p, f, t = r["params"], r["flops_per_sample"], r["thop"]
        paper = f"{r['paper_flops_g']:.3f}" if r["paper_flops_g"] is not None else "-"
        line = (
            f"{r['model']:12s} {r['dataset']:8s} {p['total_without_text_encoder']:13,d} "
            f"{p['paper_convention']:13,d} {f['total'] / 1e9:14.3f} {f['attention'] / 1e9:12.3f} "
            f"{t['total'] / 1e9:8.3f} ({t['batch']}) {t['paper_convention'] / 1e9:13.3f} {paper:>11s}"
        )
        st = r.get("step")
        if st is not None:
            mem = f"{st['peak_mem_mb']:9.0f}" if st["peak_mem_mb"] is not None else f"{'-':>9s}"
            line += f" {st['median_ms']:9.2f} ({st['batch']}) {mem}"
        lines.append(line)
    lines.append(
        "params total: all but the text encoder; params paper: GsiT/Vanilla = fusion + conv (head "
        "excluded), MulT = all but BERT.  GFLOP/sample: true forward FLOPs (2 x MACs) per sample incl. "
        "attention over allowed pairs.  thop: MACs of one batch counted like thop (Conv1d, Linear, "
        "LayerNorm modules only; no in_proj, no attention matmuls); paper convention as for params."
    )
    steps = [r["step"] for r in rows if r.get("step") is not None]
    if steps:
        st = steps[0]
        lines.append(
            f"step ms: median of {st['reps']} training steps (forward, L1 loss, backward, Adam; BERT "
            f"excluded) at the full padded lengths on {st['device']}, {st['dtype']}, GsiT/Vanilla "
            f"attention backend {st['backend'] or 'pairs'}; peak MB: max allocated GPU memory (- on CPU)."
        )
    return "\n".join(lines)
