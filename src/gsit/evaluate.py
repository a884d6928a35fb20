"""Evaluation: predictions over a split, MMSA's evaluation loss and metrics, and evaluating or predicting
from a trained run directory (best checkpoint per seed, loaded without pickle)."""

from __future__ import annotations

import contextlib
import csv
import io
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gsit.checkpoint import atomic_write_bytes
from gsit.config import RunConfig
from gsit.data import load_run_data
from gsit.data.batch import SplitDataset
from gsit.data.spec import dataset_spec
from gsit.distributed import Dist, all_gather
from gsit.errors import GsitError
from gsit.metrics import compute_metrics
from gsit.runs import load_run_config, model_from_run_dir, run_seeds, summarize


def batch_loss(pred: torch.Tensor, labels: torch.Tensor, task: str, reduction: str = "mean") -> torch.Tensor:
    """The training objective: L1 on the score (regression) or cross-entropy (classification)."""
    if task == "classification":
        return F.cross_entropy(pred.float(), labels.long(), reduction=reduction)
    return F.l1_loss(pred.float().view(-1), labels.float().view(-1), reduction=reduction)


def contrastive_loss(
    summaries: torch.Tensor, temperature: float, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE between the per-modality summaries of the same sample (``train.contrastive_weight``).

    ``summaries``: (B, M, D), the model's pooled summary of each modality (``out["summaries"]``).  For every
    pair of modalities (m, n), m < n, the cosine similarities s_ij = <z^m_i, z^n_j> / ``temperature`` of the
    L2-normalised summaries are scored with a symmetric cross-entropy: sample i's m-summary must pick its own
    n-summary among the n-summaries of the batch, and the other way round.  The result is the mean over the
    M(M-1)/2 pairs and the two directions of the anchor-weighted mean ``sum(w_i l_i) / sum(w_i)``.

    ``weights`` (B,): per-row weights (None = all 1).  A row of weight 0 (a static batch's padding copy,
    :mod:`gsit.execution`) is neither an anchor nor a negative of any other row, so padding a batch with
    zero-weight rows changes neither the loss nor its gradient.  A batch with one real row gives 0 (its only
    candidate is its own positive).  Computed in fp32.  No parameters: no projection head is added, so a
    run's checkpoint and parameter count are those of the model alone.  Under DDP the negatives are the rows
    of this process's slice of the batch only (no gather across ranks)."""
    if summaries.dim() != 3 or summaries.shape[1] < 2:
        raise ValueError(
            f"contrastive_loss needs summaries of shape (B, M >= 2, D), got {tuple(summaries.shape)}"
        )
    if not temperature > 0:
        raise ValueError(f"contrastive_loss: temperature must be > 0, got {temperature}")
    B, M, _ = summaries.shape
    z = F.normalize(summaries.float(), dim=-1)  # (B, M, D)
    w = torch.ones(B, device=z.device) if weights is None else weights.to(z.device, torch.float32)  # (B,)
    # candidate j is allowed for anchor i if j is a real row, or j == i (every row keeps its positive, so no
    # row of logits is empty and a zero-weight anchor stays finite before its weight 0 removes it)
    eye = torch.eye(B, dtype=torch.bool, device=z.device)
    allowed = (w > 0)[None, :] | eye  # (B, B)
    target = torch.arange(B, device=z.device)
    total, terms = z.new_zeros(()), 0
    for m in range(M):
        for n in range(m + 1, M):
            logits = (z[:, m] @ z[:, n].T) / temperature  # (B, B): anchors m (rows), candidates n
            for lg in (logits, logits.T):  # m -> n, then n -> m
                per = F.cross_entropy(lg.masked_fill(~allowed, float("-inf")), target, reduction="none")
                total = total + (per * w).sum() / w.sum()
                terms += 1
    return total / terms


def training_loss(
    out: dict[str, torch.Tensor],
    labels: torch.Tensor,
    task: str,
    *,
    weights: torch.Tensor | None = None,
    contrastive_weight: float = 0.0,
    contrastive_temperature: float = 0.1,
) -> torch.Tensor:
    """The loss a training step minimises: the mean :func:`batch_loss` (weighted ``sum(w_i l_i) / sum(w_i)``
    with per-row ``weights``, as the static steps of :mod:`gsit.execution` pad batches), plus
    ``contrastive_weight`` x :func:`contrastive_loss` of ``out["summaries"]`` when that weight is > 0.  With
    the weight 0 (the default, the paper's protocol) nothing else is computed: the loss is the task loss."""
    if weights is None:
        loss = batch_loss(out["prediction"], labels, task)
    else:
        per = batch_loss(out["prediction"], labels, task, reduction="none")  # (B,)
        loss = (per * weights).sum() / weights.sum()
    if contrastive_weight > 0:
        if "summaries" not in out:
            raise GsitError(
                "train.contrastive_weight > 0 needs a model that returns per-modality summaries "
                f"(out['summaries'], (B, M, D)); this model returns {sorted(out)}"
            )
        loss = loss + contrastive_weight * contrastive_loss(
            out["summaries"], contrastive_temperature, weights
        )
    return loss


def amp_context(amp: str, device: torch.device):
    """bf16 autocast on ``device`` when ``amp == "bf16"``, else a no-op context."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def autocast_for(run: RunConfig, ctx: Dist):
    """The run's ``train.amp`` context on this process's device."""
    return amp_context(run.train.amp, ctx.device)


def split_dataset(split) -> SplitDataset:
    """The split's :class:`SplitDataset` (built once per split and kept on it)."""
    ds = split.__dict__.get("_gsit_dataset")
    if ds is None:
        ds = split.__dict__["_gsit_dataset"] = SplitDataset(split)
    return ds


def batch_from(split, idx: np.ndarray, device: torch.device):
    """Gather rows ``idx`` of ``split`` into a Batch on ``device`` (one fancy-index per array)."""
    return split_dataset(split).__getitems__(idx).to(device)


@torch.no_grad()
def predict_split(
    model, split, *, run: RunConfig, ctx: Dist, batch_size: int | None = None, runner=None
) -> np.ndarray:
    """Predictions for every row of ``split`` in row order (gathered across DDP ranks).  ``runner``
    (:class:`gsit.execution.StepRunner`) runs compiled / CUDA-graphed steps instead of eager calls."""
    model.eval()
    bs = batch_size or run.train.eval_batch_size or run.train.batch_size
    rows = np.arange(len(split))[ctx.rank :: ctx.world]
    outs, idxs = [], []
    autocast = autocast_for(run, ctx)
    static = runner is not None and runner.execution.static
    for start in range(0, len(rows), bs):
        idx = rows[start : start + bs]
        if static:  # predictions stay on the device until the end: no host sync per batch
            outs.append(runner.predict(split_dataset(split), idx).clone())
        else:
            batch = batch_from(split, idx, ctx.device)
            with autocast:
                pred = model(batch.inputs, batch.lengths)["prediction"].float()
            outs.append(pred.cpu().numpy())
        idxs.append(idx)
    if static and outs:
        outs = [torch.cat(outs).cpu().numpy()]
    local = (
        np.concatenate(idxs) if idxs else np.zeros(0, dtype=np.int64),
        np.concatenate(outs) if outs else np.zeros((0, 1), dtype=np.float32),
    )
    parts = all_gather(local, ctx)
    order = np.concatenate([p[0] for p in parts])
    preds = np.concatenate([p[1] for p in parts])
    result = np.empty_like(preds)
    result[order] = preds
    return result


def split_loss(preds: np.ndarray, labels: np.ndarray, *, task: str, batch_size: int) -> float:
    """MMSA's evaluation loss: the mean over batches of the batch loss, rounded to 4 decimals."""
    losses = []
    for s in range(0, len(labels), batch_size):
        p = torch.from_numpy(preds[s : s + batch_size])
        y = torch.from_numpy(np.asarray(labels[s : s + batch_size]))
        losses.append(float(batch_loss(p, y, task)))
    return round(float(np.mean(losses)), 4)


def evaluate_split(
    model, split, *, run: RunConfig, dataset: str, task: str, ctx: Dist, runner=None
) -> dict[str, float]:
    """``Loss`` (MMSA's rounded batch-mean loss) and the dataset's metrics on ``split``."""
    preds = predict_split(model, split, run=run, ctx=ctx, runner=runner)
    bs = run.train.eval_batch_size or run.train.batch_size
    metrics = {"Loss": split_loss(preds, split.labels, task=task, batch_size=bs)}
    metric_preds = preds if task == "classification" else preds.reshape(-1)
    # scored by the dataset's metric family (gsit.data.spec): the synthetic task is MOSI-like, so like MOSI
    metrics.update(compute_metrics(dataset_spec(dataset).metric_family, metric_preds, split.labels))
    return metrics


# ----------------------------------------------------------------------------- from a run directory


def _run_and_data(run_dir: str | Path, data_path: str | None):
    """(run_dir, dataset, data): the run's data as it was trained on (``data_path`` replaces its path)."""
    run = load_run_config(run_dir, data_path)
    return Path(run_dir), run.data.dataset, load_run_data(run.data)


def evaluate_run(
    run_dir,
    *,
    data_path: str | None = None,
    split: str = "test",
    seed: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    run_dir, dataset, data = _run_and_data(run_dir, data_path)
    if split not in data.splits:
        raise GsitError(f"split {split!r} not in the data (splits: {sorted(data.splits)})")
    per_seed = []
    for s in run_seeds(run_dir, seed):
        run, model = model_from_run_dir(run_dir, data, seed=s, device=device)
        per_seed.append(
            {
                "seed": s,
                "test": evaluate_split(
                    model,
                    data.splits[split],
                    run=run,
                    dataset=dataset,
                    task=data.task,
                    ctx=Dist(device=torch.device(device)),
                ),
            }
        )
    return {"run_dir": str(run_dir), "split": split, **summarize(per_seed), "per_seed": per_seed}


def _short(x) -> str:
    """The shortest text that reads back as the same float32 (-2.8, not -2.799999952316284)."""
    return str(np.float32(x))


def predict_run(
    run_dir,
    *,
    data_path: str | None,
    out: str,
    split: str = "test",
    seed: int | str | None = "all",
    ensemble: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write ``out`` (a new CSV): one row per chosen seed and sample -- ``seed, id, prediction, label`` (and
    the logits for classification) -- plus, with ``ensemble``, rows with seed ``ensemble`` holding the mean
    prediction over the seeds (classification: the mean logits and their argmax).  ``seed``: ``"all"`` (or
    None) or one seed of the run.  Returns ``{"rows", "samples", "seeds"}``."""
    out_path = Path(out)
    if out_path.exists():
        raise GsitError(f"output file {out!r} already exists; choose a new path (nothing is overwritten)")
    run_dir, dataset, data = _run_and_data(run_dir, data_path)
    if split not in data.splits:
        raise GsitError(f"split {split!r} not in the data (splits: {sorted(data.splits)})")
    seeds = run_seeds(run_dir, None if seed in (None, "all") else int(seed))
    part = data.splits[split]
    per_seed = []
    for s in seeds:
        run, model = model_from_run_dir(run_dir, data, seed=s, device=device)
        per_seed.append(predict_split(model, part, run=run, ctx=Dist(device=torch.device(device))))
    blocks: list[tuple[Any, np.ndarray]] = list(zip(seeds, per_seed))
    if ensemble:
        blocks.append(("ensemble", np.mean(np.stack(per_seed), axis=0)))
    buf = io.StringIO()
    w = csv.writer(buf)
    if data.task == "classification":
        names = data.label_names or [str(i) for i in range(per_seed[0].shape[1])]
        w.writerow(["seed", "id", "prediction", "label", *[f"logit_{n}" for n in names]])
        for s, preds in blocks:
            for i in range(len(part)):
                w.writerow(
                    [
                        s,
                        part.ids[i],
                        names[int(np.argmax(preds[i]))],
                        names[int(part.labels[i])],
                        *[_short(v) for v in preds[i]],
                    ]
                )
    else:
        w.writerow(["seed", "id", "prediction", "label"])
        for s, preds in blocks:
            for i in range(len(part)):
                w.writerow([s, part.ids[i], _short(preds[i, 0]), _short(part.labels[i])])
    atomic_write_bytes(out_path, buf.getvalue().encode())
    return {"rows": len(blocks) * len(part), "samples": len(part), "seeds": seeds}
