"""Training: the paper's protocol by default (SPEC §9), MMSA's MulT protocol as a named option.

Paper protocol (``train.protocol = "gsit"``):
  Adam with three parameter groups (BERT weights with decay, BERT biases/LayerNorm without, the rest);
  summed-gradient accumulation over ``update_epochs`` batches -- the gradient is zeroed at the start of
  each window, every batch calls ``backward`` on its mean loss (not divided), ``step`` runs after the
  window's last batch, and the partial window at the end of an epoch is never stepped; no scheduler, no
  clipping; after each epoch the validation loss (mean over batches of the batch L1, rounded to 4
  decimals) selects the best model (improvement > 1e-6); stop after ``early_stop`` epochs without one;
  reload the best weights and evaluate the test split once.
MMSA MulT protocol (``"mmsa_mult"``): one Adam group (``learning_rate``), value clipping, ReduceLROnPlateau.

Model selection reads only the validation split; the test split is read once, after training.
Under ``torchrun`` the same loop runs with DistributedDataParallel: every rank sees a fixed slice of each
global batch, the loss is normalised by the global batch size, and predictions are gathered before metrics,
so results equal a one-process run up to float summation order.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import platform
import random
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from gsit.checkpoint import (atomic_write_bytes, atomic_write_json, load_model_weights, load_training_state,
                             save_model, save_training_state)
from gsit.config import RunConfig, build_model_config
from gsit.errors import ConfigError, GsitError
from gsit.metrics import compute_metrics

# ----------------------------------------------------------------------------- distributed context


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str | None) -> Dist:
    """Single process, or DDP when launched by ``torchrun`` (WORLD_SIZE > 1): gloo on CPU, NCCL on GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    want_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    if world <= 1:
        return Dist(0, 1, torch.device(device or ("cuda" if want_cuda else "cpu")))
    import datetime

    import torch.distributed as dist
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    timeout = datetime.timedelta(seconds=int(os.environ.get("GSIT_DIST_TIMEOUT", "300")))
    if want_cuda:
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", timeout=timeout)
        dev = torch.device("cuda", local)
    else:
        dist.init_process_group("gloo", timeout=timeout)
        dev = torch.device("cpu")
    return Dist(rank, world, dev)


def _all_gather(obj: Any, ctx: Dist) -> list[Any]:
    if not ctx.enabled:
        return [obj]
    import torch.distributed as dist
    out: list[Any] = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def _barrier(ctx: Dist) -> None:
    if ctx.enabled:
        import torch.distributed as dist
        dist.barrier()


# ----------------------------------------------------------------------------- seeding, batches


def set_seed(seed: int, *, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)


def epoch_batches(n: int, batch_size: int, *, shuffle: bool, seed: int, epoch: int,
                  sizes: np.ndarray | None = None) -> list[np.ndarray]:
    """Global batches of row indices; the permutation depends only on (seed, epoch), so a resumed run and
    every DDP rank see the same batches.  With ``sizes`` (per-row total valid length), rows are bucketed:
    each chunk of 32 batches is sorted by size before batching, and the batch order is shuffled."""
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).numpy()
    else:
        g, order = None, np.arange(n)
    if sizes is not None:
        chunk = 32 * batch_size
        order = np.concatenate([c[np.argsort(sizes[c], kind="stable")] for c in
                                (order[i:i + chunk] for i in range(0, n, chunk))])
    batches = [order[i:i + batch_size] for i in range(0, n, batch_size)]
    if sizes is not None and g is not None:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    return batches


def total_lengths(split) -> np.ndarray:
    """Per-row sum of valid lengths over the modalities (for length bucketing)."""
    split.fill_lengths()
    return (np.asarray(split.text_lengths) + np.asarray(split.audio_lengths)
            + np.asarray(split.vision_lengths)).astype(np.int64)


def _rank_slice(batch: np.ndarray, ctx: Dist) -> np.ndarray:
    return batch[ctx.rank::ctx.world]


# ----------------------------------------------------------------------------- model and optimizer


def data_input_dims(data, text_encoder) -> dict[str, int]:
    dims = {"audio": int(data.audio_dim), "vision": int(data.vision_dim)}
    if text_encoder is not None:
        dims["text"] = int(text_encoder.out_dim)
    elif data.text_kind == "bert":
        raise ConfigError(f"the data at {data.source!r} holds text as token ids (text_bert); pass a local BERT-family "
                          f"model directory with --text-encoder DIR (nothing is downloaded)")
    else:
        dims["text"] = int(data.text_dim)
    return dims


def load_text_encoder(run: RunConfig, data):
    if data.text_kind != "bert":
        return None
    if not run.data.text_encoder:
        data_input_dims(data, None)  # raises the clear error
    from gsit.models.text import BertTextEncoder
    try:  # transformers >= 5 draws a "Loading weights" progress bar on stderr: keep logs to gsit's own lines
        from transformers.utils import logging as hf_logging
        bar_was_on = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()
    except Exception:  # pragma: no cover - no transformers: from_pretrained reports it
        hf_logging, bar_was_on = None, False
    try:
        encoder = BertTextEncoder.from_pretrained(run.data.text_encoder)
    finally:
        if hf_logging is not None and bar_was_on:
            hf_logging.enable_progress_bar()
    check_token_ids(data, getattr(encoder.bert.config, "vocab_size", None), run.data.text_encoder)
    return encoder


def check_token_ids(data, vocab_size: int | None, encoder_path: str = "") -> None:
    """text_bert ids must index the text encoder's vocabulary (an MMSA pickle carries no vocabulary, so
    this is known only once the encoder is loaded); otherwise the embedding lookup fails mid-training."""
    if not vocab_size:
        return
    for name, split in data.splits.items():
        tb = getattr(split, "text_bert", None)
        if tb is None:
            continue
        ids = tb[:, 0, :]
        bad = (ids < 0) | (ids >= vocab_size)
        if bad.any():
            i, j = (int(x) for x in np.argwhere(bad)[0])
            raise ConfigError(f"{data.source}: split '{name}' key 'text_bert' holds token id "
                              f"{int(ids[i, j])} at (sample, position) ({i}, {j}), outside the vocabulary "
                              f"of size {vocab_size} of the text encoder {encoder_path!r}")


def preflight(run: RunConfig, data) -> None:
    """Build the model once (and load the text encoder) so that a bad model setting, text encoder, token
    id or too-short sequence fails before a run directory is created or written."""
    model = build_model(run, data, load_text_encoder(run, data))
    kernels = getattr(getattr(model, "config", None), "kernel_sizes", None) or {}
    lengths = data.seq_lengths
    for m, k in kernels.items():
        if m in lengths and lengths[m] < int(k):
            raise ConfigError(f"model.kernel_sizes: the {m} conv kernel {int(k)} is longer than the data's "
                              f"{m} sequences (length {lengths[m]}); set e.g. "
                              f"model.kernel_sizes={{{m}=1, ...}}")


def build_model(run: RunConfig, data, text_encoder=None) -> torch.nn.Module:
    output_dim = int(data.num_classes) if data.task == "classification" else 1
    cfg = build_model_config(run, input_dims=data_input_dims(data, text_encoder), output_dim=output_dim)
    if run.model_name == "gsit":
        from gsit.models.gsit import GsiT
        return GsiT(cfg, text_encoder=text_encoder)
    if run.model_name == "vanilla":
        from gsit.models.vanilla import Vanilla
        return Vanilla(cfg, text_encoder=text_encoder)
    from gsit.models.mult import MulT
    return MulT(cfg, text_encoder=text_encoder)


_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def make_optimizer(run: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    t = run.train
    if t.protocol == "mmsa_mult":
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=t.learning_rate,
                                weight_decay=t.weight_decay)
    bert = [(n, p) for n, p in model.named_parameters() if n.startswith("text_encoder.")]
    bert_ids = {id(p) for _, p in bert}
    groups = [
        {"params": [p for n, p in bert if not any(nd in n for nd in _NO_DECAY)],
         "weight_decay": t.weight_decay_bert, "lr": t.learning_rate_bert},
        {"params": [p for n, p in bert if any(nd in n for nd in _NO_DECAY)],
         "weight_decay": 0.0, "lr": t.learning_rate_bert},
        {"params": [p for p in model.parameters() if id(p) not in bert_ids],
         "weight_decay": t.weight_decay_other, "lr": t.learning_rate_other},
    ]
    return torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.999), eps=1e-8)


def make_scheduler(run: RunConfig, optimizer):
    if run.train.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=run.train.plateau_factor,
                                                          patience=run.train.plateau_patience)
    return None


# ----------------------------------------------------------------------------- one epoch


def _loss(pred: torch.Tensor, labels: torch.Tensor, task: str, reduction: str = "mean") -> torch.Tensor:
    if task == "classification":
        return F.cross_entropy(pred.float(), labels.long(), reduction=reduction)
    return F.l1_loss(pred.float().view(-1), labels.float().view(-1), reduction=reduction)


def _batch_from(split, idx: np.ndarray, device: torch.device):
    """Gather rows ``idx`` of ``split`` into a Batch on ``device`` (one fancy-index per array)."""
    from gsit.data.batch import SplitDataset
    ds = split.__dict__.get("_gsit_dataset")
    if ds is None:
        ds = split.__dict__["_gsit_dataset"] = SplitDataset(split)
    return ds.__getitems__(idx).to(device)


def _modality_dropout(batch, p: float, generator: torch.Generator | None = None):
    if p <= 0:
        return batch
    for m in ("audio", "vision"):
        x = batch.inputs[m]
        keep = (torch.rand(x.shape[0], device=x.device) >= p).to(x.dtype)
        batch.inputs[m] = x * keep[:, None, None]
    return batch


def train_epoch(model, optimizer, split, *, run: RunConfig, seed: int, epoch: int, task: str, ctx: Dist,
                progress: Callable[[int, int, float], None] | None = None) -> float:
    """One epoch of summed-gradient accumulation; returns the mean training loss over batches."""
    t = run.train
    model.train()
    batches = epoch_batches(len(split), t.batch_size, shuffle=True, seed=seed, epoch=epoch,
                            sizes=total_lengths(split) if t.length_bucketing else None)
    # the running loss stays on the device (float64 where supported: the same sums as Python floats), so a
    # GPU step never waits for the host; it is read when the progress bar moves and once at the end
    acc_dtype = torch.float32 if ctx.device.type == "mps" else torch.float64
    total_t, count = torch.zeros((), dtype=acc_dtype, device=ctx.device), 0
    every = max(1, len(batches) // 50)
    autocast = _autocast(run, ctx)
    for i, batch_idx in enumerate(batches):
        if i % t.update_epochs == 0:
            optimizer.zero_grad(set_to_none=False)
        mine = _rank_slice(batch_idx, ctx)
        weight = len(mine) / len(batch_idx)  # this rank's share of the global mean
        if len(mine) == 0:  # a tiny last batch: keep DDP's collective in step with zero weight
            mine, weight = batch_idx[:1], 0.0
        batch = _modality_dropout(_batch_from(split, mine, ctx.device), t.modality_dropout)
        with autocast:
            out = model(batch.inputs, batch.lengths)
        loss = _loss(out["prediction"], batch.labels, task)
        # DDP averages gradients over ranks: scale so the sum equals the global-batch mean
        (loss * weight * ctx.world).backward()
        if t.grad_clip > 0:
            torch.nn.utils.clip_grad_value_([p for p in model.parameters() if p.requires_grad], t.grad_clip)
        if (i + 1) % t.update_epochs == 0:
            optimizer.step()
        total_t += loss.detach().to(acc_dtype) * weight
        count += 1
        if progress is not None and ((i + 1) % every == 0 or i + 1 == len(batches)):
            progress(i + 1, len(batches), float(total_t) / count)
    # the partial window is never stepped (SPEC §9); its gradients are zeroed by the next epoch
    losses = _all_gather(float(total_t), ctx)
    return float(sum(losses)) / max(count, 1)


def _autocast(run: RunConfig, ctx: Dist):
    if run.train.amp == "bf16":
        return torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16)
    import contextlib
    return contextlib.nullcontext()


@torch.no_grad()
def predict_split(model, split, *, run: RunConfig, ctx: Dist, batch_size: int | None = None) -> np.ndarray:
    """Predictions for every row of ``split`` in row order (gathered across DDP ranks)."""
    model.eval()
    bs = batch_size or run.train.eval_batch_size or run.train.batch_size
    rows = np.arange(len(split))[ctx.rank::ctx.world]
    outs, idxs = [], []
    autocast = _autocast(run, ctx)
    for start in range(0, len(rows), bs):
        idx = rows[start:start + bs]
        batch = _batch_from(split, idx, ctx.device)
        with autocast:
            pred = model(batch.inputs, batch.lengths)["prediction"].float()
        outs.append(pred.cpu().numpy())
        idxs.append(idx)
    local = (np.concatenate(idxs) if idxs else np.zeros(0, dtype=np.int64),
             np.concatenate(outs) if outs else np.zeros((0, 1), dtype=np.float32))
    parts = _all_gather(local, ctx)
    order = np.concatenate([p[0] for p in parts])
    preds = np.concatenate([p[1] for p in parts])
    result = np.empty_like(preds)
    result[order] = preds
    return result


def split_loss(preds: np.ndarray, labels: np.ndarray, *, task: str, batch_size: int) -> float:
    """MMSA's evaluation loss: the mean over batches of the batch loss, rounded to 4 decimals."""
    losses = []
    for s in range(0, len(labels), batch_size):
        p = torch.from_numpy(preds[s:s + batch_size])
        y = torch.from_numpy(np.asarray(labels[s:s + batch_size]))
        losses.append(float(_loss(p, y, task)))
    return round(float(np.mean(losses)), 4)


def evaluate_split(model, split, *, run: RunConfig, dataset: str, task: str, ctx: Dist) -> dict[str, float]:
    preds = predict_split(model, split, run=run, ctx=ctx)
    bs = run.train.eval_batch_size or run.train.batch_size
    metrics = {"Loss": split_loss(preds, split.labels, task=task, batch_size=bs)}
    metric_preds = preds if task == "classification" else preds.reshape(-1)
    # the synthetic task is MOSI-like (regression in [-3, 3]) and is scored with MOSI's metrics
    metrics.update(compute_metrics("mosi" if dataset == "synthetic" else dataset, metric_preds, split.labels))
    return metrics


# ----------------------------------------------------------------------------- run directories


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
           "platform": platform.platform()}
    from gsit import __version__
    out["gsit"] = __version__
    for mod in ("triton", "transformers", "safetensors"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:
            pass
    if torch.cuda.is_available():
        out["cuda"] = str(torch.version.cuda)
        out["gpu"] = torch.cuda.get_device_name(0)
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def new_run_dir(root: Path, model: str, dataset: str) -> Path:
    """A fresh directory under ``root``; never an existing one."""
    root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = root / f"{model}_{dataset}_{stamp}" if n == 0 else root / f"{model}_{dataset}_{stamp}-{n}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise GsitError(f"could not create a new run directory under {str(root)!r}")


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    """Append one row; the file is rewritten atomically so a crash never leaves half a line."""
    rows: list[dict[str, Any]] = []
    if path.is_file():
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    rows = [r for r in rows if int(r["epoch"]) < int(row["epoch"])] + [row]
    fields = list(row)
    import io
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in fields})
    atomic_write_bytes(path, buf.getvalue().encode())


# ----------------------------------------------------------------------------- the loop


class Progress:
    def __init__(self, quiet: bool, ctx: Dist) -> None:
        self.quiet = quiet or not ctx.main
        self.tty = sys.stderr.isatty()

    def batch(self, seed: int, epoch: int):
        if self.quiet or not self.tty:
            return None

        def show(i: int, n: int, loss: float) -> None:
            width = 30
            done = int(width * i / n)
            sys.stderr.write(f"\r  seed {seed} epoch {epoch:3d} [{'#' * done}{'.' * (width - done)}] "
                             f"{i}/{n} loss {loss:.4f}")
            if i == n:
                sys.stderr.write("\r" + " " * 80 + "\r")
            sys.stderr.flush()
        return show

    def line(self, text: str) -> None:
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)


def train_seed(run: RunConfig, data, *, seed: int, seed_dir: Path, ctx: Dist, resume: bool,
               progress: Progress, dataset: str, stop_after_epoch: int | None = None) -> dict[str, Any]:
    """Train one seed to early stop, reload the best weights and evaluate the test split once."""
    t = run.train
    task = data.task
    set_seed(seed, deterministic=t.deterministic)
    text_encoder = load_text_encoder(run, data)
    model = build_model(run, data, text_encoder).to(ctx.device)
    optimizer = make_optimizer(run, model)
    scheduler = make_scheduler(run, optimizer)
    train_model = model
    if ctx.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP
        train_model = DDP(model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                          find_unused_parameters=True)
    if t.compile:
        train_model = torch.compile(train_model)
    state = {"epoch": 0, "best_valid": math.inf, "best_epoch": 0, "done": False}
    last = seed_dir / "last.safetensors"
    if resume and last.is_file() and (seed_dir / "last.json").is_file():
        state = load_training_state(last, model=model, optimizer=optimizer, scheduler=scheduler)
        progress.line(f"  seed {seed}: resumed after epoch {state['epoch']}")
    if ctx.main:
        seed_dir.mkdir(parents=True, exist_ok=True)
    _barrier(ctx)
    die_at = int(os.environ.get("GSIT_TEST_DIE_AT_EPOCH", "0"))  # fault-injection hook for tests (see below)
    die_rank = int(os.environ.get("GSIT_TEST_DIE_RANK", ctx.world - 1))
    while not state["done"]:
        epoch = state["epoch"] + 1
        if die_at and epoch == die_at and ctx.rank == die_rank:
            # GSIT_TEST_DIE_AT_EPOCH=E [GSIT_TEST_DIE_RANK=R]: rank R (default: the last) dies abruptly at the
            # start of epoch E, after epoch E-1's checkpoint was written (tests of worker failure under DDP)
            os._exit(13)
        t0 = time.time()
        train_loss = train_epoch(train_model, optimizer, data.splits["train"], run=run, seed=seed, epoch=epoch,
                                 task=task, ctx=ctx, progress=progress.batch(seed, epoch))
        valid = evaluate_split(model, data.splits["valid"], run=run, dataset=dataset, task=task, ctx=ctx)
        improved = valid["Loss"] <= state["best_valid"] - 1e-6
        if improved:
            state["best_valid"], state["best_epoch"] = valid["Loss"], epoch
            if ctx.main:
                save_model(seed_dir / "best.safetensors", model)
        if scheduler is not None:
            scheduler.step(valid["Loss"])
        state["epoch"] = epoch
        state["done"] = (epoch - state["best_epoch"] >= t.early_stop) or (0 < t.max_epochs <= epoch)
        if ctx.main:
            row = {"epoch": epoch, "train_loss": round(train_loss, 6), "seconds": round(time.time() - t0, 2),
                   "lr": optimizer.param_groups[-1]["lr"], **{f"valid_{k}": v for k, v in valid.items()},
                   "best_epoch": state["best_epoch"]}
            _append_csv(seed_dir / "epochs.csv", row)
            save_training_state(last, model=model, optimizer=optimizer, scheduler=scheduler, state=state)
        _barrier(ctx)
        progress.line(f"  seed {seed} epoch {epoch:3d}  train {train_loss:.4f}  valid loss {valid['Loss']:.4f}"
                      f"{'  *' if improved else ''}")
        if stop_after_epoch is not None and epoch >= stop_after_epoch and not state["done"]:
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (test hook)")
    load_model_weights(seed_dir / "best.safetensors", model)
    test = evaluate_split(model, data.splits["test"], run=run, dataset=dataset, task=task, ctx=ctx)
    result = {"seed": seed, "best_epoch": state["best_epoch"], "epochs": state["epoch"],
              "valid_loss": state["best_valid"], "test": test}
    if ctx.main:
        atomic_write_json(seed_dir / "results.json", result)
    return result


def summarize(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    keys = list(per_seed[0]["test"])
    mean, std = {}, {}
    for k in keys:
        vals = np.array([r["test"][k] for r in per_seed], dtype=np.float64)
        mean[k] = float(np.mean(vals))
        std[k] = float(np.std(vals)) if len(vals) > 1 else 0.0
    return {"mean": mean, "std": std}


def write_results(run_dir: Path, run: RunConfig, per_seed: list[dict[str, Any]]) -> dict[str, Any]:
    summary = summarize(per_seed)
    results = {"model": run.model_name, "dataset": run.data.dataset, "seeds": [r["seed"] for r in per_seed],
               "n_seeds": len(per_seed), **summary, "per_seed": per_seed}
    atomic_write_json(run_dir / "results.json", results)
    header = ["model", "dataset", "n_seeds"]
    row: list[Any] = [run.model_name, run.data.dataset, len(per_seed)]
    for k in summary["mean"]:
        header += [f"{k}_mean", f"{k}_std"]
        row += [summary["mean"][k], summary["std"][k]]
    import io
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerow(row)
    atomic_write_bytes(run_dir / "results.csv", buf.getvalue().encode())
    return results


def run_training(run: RunConfig, data, *, run_dir: Path, resume: bool = False, quiet: bool = False,
                 device: str | None = None, command: list[str] | None = None,
                 ctx: Dist | None = None) -> dict[str, Any]:
    ctx = ctx or init_distributed(device)
    progress = Progress(quiet, ctx)
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_json(run_dir / "config.json", run.to_dict())
            atomic_write_bytes(run_dir / "command.txt", (shlex.join(command or sys.argv) + "\n").encode())
            atomic_write_json(run_dir / "versions.json", versions())
            atomic_write_json(run_dir / "data.json", data_facts(data))
    per_seed = []
    for seed in run.train.seeds:
        seed_dir = run_dir / f"seed-{seed}"
        done = seed_dir / "results.json"
        if resume and done.is_file():
            per_seed.append(json.loads(done.read_text()))
            continue
        progress.line(f"{run.model_name} on {run.data.dataset}: seed {seed}")
        per_seed.append(train_seed(run, data, seed=seed, seed_dir=seed_dir, ctx=ctx, resume=resume,
                                   progress=progress, dataset=run.data.dataset))
    results = write_results(run_dir, run, per_seed) if ctx.main else {"per_seed": per_seed}
    return results


def data_facts(data) -> dict[str, Any]:
    return {"source": str(data.source), "task": data.task, "num_classes": data.num_classes,
            "label_names": data.label_names, "text_kind": data.text_kind,
            "dims": {"text": data.text_dim, "audio": data.audio_dim, "vision": data.vision_dim},
            "seq_lengths": data.seq_lengths,
            "splits": {k: len(v) for k, v in data.splits.items()}}


def load_run_config(run_dir: Path, data_path: str | None = None) -> RunConfig:
    """The resolved configuration a run directory was trained with (``data_path`` replaces its data path)."""
    from gsit.config import load_config
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
        raise ConfigError(f"{str(run_dir)!r} is not a run directory (no config.json)")
    raw = json.loads(cfg_path.read_text())
    base = load_config(raw["model_name"], raw["data"]["dataset"])

    def merged(section, values):
        return dataclasses.replace(section, **{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
    data = merged(base.data, raw["data"])
    if data_path:
        data = dataclasses.replace(data, path=str(data_path))
    return RunConfig(model_name=raw["model_name"], model=raw["model"], train=merged(base.train, raw["train"]),
                     data=data)


def run_seeds(run_dir: Path, seed: int | None = None) -> list[int]:
    """Seeds with a best checkpoint in ``run_dir`` (only ``seed`` when given; an error if it has none)."""
    seeds = sorted(int(p.name.split("-", 1)[1]) for p in Path(run_dir).glob("seed-*")
                   if (p / "best.safetensors").is_file())
    if not seeds:
        raise ConfigError(f"run directory {str(run_dir)!r} has no best checkpoint")
    if seed is not None:
        if seed not in seeds:
            raise ConfigError(f"run directory {str(run_dir)!r} has no checkpoint for seed {seed}; seeds: {seeds}")
        return [seed]
    return seeds


def model_from_run_dir(run_dir: Path, data, *, seed: int | None = None, device: str = "cpu"):
    """Rebuild a trained model from a run directory (config + best checkpoint of ``seed``)."""
    run = load_run_config(run_dir)
    seed = run_seeds(run_dir, seed)[0]
    model = build_model(run, data, load_text_encoder(run, data))
    load_model_weights(Path(run_dir) / f"seed-{seed}" / "best.safetensors", model)
    return run, model.to(device).eval()
