"""``gsit tune``: Optuna TPE search scored on the validation split only, then a multi-seed final run.

Phases:

1. **search** -- every trial samples a configuration from the search space, trains one seed with gsit's own
   epoch loop (:func:`gsit.train.train_epoch` + :func:`gsit.evaluate.evaluate_split` on ``valid``), reports
   the validation loss after every epoch to Optuna (median pruning) and returns its best validation loss.
   The test split is *sealed* during the search: the trials get a data view whose ``splits["test"]``
   raises on any access, so no search decision can depend on it.
2. **final** -- the best trial's configuration is trained over ``final_seeds`` (default 5) with
   :func:`gsit.train.run_training` into ``OUT/final/``, which selects each seed's checkpoint on validation
   and only then scores the test split.  This is the only place the test split is read.

The search space is TOML, one table per config key (``section.key``)::

    [model.d_model]
    type = "categorical"
    choices = [16, 32]

    [train.learning_rate_other]
    type = "float"
    low = 1e-4
    high = 1e-2
    log = true

    [model.num_layers]
    type = "int"
    low = 1
    high = 4

``float`` and ``int`` accept ``log`` and ``step``.  Without ``--space`` :data:`DEFAULT_SPACE` is used.
Trials can run in parallel processes or machines sharing ``--storage`` (``sqlite:///tune.db`` on one host, an
RDB URL such as ``postgresql://user@host/db`` across hosts); with a storage the study name defaults to
``gsit-<model>-<dataset>``, so workers started with the same arguments join one study, which is continued,
never replaced.  Workers can skip the final run (``--no-final``); ``--trials 0`` then runs only the final
phase from the study's best trial.  A key set on the command line is never searched: the default space
leaves it out, an explicit ``--space`` naming it is an error.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from gsit.analysis._common import csv_text, new_dir, read_data, require_optuna, write_json_new, write_text_new
from gsit.build import build_model, load_text_encoder
from gsit.config import load_config, parse_override, read_toml
from gsit.distributed import Dist
from gsit.errors import ConfigError, GsitError
from gsit.evaluate import evaluate_split
from gsit.train import (
    make_optimizer,
    make_runner,
    make_scheduler,
    run_execution,
    run_training,
    set_seed,
    train_epoch,
)

DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "model.d_model": {"type": "categorical", "choices": [16, 32]},
    "train.learning_rate_other": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "model.embed_dropout": {"type": "float", "low": 0.0, "high": 0.3},
}
_TYPES = ("categorical", "float", "int")


# ----------------------------------------------------------------------------- search space


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, dict[str, Any]]:
    out = {}
    for k, v in node.items():
        name = f"{prefix}.{k}" if prefix else k
        if not isinstance(v, dict):
            raise ConfigError(f"search space: {name!r} must be a table with a 'type' key, got {v!r}")
        if "type" in v:
            out[name] = v
        else:
            out.update(_flatten(v, name))
    return out


def parse_space(raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Validate a search space (nested TOML tables or a flat ``{"section.key": spec}`` dict)."""
    space = _flatten(raw)
    if not space:
        raise ConfigError("search space is empty")
    for name, spec in space.items():
        if len(name.split(".")) != 2 or name.split(".")[0] not in ("model", "train", "data"):
            raise ConfigError(f"search space: {name!r} must be section.key with section model, train or data")
        kind = spec.get("type")
        if kind not in _TYPES:
            raise ConfigError(f"search space {name!r}: type {kind!r} unknown; known: {list(_TYPES)}")
        allowed = {
            "categorical": {"type", "choices"},
            "float": {"type", "low", "high", "log", "step"},
            "int": {"type", "low", "high", "log", "step"},
        }[kind]
        extra = sorted(set(spec) - allowed)
        if extra:
            raise ConfigError(
                f"search space {name!r}: unknown keys {extra} for type {kind!r}; allowed: {sorted(allowed)}"
            )
        if kind == "categorical":
            choices = spec.get("choices")
            if not isinstance(choices, list) or not choices:
                raise ConfigError(
                    f"search space {name!r}: 'choices' must be a non-empty list, got {choices!r}"
                )
        else:
            low, high = spec.get("low"), spec.get("high")
            if not isinstance(low, (int, float)) or not isinstance(high, (int, float)) or not low < high:
                raise ConfigError(
                    f"search space {name!r}: need numbers low < high, got low={low!r} high={high!r}"
                )
            if spec.get("log") and low <= 0:
                raise ConfigError(f"search space {name!r}: log scale needs low > 0, got {low!r}")
    return space


def load_space(path: str | Path | None) -> dict[str, dict[str, Any]]:
    if path is None:
        return parse_space(DEFAULT_SPACE)
    return parse_space(read_toml(Path(path)))


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and not math.isfinite(v):
            raise ConfigError(f"search space value {v!r} is not finite")
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise ConfigError(f"search space value {v!r} cannot be written as TOML")


def param_overrides(params: dict[str, Any]) -> list[str]:
    return [f"{k}={toml_value(v)}" for k, v in params.items()]


def without_fixed_keys(
    space: dict[str, dict[str, Any]],
    overrides,
    *,
    explicit: bool,
    parse,
    say: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """The search space minus the keys set by ``overrides`` (the command line wins, never silently): with an
    explicit ``--space`` such a key is an error naming it; the default space just leaves it out (said)."""
    fixed = {".".join(parse(o)[0]) for o in overrides}
    clash = [k for k in space if k in fixed]
    if not clash:
        return space
    if explicit:
        raise ConfigError(
            f"search space keys {clash} are also set on the command line; a trial would "
            f"replace them: remove them from the space or from the overrides"
        )
    kept = {k: v for k, v in space.items() if k not in fixed}
    if not kept:
        raise ConfigError(
            f"every key of the default search space ({list(space)}) is set on the command "
            f"line; nothing is left to search (pass --space)"
        )
    if say is not None:
        say(f"search space: {clash} set on the command line, not searched")
    return kept


def suggest(trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        kind = spec["type"]
        if kind == "categorical":
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kind == "float":
            params[name] = trial.suggest_float(
                name,
                float(spec["low"]),
                float(spec["high"]),
                log=bool(spec.get("log", False)),
                step=spec.get("step"),
            )
        else:
            params[name] = trial.suggest_int(
                name,
                int(spec["low"]),
                int(spec["high"]),
                log=bool(spec.get("log", False)),
                step=int(spec.get("step", 1)),
            )
    return params


# ----------------------------------------------------------------------------- sealing the test split


class SealedSplit:
    """Stands in for the test split during the search: any use raises."""

    def __init__(self, name: str = "test") -> None:
        object.__setattr__(self, "_name", name)

    def _refuse(self, what: str):
        raise GsitError(
            f"the {self._name!r} split is sealed during the hyper-parameter search ({what}); "
            f"trials are scored on 'valid' only"
        )

    def __getattr__(self, attr):
        self._refuse(f"attribute {attr!r}")

    def __len__(self) -> int:
        self._refuse("len()")
        return 0  # unreachable


def search_view(data):
    """A shallow copy of ``data`` whose test split is sealed (train and valid are the same objects)."""
    splits = {k: (v if k != "test" else SealedSplit(k)) for k, v in data.splits.items()}
    return dataclasses.replace(data, splits=splits)


# ----------------------------------------------------------------------------- one trial


def train_for_validation(
    run,
    data,
    *,
    seed: int,
    dataset: str,
    device: torch.device,
    max_epochs: int = 0,
    on_epoch: Callable[[int, dict, float], None] | None = None,
) -> dict[str, Any]:
    """Train one seed with the paper's loop and early stopping, scoring ``valid`` after each epoch; never
    touches ``test``.  ``on_epoch(epoch, valid_metrics, train_loss)`` may raise to stop (pruning)."""
    ctx = Dist(device=device)
    set_seed(seed, deterministic=run.train.deterministic)
    model = build_model(run, data, load_text_encoder(run, data)).to(device)
    optimizer = make_optimizer(run, model)
    scheduler = make_scheduler(run, optimizer)
    # the same execution as gsit train (on a GPU: compiled + CUDA-graphed steps; a trial's new shapes
    # compile once, in its first epoch)
    runner = make_runner(run, model, run_execution(run, ctx), task=data.task, ctx=ctx)
    cap = max_epochs or run.train.max_epochs
    best, best_epoch, best_metrics, epoch = math.inf, 0, None, 0
    while True:
        epoch += 1
        train_loss = train_epoch(
            model,
            optimizer,
            data.splits["train"],
            run=run,
            seed=seed,
            epoch=epoch,
            task=data.task,
            ctx=ctx,
            runner=runner,
        )
        valid = evaluate_split(
            model, data.splits["valid"], run=run, dataset=dataset, task=data.task, ctx=ctx, runner=runner
        )
        if valid["Loss"] <= best - 1e-6:
            best, best_epoch, best_metrics = valid["Loss"], epoch, valid
        if scheduler is not None:
            scheduler.step(valid["Loss"])
        if on_epoch is not None:
            on_epoch(epoch, valid, train_loss)
        if epoch - best_epoch >= run.train.early_stop or (cap > 0 and epoch >= cap):
            break
    return {"best_valid_loss": best, "best_epoch": best_epoch, "epochs": epoch, "valid": best_metrics}


# ----------------------------------------------------------------------------- the study


def tune(
    dataset: str,
    *,
    model: str = "gsit",
    trials: int = 20,
    data_path: str | None = None,
    space: dict[str, dict[str, Any]] | str | Path | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    out: str | Path | None = None,
    overrides=(),
    config: str | None = None,
    text_encoder: str | None = None,
    search_seed: int = 1111,
    final_seeds: tuple[int, ...] = (1111, 1112, 1113, 1114, 1115),
    trial_max_epochs: int = 0,
    sampler_seed: int = 0,
    timeout: float | None = None,
    device: str | None = None,
    quiet: bool = True,
    data=None,
    on_phase: Callable[[str], None] | None = None,
    final: bool = True,
) -> dict[str, Any]:
    """Run the search and (``final``) the final multi-seed run; write ``trials.csv``, ``tune.json`` and
    ``final/`` into a new directory.  ``data`` (optional) replaces loading; ``on_phase("search"|"final")``
    is called when a phase starts (the tests use it to check that the test split is read only in the final
    phase)."""
    optuna = require_optuna()
    if trials < 0 or (trials == 0 and storage is None):
        raise GsitError(
            f"--trials must be at least 1 (0 only with --storage: the final run of an existing "
            f"study), got {trials}"
        )
    if not final_seeds:
        raise GsitError("final_seeds is empty")
    if not final and trials == 0:
        raise GsitError("--trials 0 with --no-final has nothing to do")
    explicit_space = space is not None
    if not isinstance(space, dict):
        space = load_space(space)
    else:
        space = parse_space(space)
    space = without_fixed_keys(
        space,
        overrides,
        explicit=explicit_space,
        parse=parse_override,
        say=None if quiet else lambda text: print(text, file=sys.stderr),
    )
    # workers sharing a storage must name the same study: one default name per model and dataset
    study_name = study_name or (f"gsit-{model}-{dataset}" if storage else None)
    base = list(overrides)
    if data_path:
        base.append(f'data.path="{Path(data_path)}"')
    if text_encoder:
        base.append(f'data.text_encoder="{Path(text_encoder)}"')
    run0 = load_config(model, dataset, config, base)
    for name, spec in space.items():  # every key must be a valid config key: fail before any training
        probe = spec["choices"][0] if spec["type"] == "categorical" else spec["low"]
        load_config(model, dataset, config, base + param_overrides({name: probe}))
    if data is None:
        data = read_data(run0, quiet=quiet)
    out_dir = new_dir(out, default_root=Path("runs"), prefix=f"tune-{model}-{dataset}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    if on_phase:
        on_phase("search")
    sealed = search_view(data)
    # one line per trial: gsit's own (below, with the trial's parameters); Optuna's INFO lines would repeat it
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="minimize",
        storage=storage,
        study_name=study_name,
        load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=sampler_seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )

    def objective(trial) -> float:
        params = suggest(trial, space)
        run = load_config(model, dataset, config, base + param_overrides(params))

        def report(epoch: int, valid: dict, train_loss: float) -> None:
            trial.report(valid["Loss"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch} (valid loss {valid['Loss']})")

        res = train_for_validation(
            run,
            sealed,
            seed=search_seed,
            dataset=dataset,
            device=dev,
            max_epochs=trial_max_epochs,
            on_epoch=report,
        )
        trial.set_user_attr("best_epoch", res["best_epoch"])
        trial.set_user_attr("valid", res["valid"])
        if not quiet:
            print(
                f"trial {trial.number}: valid loss {res['best_valid_loss']:.4f} "
                f"(best epoch {res['best_epoch']}) {params}",
                file=sys.stderr,
            )
        return res["best_valid_loss"]

    if not quiet:
        where = f"storage {storage}" if storage else "memory (one process)"
        print(
            f"study {study.study_name!r} in {where}: {len(study.trials)} earlier trial(s); this worker "
            f"runs {trials}",
            file=sys.stderr,
        )
    if trials:
        study.optimize(objective, n_trials=trials, timeout=timeout, catch=())
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise GsitError(f"no trial of study {study.study_name!r} completed (all pruned or failed)")
    best = study.best_trial
    names = list(space)
    rows = [
        [t.number, t.state.name, t.value, t.user_attrs.get("best_epoch", "")]
        + [t.params.get(n, "") for n in names]
        for t in study.trials
    ]
    write_text_new(
        out_dir / "trials.csv", csv_text(["trial", "state", "valid_loss", "best_epoch"] + names, rows)
    )

    # ---- final phase: the only place the test split is read
    results, final_dir = {"mean": None, "std": None}, None
    if final:
        if on_phase:
            on_phase("final")
        final_run = load_config(
            model, dataset, config, base + param_overrides(best.params) + [f"train.seeds={list(final_seeds)}"]
        )
        final_dir = out_dir / "final"
        results = run_training(
            final_run,
            data,
            run_dir=final_dir,
            quiet=quiet,
            device=str(dev),
            command=["gsit", "tune", "--final", *param_overrides(best.params)],
        )
    summary = {
        "model": model,
        "dataset": dataset,
        "study_name": study.study_name,
        "storage": storage,
        "space": space,
        "n_trials": len(study.trials),
        "n_complete": len(complete),
        "n_pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in study.trials),
        "best_trial": best.number,
        "best_valid_loss": best.value,
        "best_params": best.params,
        "search_seed": search_seed,
        "final_seeds": list(final_seeds) if final else [],
        "final_run_dir": str(final_dir) if final_dir else None,
        "final_test_mean": results["mean"],
        "final_test_std": results["std"],
    }
    write_json_new(out_dir / "tune.json", summary)
    summary["out"] = str(out_dir)
    return summary
