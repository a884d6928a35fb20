"""Parameter and FLOP accounting (``gsit profile``), and the thop-convention MAC count it shares with
``gsit efficiency``.

Parameters are reported per part (conv front ends, fusion encoders, head, text encoder), in total, and in
the paper's convention (SPEC §12: GsiT's "Params" = fusion + conv, head excluded; MulT's = everything but
BERT).  FLOPs are *true* forward FLOPs per sample (2 x multiply-accumulates) at the dataset's padded
lengths, counted by ``torch.utils.flop_counter`` while the model runs with the ``pairs`` backend -- so the
attention matmuls are counted over the allowed (query block, key block) pairs only.  BERT is excluded.
thop-style MACs (what the paper's "FLOPS (G)" column reports) are counted by module hooks in
:func:`count_thop_macs`; :mod:`gsit.analysis.efficiency` explains the rules and compares with the paper.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from gsit.config import RunConfig, build_model_config, load_config
from gsit.data.spec import DATASETS, DatasetSpec
from gsit.models.mult import MulTConfig, MulTEncoderLayer
from gsit.models.registry import model_class, model_config_class

MODALITIES = ("text", "audio", "vision")


def _count(params) -> int:
    return int(sum(p.numel() for p in params))


def profiled_spec(dataset: str) -> DatasetSpec:
    """The spec of a dataset with known MMSA shapes (gsit.data.spec); ValueError otherwise."""
    spec = DATASETS.get(dataset)
    if spec is None or spec.shapes is None:
        known = sorted(n for n, s in DATASETS.items() if s.shapes is not None)
        raise ValueError(f"unknown dataset preset {dataset!r}; known: {known}")
    return spec


def zero_inputs(dataset: str, batch: int) -> dict[str, torch.Tensor]:
    """Zero features of ``batch`` samples at ``dataset``'s full padded lengths (text as features)."""
    shapes = profiled_spec(dataset).shapes
    return {m: torch.zeros(batch, shapes[m][0], shapes[m][1]) for m in MODALITIES}


def build_for_profile(model_name: str, dataset: str, overrides=()) -> tuple[RunConfig, torch.nn.Module]:
    """Model ``model_name`` (a registry name) at ``dataset``'s feature widths, in eval mode; GsiT and
    Vanilla run the ``pairs`` backend (its SDPA calls are what the FLOP counter sees)."""
    spec = profiled_spec(dataset)
    run = load_config(model_name, dataset, overrides=list(overrides))
    dims = {m: spec.shapes[m][1] for m in MODALITIES}
    cfg = build_model_config(run, input_dims=dims, output_dim=spec.output_dim)
    if hasattr(cfg, "attention_backend"):
        cfg = dataclasses.replace(cfg, attention_backend="pairs")
    return run, model_class(model_name)(cfg).eval()


def total_without_text(parts: dict[str, int]) -> int:
    """Everything but the text encoder, from per-part counts (front_end, fusion, head, other)."""
    return sum(parts.get(k, 0) for k in ("front_end", "fusion", "head", "other"))


def paper_convention(model_name: str, parts: dict[str, int]) -> tuple[int, str]:
    """(count, rule) of the paper's convention from per-part counts (front_end, fusion, head, other)."""
    if model_config_class(model_name) is MulTConfig:
        return (
            total_without_text(parts),
            "all but the text encoder (head included), as the paper counts MulT",
        )
    return (
        parts.get("front_end", 0) + parts.get("fusion", 0),
        "fusion encoders + conv front ends (head excluded), as the paper counts GsiT",
    )


def profile(model_name: str, dataset: str, overrides=(), *, flops: bool = True) -> dict[str, Any]:
    spec = profiled_spec(dataset)
    _, model = build_for_profile(model_name, dataset, overrides)
    groups = model.parameter_groups()
    counts = {k: _count(v) for k, v in groups.items()}
    total_no_text = counts["front_end"] + counts["fusion"] + counts["head"]
    paper, convention = paper_convention(model_name, counts)
    shapes = spec.shapes
    out: dict[str, Any] = {
        "model": model_name,
        "dataset": dataset,
        "lengths": {m: shapes[m][0] for m in MODALITIES},
        "dims": {m: shapes[m][1] for m in MODALITIES},
        "params": {
            "front_end": counts["front_end"],
            "fusion": counts["fusion"],
            "head": counts["head"],
            "text_encoder": counts["text_encoder"],
            "total_without_text_encoder": total_no_text,
            "paper_convention": paper,
            "paper_convention_rule": convention,
        },
    }
    if flops:
        out["flops_per_sample"] = forward_flops(model, dataset)
        parts = count_thop_macs(model, zero_inputs(dataset, 8))["by_part"]
        out["thop_macs_batch8"] = {
            "paper_convention": paper_convention(model_name, parts)[0],
            "total": total_without_text(parts),
            "rule": "thop counts Conv1d/Linear/LayerNorm modules only (SPEC §12)",
        }
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
    inputs = zero_inputs(dataset, 1)
    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_mapping())
    with counter:
        model(inputs)
    by_op = {str(k): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    attention = sum(v for k, v in by_op.items() if "attention" in k or "bmm" in k)
    total = int(counter.get_total_flops())
    return {"total": total, "attention": attention, "other": total - attention, "by_op": by_op}


# ----------------------------------------------------------------------------- thop-convention MACs


def _thop_rule(module: nn.Module, inputs: tuple, output: Any) -> tuple[str, int] | None:
    if isinstance(module, nn.Conv1d):
        kernel = math.prod(module.kernel_size)
        per_out = module.in_channels // module.groups * kernel + (1 if module.bias is not None else 0)
        return "Conv1d", int(output.numel() * per_out)
    if isinstance(module, nn.Linear):
        return "Linear", int(output.numel() * module.in_features)
    if isinstance(module, nn.LayerNorm):
        flops = 2 * inputs[0].numel()
        if module.elementwise_affine:
            flops *= 2
        return "LayerNorm", int(flops)
    return None


def _module_parts(model: nn.Module) -> dict[int, str]:
    """id(module) -> part name (front_end, fusion, head, text_encoder) via the model's parameter groups."""
    param_part = {id(p): part for part, params in model.parameter_groups().items() for p in params}
    out = {}
    for mod in model.modules():
        params = list(mod.parameters(recurse=False))
        if params and id(params[0]) in param_part:
            out[id(mod)] = param_part[id(params[0])]
    return out


@torch.no_grad()
def count_thop_macs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Run ``model(inputs)`` once with counting hooks; returns MACs by part and by module type."""
    parts = _module_parts(model)
    by_part: dict[str, int] = defaultdict(int)
    by_type: dict[str, int] = defaultdict(int)
    handles = []

    def hook(mod, args, out):
        rule = _thop_rule(mod, args, out)
        if rule is None:
            return
        kind, macs = rule
        by_type[kind] += macs
        by_part[parts.get(id(mod), "other")] += macs

    def mult_layer_hook(mod, args, out):  # MMSA normalises key and value separately (see module doc)
        key, value = args[1], args[2]
        if key is not None and value is key and mod.attn_norm.elementwise_affine:
            macs = 4 * key.numel()
            by_type["LayerNorm"] += macs
            by_part[parts.get(id(mod.attn_norm), "fusion")] += macs

    for mod in model.modules():
        if isinstance(mod, (nn.Conv1d, nn.Linear, nn.LayerNorm)):
            handles.append(mod.register_forward_hook(hook))
        if isinstance(mod, MulTEncoderLayer):
            handles.append(mod.register_forward_hook(mult_layer_hook))
    try:
        model.eval()
        model(inputs)
    finally:
        for h in handles:
            h.remove()
    return {"by_part": dict(by_part), "by_type": dict(by_type)}
