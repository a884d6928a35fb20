"""``gsit attention-map``: the allowed adjacency and the learned attention of a trained graph model.

The weights are captured from OUTSIDE the model: a forward hook on every ``GraphSelfAttention`` module
receives the module's input (the LayerNormed sequence ``x`` and the ``GraphMask``), recomputes q and k
with the module's own packed ``in_proj`` and calls the reference backend's
:func:`gsit.attention.reference.attention_weights` with the module's scale.  The model's forward and its
attention backend are untouched; the hooks are removed afterwards.  With depth sharing the one layer
fires ``num_layers`` times; the map averages over heads and over every call (= every depth).

GsiT has three encoders (forward, backward, self), Vanilla one (full); MulT keeps its modalities in
separate sequences and is not supported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gsit.analysis._common import new_file, require_matplotlib, run_config_from_dir, run_seeds, save_figure
from gsit.attention.reference import attention_weights
from gsit.data.batch import SplitDataset
from gsit.errors import GsitError
from gsit.models.gsit import GraphSelfAttention, GsiT
from gsit.models.vanilla import Vanilla
from gsit.runs import model_from_run_dir


def _encoders(model) -> dict[str, torch.nn.Module]:
    if isinstance(model, GsiT):
        f = model.fusion
        return {"forward": f.forward_encoder, "backward": f.backward_encoder, "self": f.self_encoder}
    if isinstance(model, Vanilla):
        return {"full": model.encoder}
    raise GsitError(
        f"attention maps need a graph model (gsit, vanilla); {type(model).__name__} keeps its "
        f"modalities in separate sequences"
    )


@torch.no_grad()
def capture_attention(
    model, inputs: dict[str, torch.Tensor], lengths: dict[str, torch.Tensor] | None = None
) -> dict[str, Any]:
    """Run ``model`` once (eval mode) and return per encoder the allowed mask and the attention averaged
    over heads and depth calls, for sample 0 of the batch:
    ``{"modalities", "lengths", "prediction", "encoders": {name: {"allowed": (N, N) bool,
    "attention": (N, N) float, "calls": int}}}``."""
    encoders = _encoders(model)
    records: dict[str, dict[str, Any]] = {name: {"sum": None, "calls": 0, "mask": None} for name in encoders}
    handles = []

    def make_hook(name: str):
        def hook(mod: GraphSelfAttention, args, out):
            x, mask = args[0], args[1]
            B, N, _ = x.shape
            qkv = F.linear(x, mod.in_proj_weight, mod.in_proj_bias)  # (B, N, 3D)
            qkv = qkv.view(B, N, 3, mod.num_heads, mod.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, N, hd)
            w = attention_weights(qkv[0], qkv[1], mask, scale=mod.scale)  # (B, H, N, N)
            avg = w[0].mean(dim=0).double().cpu()  # (N, N), sample 0, mean over heads
            rec = records[name]
            rec["sum"] = avg if rec["sum"] is None else rec["sum"] + avg
            rec["calls"] += 1
            rec["mask"] = mask

        return hook

    for name, enc in encoders.items():
        for mod in enc.modules():
            if isinstance(mod, GraphSelfAttention):
                handles.append(mod.register_forward_hook(make_hook(name)))
    try:
        model.eval()
        out = model(inputs, lengths)
    finally:
        for h in handles:
            h.remove()
    result: dict[str, Any] = {
        "encoders": {},
        "prediction": out["prediction"][0].float().cpu().numpy().tolist(),
    }
    for name, rec in records.items():
        if rec["calls"] == 0:
            raise GsitError(f"encoder {name!r} ran no attention layer")
        mask = rec["mask"]
        allowed = mask.dense_mask("cpu")
        if allowed.dim() == 3:
            allowed = allowed[0]
        result["encoders"][name] = {
            "allowed": allowed.numpy().copy(),
            "attention": (rec["sum"] / rec["calls"]).numpy(),
            "calls": rec["calls"],
            "graph": mask.graph.edge_names(),
        }
        result["modalities"] = list(mask.layout.modalities)
        result["lengths"] = list(mask.layout.lengths)
    return result


def attention_maps(
    run_dir: str | Path,
    *,
    data_path: str | None = None,
    sample: int = 0,
    split: str = "test",
    seed: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """:func:`capture_attention` for row ``sample`` of ``split`` of a trained run."""
    run, data = run_config_from_dir(Path(run_dir), data_path)
    if split not in data.splits:
        raise GsitError(f"split {split!r} not in the data (splits: {sorted(data.splits)})")
    part = data.splits[split]
    if not 0 <= sample < len(part):
        raise GsitError(f"--sample {sample} is out of range for split {split!r} of {len(part)} samples")
    seed = seed if seed is not None else run_seeds(Path(run_dir))[0]
    _, model = model_from_run_dir(Path(run_dir), data, seed=seed, device=device)
    batch = SplitDataset(part).__getitems__([sample]).to(device)
    res = capture_attention(model, batch.inputs, batch.lengths)
    res.update(
        {
            "run_dir": str(run_dir),
            "split": split,
            "sample": sample,
            "seed": seed,
            "id": str(part.ids[sample]),
            "label": np.asarray(part.labels[sample]).tolist(),
            "model": run.model_name,
        }
    )
    return res


def _boundaries(ax, modalities, lengths) -> None:
    offsets = np.cumsum([0] + list(lengths))
    for o in offsets[1:-1]:
        ax.axhline(o - 0.5, color="w", lw=0.8)
        ax.axvline(o - 0.5, color="w", lw=0.8)
    centers = [(offsets[i] + offsets[i + 1] - 1) / 2 for i in range(len(lengths))]
    ax.set_xticks(centers, [f"{m}\n({n})" for m, n in zip(modalities, lengths)], fontsize=8)
    ax.set_yticks(centers, list(modalities), fontsize=8)
    ax.set_xlabel("key")
    ax.set_ylabel("query")


def plot_attention_maps(maps: dict[str, Any], path: str | Path) -> Path:
    """Top row: allowed adjacency of each encoder; bottom row: learned attention (mean over heads and
    depth)."""
    plt = require_matplotlib()
    encs = maps["encoders"]
    n = len(encs)
    fig, axes = plt.subplots(2, n, figsize=(4.6 * n, 9), squeeze=False)
    for j, (name, e) in enumerate(encs.items()):
        ax = axes[0, j]
        ax.imshow(e["allowed"].astype(float), cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        _boundaries(ax, maps["modalities"], maps["lengths"])
        ax.set_title(f"{name}: allowed (black) {', '.join(e['graph'])}", fontsize=8)
        bx = axes[1, j]
        im = bx.imshow(e["attention"], cmap="viridis", interpolation="nearest")
        _boundaries(bx, maps["modalities"], maps["lengths"])
        bx.set_title(f"{name}: attention (mean of {e['calls']} calls x heads)", fontsize=9)
        fig.colorbar(im, ax=bx, fraction=0.046, pad=0.04)
    pred = maps.get("prediction")
    fig.suptitle(
        f"{maps.get('model', '')} sample {maps.get('sample', '')} ({maps.get('id', '')}) of "
        f"{maps.get('split', '')}: label {np.round(maps.get('label', np.nan), 3).tolist()}, prediction "
        f"{np.round(pred, 3).tolist() if pred is not None else ''}",
        fontsize=10,
    )
    fig.tight_layout()
    out = save_figure(fig, Path(path))
    plt.close(fig)
    return out


def run_attention_map(
    run_dir,
    *,
    data_path=None,
    sample: int = 0,
    split: str = "test",
    seed=None,
    out: str | Path | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    maps = attention_maps(run_dir, data_path=data_path, sample=sample, split=split, seed=seed, device=device)
    path = Path(out) if out else Path(run_dir) / f"attention_{split}_{sample}_seed{maps['seed']}.png"
    new_file(path)
    maps["png"] = str(plot_attention_maps(maps, path))
    return maps
