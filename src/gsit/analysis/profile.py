"""Parameter and FLOP accounting (``gsit profile``).

Parameters are reported per part (conv front ends, fusion encoders, head, text encoder), in total, and in
the paper's convention (SPEC §12: GsiT's "Params" = fusion + conv, head excluded; MulT's = everything but
BERT).  FLOPs are *true* forward FLOPs per sample (2 x multiply-accumulates) at the dataset's padded
lengths, counted by ``torch.utils.flop_counter`` while the model runs with the ``pairs`` backend -- so the
attention matmuls are counted over the allowed (query block, key block) pairs only.  BERT is excluded.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from gsit.config import RunConfig, build_model_config, load_config
from gsit.presets import DATASET_SHAPES


def _count(params) -> int:
    return int(sum(p.numel() for p in params))


def build_for_profile(model_name: str, dataset: str, overrides=()) -> tuple[RunConfig, torch.nn.Module]:
    run = load_config(model_name, dataset, overrides=list(overrides))
    shapes = DATASET_SHAPES[dataset]
    dims = {m: shapes[m][1] for m in ("text", "audio", "vision")}
    output_dim = 20 if dataset == "mintrec" else 1
    cfg = build_model_config(run, input_dims=dims, output_dim=output_dim)
    if hasattr(cfg, "attention_backend"):  # GsiT-family: the portable backend for counting
        cfg = dataclasses.replace(cfg, attention_backend="pairs")
    from gsit.models.registry import model_class
    return run, model_class(model_name)(cfg).eval()


def profile(model_name: str, dataset: str, overrides=(), *, flops: bool = True) -> dict[str, Any]:
    if dataset not in DATASET_SHAPES:
        raise ValueError(f"unknown dataset preset {dataset!r}; known: {sorted(DATASET_SHAPES)}")
    _, model = build_for_profile(model_name, dataset, overrides)
    groups = model.parameter_groups()
    counts = {k: _count(v) for k, v in groups.items()}
    total_no_text = counts["front_end"] + counts["fusion"] + counts["head"]
    if model_name in ("mult", "mult_dagger"):
        paper = total_no_text
        convention = "all but the text encoder (head included), as the paper counts MulT"
    else:
        paper = counts["front_end"] + counts["fusion"]
        convention = "fusion encoders + conv front ends (head excluded), as the paper counts GsiT"
    shapes = DATASET_SHAPES[dataset]
    out: dict[str, Any] = {
        "model": model_name, "dataset": dataset,
        "lengths": {m: shapes[m][0] for m in ("text", "audio", "vision")},
        "dims": {m: shapes[m][1] for m in ("text", "audio", "vision")},
        "params": {"front_end": counts["front_end"], "fusion": counts["fusion"], "head": counts["head"],
                   "text_encoder": counts["text_encoder"], "total_without_text_encoder": total_no_text,
                   "paper_convention": paper, "paper_convention_rule": convention},
    }
    if flops:
        out["flops_per_sample"] = forward_flops(model, dataset)
        from gsit.analysis.efficiency import thop_macs
        thop = thop_macs(model_name, dataset, batch=8, overrides=overrides)
        out["thop_macs_batch8"] = {"paper_convention": thop["paper_convention"], "total": thop["total"],
                                   "rule": "thop counts Conv1d/Linear/LayerNorm modules only (SPEC §12)"}
    return out


def _cpu_sdpa_mapping() -> dict:
    """PyTorch's flop counter knows the CUDA SDPA kernels but not the CPU one; count it the same way:
    2 * B * H * Lq * Lk * (D + Dv)."""
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return {}

    def sdpa_cpu_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        b, h, lq, d = query_shape
        lk, dv = key_shape[-2], value_shape[-1]
        return 2 * b * h * lq * lk * (d + dv)

    return {op: sdpa_cpu_flop}  # FlopCounterMode wraps custom entries with its shape converter


@torch.no_grad()
def forward_flops(model: torch.nn.Module, dataset: str) -> dict[str, float]:
    shapes = DATASET_SHAPES[dataset]
    inputs = {m: torch.zeros(1, shapes[m][0], shapes[m][1]) for m in ("text", "audio", "vision")}
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping())
    with counter:
        model(inputs)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    attention = sum(v for k, v in by_op.items() if "attention" in k or "bmm" in k)
    total = int(counter.get_total_flops())
    return {"total": total, "attention": attention, "other": total - attention, "by_op": by_op}
