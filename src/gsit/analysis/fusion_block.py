"""Fusion-block measuring helpers shared by ``gsit memory-scaling`` and the benchmark scripts
(``benchmarks/bench_fusion.py``, ``bench_kernel.py``): the MOSI / MOSEI conv-output lengths, a fusion block
built with fixed weights (GsiT's :class:`GraphFusion` or MulT's fusion behind the same signature), its fp32
eager oracle, step timing and the environment columns of a result row.

What it does not do: train, load data, or decide what is measured (the callers do).  ``cfg`` arguments are
duck-typed: any object with the fields a function reads (``device``, ``d_model``, ``num_heads``,
``num_layers``, ``seed``; ``warmup`` and ``reps`` for :func:`time_steps`), e.g. the benchmark's
``BenchConfig`` or :class:`gsit.analysis.memory_scaling.MemConfig`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from gsit.data.spec import DATASETS
from gsit.graph import SequenceLayout
from gsit.models.gsit import GraphFusion
from gsit.models.mult import MulTConfig, MulTFusion
from gsit.models.registry import model_class

GSIT_MODALITIES = ("text", "vision", "audio")  # GsiTConfig's default concatenation order
CONV_KERNEL = 5
# conv-output lengths (raw padded length - kernel 5 + 1: mosi (46, 496, 371), mosei (46, 496, 496)), in
# GSIT_MODALITIES order, from the dataset table
DATASET_LENGTHS = {
    name: tuple(DATASETS[name].shapes[m][0] - CONV_KERNEL + 1 for m in GSIT_MODALITIES)
    for name in ("mosi", "mosei")
}


# --------------------------------------------------------------------------- the modules
class SegmentedMulTFusion(nn.Module):
    """:class:`gsit.models.mult.MulTFusion` behind GraphFusion's signature: the concatenated ``x`` (B, N, d)
    is cut into its modality segments by ``layout``; ``valid`` is ignored (MulT reads padding)."""

    def __init__(self, fusion: MulTFusion) -> None:
        super().__init__()
        self.fusion = fusion

    def forward(
        self, x: torch.Tensor, layout: SequenceLayout, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        seg = {m: x[:, layout.segment(i)] for i, m in enumerate(layout.modalities)}  # m -> (B, T_m, d)
        return self.fusion(seg)  # (B, 6d)


def build_fusion(model: str, backend: str, cfg: Any) -> nn.Module:
    """A fusion block in fp32 on CPU with weights that depend only on (model, seed), in eval mode:
    GsiT's :class:`GraphFusion`, or the fusion of the registry's ``mult`` model (built whole, as before)."""
    torch.manual_seed(cfg.seed)
    if model == "gsit":
        module = GraphFusion(
            modalities=GSIT_MODALITIES,
            d_model=cfg.d_model,
            num_heads=cfg.num_heads,
            num_layers=cfg.num_layers,
            share_layers=True,
            structure="original",
            embed_dropout=0.0,
            attn_dropout=0.0,
            relu_dropout=0.0,
            res_dropout=0.0,
            attention_semantics="paper",
            attention_backend=backend,
        )
    elif model == "mult":
        mcfg = MulTConfig(
            d_model=cfg.d_model,
            num_heads=cfg.num_heads,
            num_layers=cfg.num_layers,
            share_layers=True,
            causal=True,
            positional=False,
            attn_dropout=0.0,
            attn_dropout_a=0.0,
            attn_dropout_v=0.0,
            relu_dropout=0.0,
            res_dropout=0.0,
            embed_dropout=0.0,
            text_dropout=0.0,
            output_dropout=0.0,
        )
        module = SegmentedMulTFusion(model_class("mult")(mcfg).fusion)
    else:
        raise ValueError(f"unknown model {model!r}; known: gsit, mult")
    return module.eval()


# --------------------------------------------------------------------------- inputs
@dataclass
class BenchInputs:
    """One timed batch of the fusion block's inputs (not gsit.data.Batch: no labels; a fixed upstream
    gradient)."""

    layout: SequenceLayout
    x: torch.Tensor  # (B, N, d) fp32 on the device
    upstream: torch.Tensor  # (B, M * 2d) fp32
    valid: torch.Tensor | None  # (B, M) or None
    valid_tokens: int


# --------------------------------------------------------------------------- correctness
def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    got, ref = got.detach().double(), ref.detach().double()
    if not torch.isfinite(got).all():
        return float("inf")
    denom = ref.norm().item()
    return (got - ref).norm().item() / denom if denom > 0 else (got - ref).norm().item()


def run_oracle(
    model: str, batch: BenchInputs, cb: int, cfg: Any, *, backend: str = "reference"
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 eager output and input gradient of the first ``cb`` samples (GsiT: the dense reference backend
    unless told otherwise; MulT: the math SDPA kernel)."""
    module = build_fusion(model, backend, cfg).to(cfg.device)
    x = batch.x[:cb].detach().clone().requires_grad_(True)
    valid = None if batch.valid is None else batch.valid[:cb]
    if model == "mult":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with sdpa_kernel(SDPBackend.MATH):
            out = module(x, batch.layout, valid)
            out.backward(batch.upstream[:cb])
    else:
        out = module(x, batch.layout, valid)
        out.backward(batch.upstream[:cb])
    return out.detach(), x.grad.detach()


# --------------------------------------------------------------------------- timing
def time_steps(step: Callable[[], None], cfg: Any) -> list[float]:
    """Milliseconds of ``reps`` steps after ``warmup`` steps."""
    for _ in range(cfg.warmup):
        step()
    if str(cfg.device).startswith("cuda"):
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            for _ in range(cfg.reps)
        ]
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        return [start.elapsed_time(end) for start, end in events]
    times = []
    for _ in range(cfg.reps):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


# --------------------------------------------------------------------------- environment
def environment(device: str) -> dict[str, str]:
    from importlib import metadata

    try:
        triton_version = metadata.version("triton")
    except metadata.PackageNotFoundError:
        triton_version = ""
    cuda = str(device).startswith("cuda")
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "gpu": torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu",
        "torch": torch.__version__,
        "triton": triton_version,
        "cudnn": str(cudnn or ""),
        "cuda": str(torch.version.cuda or ""),
    }
