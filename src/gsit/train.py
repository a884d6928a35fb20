"""Training: the paper's protocol by default (SPEC §9), MMSA's MulT protocol as a named option.

Paper protocol (``train.protocol = "gsit"``):
  Adam with three parameter groups (BERT weights with decay, BERT biases/LayerNorm without, the rest);
  summed-gradient accumulation over ``accumulation_steps`` batches (MMSA: ``update_epochs``) -- the
  gradient is zeroed at the start of each window, every batch calls ``backward`` on its mean loss (not
  divided), ``step`` runs after the window's last batch, and the partial window at the end of an epoch is
  never stepped; no scheduler, no clipping; after each epoch the validation loss (mean over batches of
  the batch L1, rounded to 4 decimals) selects the best model (improvement > 1e-6); stop after
  ``early_stop`` epochs without one; reload the best weights and evaluate the test split once.
MMSA MulT protocol (``"mmsa_mult"``): one Adam group (``learning_rate``), value clipping, ReduceLROnPlateau.

Model selection reads only the validation split; the test split is read once, after training.
Under ``torchrun`` the same loop runs with DistributedDataParallel: every rank sees a fixed slice of each
global batch, the loss is normalised by the global batch size, and predictions are gathered before metrics,
so results equal a one-process run up to float summation order.
"""

from __future__ import annotations

import json
import math
import os
import random
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from gsit.build import build_model, load_text_encoder
from gsit.checkpoint import (
    LAST,
    atomic_write_bytes,
    atomic_write_json,
    commit_epoch,
    load_best_weights,
    load_training_state,
    recover_seed_dir,
    stage_epoch,
)
from gsit.config import RunConfig
from gsit.data.batch import epoch_batches, total_lengths
from gsit.distributed import (
    Dist,
    all_gather,
    barrier,
    broadcast_parameters,
    init_distributed,
    rank_slice,
)
from gsit.errors import GsitError
from gsit.evaluate import autocast_for, batch_from, evaluate_split, split_dataset, training_loss
from gsit.execution import Execution, StepRunner, modality_dropout_, resolve_execution
from gsit.progress import Progress
from gsit.runs import append_epoch_row, data_facts, versions, write_results


def set_seed(seed: int, *, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (all devices); optionally switch to deterministic algorithms."""
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


_NO_DECAY = ("bias", "LayerNorm.bias", "LayerNorm.weight")


def make_optimizer(run: RunConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Adam with the paper's three parameter groups (SPEC §9), or MMSA MulT's single group."""
    t = run.train
    if t.protocol == "mmsa_mult":
        return torch.optim.Adam(
            [p for p in model.parameters() if p.requires_grad],
            lr=t.learning_rate,
            weight_decay=t.weight_decay,
        )
    bert = [(n, p) for n, p in model.named_parameters() if n.startswith("text_encoder.")]
    bert_ids = {id(p) for _, p in bert}
    groups = [
        {
            "params": [p for n, p in bert if not any(nd in n for nd in _NO_DECAY)],
            "weight_decay": t.weight_decay_bert,
            "lr": t.learning_rate_bert,
        },
        {
            "params": [p for n, p in bert if any(nd in n for nd in _NO_DECAY)],
            "weight_decay": 0.0,
            "lr": t.learning_rate_bert,
        },
        {
            "params": [p for p in model.parameters() if id(p) not in bert_ids],
            "weight_decay": t.weight_decay_other,
            "lr": t.learning_rate_other,
        },
    ]
    return torch.optim.Adam([g for g in groups if g["params"]], betas=(0.9, 0.999), eps=1e-8)


def make_scheduler(run: RunConfig, optimizer):
    """ReduceLROnPlateau on the validation loss for ``train.scheduler = \"plateau\"``, else none."""
    if run.train.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=run.train.plateau_factor, patience=run.train.plateau_patience
        )
    return None


def train_epoch(
    model,
    optimizer,
    split,
    *,
    run: RunConfig,
    seed: int,
    epoch: int,
    task: str,
    ctx: Dist,
    progress: Callable[[int, int, float], None] | None = None,
    runner: StepRunner | None = None,
) -> float:
    """One epoch of summed-gradient accumulation; returns the mean training loss over batches.  ``runner``
    (compiled / CUDA-graphed steps, :mod:`gsit.execution`) replaces the eager step below when given."""
    t = run.train
    model.train()
    static = runner is not None and runner.execution.static
    dataset = split_dataset(split) if static else None
    batches = epoch_batches(
        len(split),
        t.batch_size,
        shuffle=True,
        seed=seed,
        epoch=epoch,
        sizes=total_lengths(split) if t.length_bucketing else None,
    )
    # the running loss stays on the device (float64 where supported: the same sums as Python floats), so a
    # GPU step never waits for the host; it is read when the progress bar moves and once at the end
    acc_dtype = torch.float32 if ctx.device.type == "mps" else torch.float64
    total_t, count = torch.zeros((), dtype=acc_dtype, device=ctx.device), 0
    every = max(1, len(batches) // 50)
    autocast = autocast_for(run, ctx)
    for i, batch_idx in enumerate(batches):
        if i % t.accumulation_steps == 0:
            optimizer.zero_grad(set_to_none=False)
        mine = rank_slice(batch_idx, ctx)
        weight = len(mine) / len(batch_idx)  # this rank's share of the global mean
        if len(mine) == 0:  # a tiny last batch: keep DDP's collective in step with zero weight
            mine, weight = batch_idx[:1], 0.0
        # DDP averages gradients over ranks: scale so the sum equals the global-batch mean
        scale = weight * ctx.world
        if static:  # compiled / CUDA-graphed step on a static shape (gsit.execution)
            loss = runner.train_batch(dataset, mine, scale)
        else:
            batch = batch_from(split, mine, ctx.device)
            modality_dropout_(batch.inputs, t.modality_dropout)
            with autocast:
                out = model(batch.inputs, batch.lengths)
            # task loss (+ the optional contrastive term; under DDP its negatives are this rank's rows only)
            loss = training_loss(
                out,
                batch.labels,
                task,
                contrastive_weight=t.contrastive_weight,
                contrastive_temperature=t.contrastive_temperature,
            )
            (loss * scale).backward()
            if t.grad_clip > 0:
                torch.nn.utils.clip_grad_value_(
                    [p for p in model.parameters() if p.requires_grad], t.grad_clip
                )
        if (i + 1) % t.accumulation_steps == 0:
            if static:
                runner.optimizer_step(optimizer)  # captured in a CUDA graph under graphed modes
            else:
                optimizer.step()
        total_t += loss.detach().to(acc_dtype) * weight
        count += 1
        if progress is not None and ((i + 1) % every == 0 or i + 1 == len(batches)):
            progress(i + 1, len(batches), float(total_t) / count)
    # the partial window is never stepped (SPEC §9); its gradients are zeroed by the next epoch
    losses = all_gather(float(total_t), ctx)
    return float(sum(losses)) / max(count, 1)


def make_runner(
    run: RunConfig, model, execution: Execution, *, task: str, ctx: Dist, train_module=None
) -> StepRunner:
    """The step runner of ``execution`` for ``model`` (static batch = this rank's share of a batch)."""
    t = run.train
    cfg = getattr(model, "config", None)
    return StepRunner(
        model,
        execution,
        task=task,
        batch_size=-(-t.batch_size // ctx.world),
        eval_batch_size=t.eval_batch_size or t.batch_size,
        amp=t.amp,
        modality_dropout=t.modality_dropout,
        grad_clip=t.grad_clip,
        padding_aware=bool(getattr(cfg, "padding_aware", False)),
        modalities=tuple(getattr(cfg, "modalities", ("text", "vision", "audio"))),
        kernel_sizes=dict(getattr(cfg, "kernel_sizes", {})),
        device=ctx.device,
        train_module=train_module,
        compile_text_encoder=t.compile_text_encoder,
        world=ctx.world,
        contrastive_weight=t.contrastive_weight,
        contrastive_temperature=t.contrastive_temperature,
    )


def run_execution(run: RunConfig, ctx: Dist) -> Execution:
    """``train.execution`` resolved for this device and process count."""
    return resolve_execution(
        run.train.execution,
        device=ctx.device,
        world=ctx.world,
        legacy_compile=run.train.compile,
        model_name=run.model_name,
        grad_clip=run.train.grad_clip,
    )


def train_seed(
    run: RunConfig,
    data,
    *,
    seed: int,
    seed_dir: Path,
    ctx: Dist,
    resume: bool,
    progress: Progress,
    dataset: str,
    stop_after_epoch: int | None = None,
) -> dict[str, Any]:
    """Train one seed to early stop, reload the best weights and evaluate the test split once."""
    t = run.train
    task = data.task
    set_seed(seed, deterministic=t.deterministic)
    text_encoder = load_text_encoder(run, data)
    model = build_model(run, data, text_encoder).to(ctx.device)
    progress.params(model)
    optimizer = make_optimizer(run, model)
    scheduler = make_scheduler(run, optimizer)
    train_model = model
    execution = run_execution(run, ctx)
    if ctx.enabled and not execution.static:
        train_model = DDP(
            model,
            device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
            find_unused_parameters=True,
        )
    elif ctx.enabled:  # the static steps average gradients themselves, once per window (gsit.execution)
        broadcast_parameters(model)
    runner = make_runner(run, model, execution, task=task, ctx=ctx, train_module=train_model)
    state = {"epoch": 0, "best_valid": math.inf, "best_epoch": 0, "done": False, "best_state_id": None}
    if resume:
        # rank 0 settles the seed directory to its last commit (see gsit.checkpoint); then every rank loads it
        problem, meta = None, None
        if ctx.main:
            try:
                meta = recover_seed_dir(seed_dir)
            except Exception as e:  # reported on every rank below, so no rank waits forever
                problem = e
        if any(p is not None for p in all_gather(None if problem is None else str(problem), ctx)):
            if problem is not None:
                raise problem
            raise GsitError(f"seed {seed}: rank 0 could not recover {str(seed_dir)!r}")
        if (seed_dir / "last.json").is_file():
            state = load_training_state(
                seed_dir / LAST, model=model, optimizer=optimizer, scheduler=scheduler, meta=meta
            )
            state.setdefault("best_state_id", None)
            progress.line(f"  seed {seed}: resumed after epoch {state['epoch']}")
    if ctx.main:
        seed_dir.mkdir(parents=True, exist_ok=True)
    barrier(ctx)
    die_at = int(os.environ.get("GSIT_TEST_DIE_AT_EPOCH", "0"))  # fault-injection hook for tests (see below)
    die_rank = int(os.environ.get("GSIT_TEST_DIE_RANK", ctx.world - 1))
    while not state["done"]:
        epoch = state["epoch"] + 1
        if die_at and epoch == die_at and ctx.rank == die_rank:
            # GSIT_TEST_DIE_AT_EPOCH=E [GSIT_TEST_DIE_RANK=R]: rank R (default: the last) dies abruptly at the
            # start of epoch E, after epoch E-1's checkpoint was written (tests of worker failure under DDP)
            os._exit(13)
        t0 = time.time()
        train_loss = train_epoch(
            train_model,
            optimizer,
            data.splits["train"],
            run=run,
            seed=seed,
            epoch=epoch,
            task=task,
            ctx=ctx,
            progress=progress.batch(seed, epoch, t.max_epochs),
            runner=runner,
        )
        valid = evaluate_split(
            model, data.splits["valid"], run=run, dataset=dataset, task=task, ctx=ctx, runner=runner
        )
        improved = valid["Loss"] <= state["best_valid"] - 1e-6
        if improved:
            state["best_valid"], state["best_epoch"] = valid["Loss"], epoch
        if scheduler is not None:
            scheduler.step(valid["Loss"])
        state["epoch"] = epoch
        state["done"] = (epoch - state["best_epoch"] >= t.early_stop) or (0 < t.max_epochs <= epoch)
        seconds = time.time() - t0
        if ctx.main:
            row = {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "seconds": round(seconds, 2),
                "lr": optimizer.param_groups[-1]["lr"],
                **{f"valid_{k}": v for k, v in valid.items()},
                "best_epoch": state["best_epoch"],
                "graphs": runner.graph_count(),
            }
            if ctx.device.type == "cuda":
                row["peak_mem_mb"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)
            # one commit point per epoch: stage the tensors, write the row, then commit (gsit.checkpoint)
            meta = stage_epoch(
                seed_dir,
                model=model,
                optimizer=optimizer,
                scheduler=scheduler,
                state=state,
                improved=improved,
            )
            append_epoch_row(seed_dir / "epochs.csv", row)
            commit_epoch(seed_dir, meta)
        barrier(ctx)
        progress.epoch(
            seed=seed,
            epoch=epoch,
            train_loss=train_loss,
            valid=valid,
            improved=improved,
            seconds=seconds,
            best_epoch=state["best_epoch"],
            early_stop=t.early_stop,
            max_epochs=t.max_epochs,
            lr=optimizer.param_groups[-1]["lr"],
        )
        if stop_after_epoch is not None and epoch >= stop_after_epoch and not state["done"]:
            raise KeyboardInterrupt(f"stopped after epoch {epoch} (test hook)")
    progress.stopped(
        seed=seed,
        epoch=state["epoch"],
        best_epoch=state["best_epoch"],
        early_stop=t.early_stop,
        max_epochs=t.max_epochs,
    )
    load_best_weights(seed_dir, model, best_epoch=state["best_epoch"])
    test = evaluate_split(
        model, data.splits["test"], run=run, dataset=dataset, task=task, ctx=ctx, runner=runner
    )
    progress.test(seed, test)
    result = {
        "seed": seed,
        "best_epoch": state["best_epoch"],
        "epochs": state["epoch"],
        "valid_loss": state["best_valid"],
        "test": test,
    }
    if ctx.main:
        atomic_write_json(seed_dir / "results.json", result)
    return result


def run_training(
    run: RunConfig,
    data,
    *,
    run_dir: Path,
    resume: bool = False,
    quiet: bool = False,
    device: str | None = None,
    command: list[str] | None = None,
    ctx: Dist | None = None,
    tensorboard: bool = False,
    log_every: float = 30.0,
    only_seeds: list[int] | None = None,
    write_summary: bool = True,
    shown_device: str | None = None,
) -> dict[str, Any]:
    """Train every seed of ``run`` into ``run_dir`` (skipping seeds already finished when resuming) and
    write the mean/std results.  Progress (:mod:`gsit.progress`) goes to stderr and ``run_dir/train.log``;
    ``tensorboard``: per-epoch scalars under ``run_dir/tensorboard/``; ``log_every``: seconds between plain
    progress lines within an epoch when stderr is not a terminal.  ``only_seeds``: train only these seeds of
    the run (a ``--gpus`` worker); ``write_summary=False``: leave the run's results.json to the caller."""
    ctx = ctx or init_distributed(device)
    progress = Progress(
        quiet,
        ctx,
        log_path=run_dir / "train.log",
        every_s=log_every,
        tensorboard_dir=run_dir / "tensorboard" if tensorboard else None,
    )
    execution = run_execution(run, ctx)
    if ctx.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        if not resume:
            atomic_write_json(run_dir / "config.json", {**run.to_dict(), "execution": execution.to_dict()})
            atomic_write_bytes(run_dir / "command.txt", (shlex.join(command or sys.argv) + "\n").encode())
            atomic_write_json(run_dir / "versions.json", versions())
            atomic_write_json(run_dir / "data.json", data_facts(data))
    if shown_device is None:
        shown_device = str(ctx.device) if ctx.world == 1 else f"{ctx.device.type} x {ctx.world} ranks (DDP)"
    progress.header(run, run_dir, data, shown_device)
    progress.line(f"execution: {execution.mode} ({execution.reason})")
    per_seed = []
    mine = [s for s in run.train.seeds if only_seeds is None or s in only_seeds]
    todo = [s for s in mine if not (resume and (run_dir / f"seed-{s}" / "results.json").is_file())]
    for seed in mine:
        seed_dir = run_dir / f"seed-{seed}"
        done = seed_dir / "results.json"
        if resume and done.is_file():
            per_seed.append(json.loads(done.read_text()))
            continue
        progress.seed_start(run, seed, todo)
        per_seed.append(
            train_seed(
                run,
                data,
                seed=seed,
                seed_dir=seed_dir,
                ctx=ctx,
                resume=resume,
                progress=progress,
                dataset=run.data.dataset,
            )
        )
    results = write_results(run_dir, run, per_seed) if ctx.main and write_summary else {"per_seed": per_seed}
    return results
