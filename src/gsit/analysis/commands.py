"""CLI subcommands of the analysis tools: ablate, robustness, attention-map, tune, report, efficiency,
weight-stats, memory-scaling (its parser is in :mod:`gsit.cli`).

Thin wrappers: each parses its arguments and calls one library function of :mod:`gsit.analysis`.  Plotting
commands need matplotlib and ``tune`` needs optuna; both are imported lazily and a missing package is one
clear ``gsit: error:`` line before any work starts.
"""

from __future__ import annotations

import json
from pathlib import Path

from gsit.errors import GsitError


def _seeds(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError as e:
        raise GsitError(f"--seeds {text!r} must be a comma-separated list of integers") from e


def _rates(text: str | None):
    from gsit.analysis.robustness import DEFAULT_RATES

    if not text:
        return DEFAULT_RATES
    try:
        rates = tuple(float(r) for r in text.split(",") if r.strip())
    except ValueError as e:
        raise GsitError(f"--rates {text!r} must be a comma-separated list of numbers in (0, 1)") from e
    bad = [r for r in rates if not 0.0 < r < 1.0]
    if bad:
        raise GsitError(f"--rates: {bad} not in (0, 1)")
    return rates


def _dataset(args) -> str:
    dataset = args.dataset or ("synthetic" if args.data is None else None)
    if dataset is None:
        raise GsitError("--dataset is required with --data (mosi, mosei, sims, simsv2, mintrec, synthetic)")
    return dataset


# ----------------------------------------------------------------------------- commands


def cmd_ablate(args) -> int:
    from gsit.analysis.ablate import parse_variants, run_ablation

    res = run_ablation(
        _dataset(args),
        data_path=args.data,
        out=args.out,
        seeds=_seeds(args.seeds),
        variants=parse_variants(args.variants),
        overrides=tuple(args.overrides),
        text_encoder=args.text_encoder,
        config=args.config,
        quiet=args.quiet,
        device=args.device,
    )
    print(Path(res["out"], "ablation.md").read_text())
    print(f"wrote {res['out']}/ablation.csv, ablation.md, ablation.json and one run directory per variant")
    return 0


def cmd_robustness(args) -> int:
    if args.keep_one:
        return _keep_one(args)
    from gsit.analysis._common import require_matplotlib
    from gsit.analysis.robustness import run_robustness

    require_matplotlib()
    res = run_robustness(
        args.run_dir,
        data_path=args.data,
        out=args.out,
        split=args.split,
        seeds=list(_seeds(args.seeds) or ()) or None,
        rates=_rates(args.rates),
        mask_seed=args.mask_seed,
        device=args.device,
        metric=args.metric,
    )
    m = res["metric"]
    print(f"{res['model']} on {res['dataset']} ({res['split']}, {len(res['seeds'])} seed(s)); {m}:")
    for r in res["rows"]:
        if r["policy"] != "random" or r["rate"] in (0.5, 0.9):
            print(
                f"  {r['policy']:7s} {r['condition']:13s} rate {r['rate']:.1f}  {r[f'{m}_mean']:.4f} "
                f"± {r[f'{m}_std']:.4f}"
            )
    print(f"wrote {res['paths']['csv']}, {res['paths']['json']} and {res['paths']['png']}")
    return 0


def _keep_one(args) -> int:
    """``robustness --keep-one``: full model vs one modality kept (gsit.analysis.single_modality)."""
    import sys

    from gsit.analysis.single_modality import run_single_modality

    if args.rates is not None:
        raise GsitError("--rates has no effect with --keep-one (modalities are removed whole)")
    res = run_single_modality(
        args.run_dir,
        data_path=args.data,
        out=args.out,
        split=args.split,
        seeds=list(_seeds(args.seeds) or ()) or None,
        device=args.device,
        command=" ".join(["gsit", *sys.argv[1:]]),
    )
    m = args.metric or res["primary_metrics"][0]
    if f"{m}_mean" not in res["rows"][0]:
        raise GsitError(f"unknown metric {m!r}; available: {res['metrics']}")
    print(f"{res['model']} on {res['dataset']} ({res['split']}, {len(res['seeds'])} seed(s)); {m}:")
    for r in res["rows"]:
        print(
            f"  {r['label']:12s} {r['policy']:7s} {r[f'{m}_mean']:.4f} ± {r[f'{m}_std']:.4f}  "
            f"({r[f'{m}_delta']:+.4f} vs full)"
        )
    print(f"wrote {res['paths']['csv']}, {res['paths']['md']} and {res['paths']['json']}")
    return 0


def cmd_attention_map(args) -> int:
    from gsit.analysis._common import require_matplotlib
    from gsit.analysis.attention_map import run_attention_map

    require_matplotlib()
    res = run_attention_map(
        args.run_dir,
        data_path=args.data,
        sample=args.sample,
        split=args.split,
        seed=args.seed,
        out=args.out,
        device=args.device,
    )
    print(
        f"wrote {res['png']} (sample {res['sample']} of {res['split']}, id {res['id']}, seed {res['seed']})"
    )
    return 0


def cmd_weight_stats(args) -> int:
    from gsit.analysis._common import require_matplotlib
    from gsit.analysis.weight_stats_report import run_weight_stats

    if not args.no_plots:
        require_matplotlib()
    res = run_weight_stats(
        args.run_dirs,
        out=args.out,
        data_path=args.data,
        seeds=list(_seeds(args.seeds) or ()) or None,
        tensors=args.tensors,
        split=args.split,
        samples=args.samples,
        device=args.device,
        plots=not args.no_plots,
        command=["gsit", *getattr(args, "argv", ["weight-stats"])],
    )
    print(res["markdown"])
    print(f"wrote {', '.join(Path(p).name for p in res['paths'].values())} into {res['out']}")
    return 0


def cmd_tune(args) -> int:
    from gsit.analysis._common import require_optuna
    from gsit.analysis.tune import tune

    require_optuna()
    final = _seeds(args.final_seeds) or (1111, 1112, 1113, 1114, 1115)
    res = tune(
        _dataset(args),
        model=args.model,
        trials=args.trials,
        data_path=args.data,
        space=args.space,
        storage=args.storage,
        study_name=args.study_name,
        out=args.out,
        overrides=tuple(args.overrides),
        config=args.config,
        text_encoder=args.text_encoder,
        search_seed=args.search_seed,
        final_seeds=final,
        trial_max_epochs=args.trial_max_epochs,
        timeout=args.timeout,
        device=args.device,
        quiet=args.quiet,
        final=not args.no_final,
    )
    print(
        f"study {res['study_name']!r}: best trial {res['best_trial']} of {res['n_trials']} (valid loss "
        f"{res['best_valid_loss']:.4f}): {json.dumps(res['best_params'])}"
    )
    if res["final_run_dir"]:
        from gsit.formatting import format_mean_std

        n = len(res["final_seeds"])
        print(f"final run over seeds {res['final_seeds']} -> {res['final_run_dir']}; test:")
        for k, v in res["final_test_mean"].items():
            print(f"  {k:16s} {format_mean_std(k, v, res['final_test_std'][k], n, percent=args.percent)}")
    print(f"wrote {res['out']}/trials.csv and tune.json")
    return 0


def cmd_report(args) -> int:
    from gsit.analysis._common import require_matplotlib
    from gsit.analysis.report import report

    if not args.no_curves:
        require_matplotlib()
    res = report(args.runs_dir, out=args.out, curves=not args.no_curves, percent=args.percent)
    print(Path(res["out"], "report.md").read_text())
    print(
        f"wrote {res['out']}/report.md, report.csv, report.tex, one <dataset>.csv per dataset (MMSA "
        f"layout) and {len(res['pngs'])} curve plot(s)"
    )
    return 0


def cmd_efficiency(args) -> int:
    from gsit.analysis.efficiency import efficiency_row, format_efficiency

    models = [args.model] if args.model else ["gsit", "mult_dagger", "mult", "vanilla"]
    datasets = [args.dataset] if args.dataset else ["mosi", "mosei", "sims"]
    step = None
    if args.step_time:
        step = {"batch": args.step_batch, "device": args.device, "dtype": args.dtype, "backend": args.backend}
    rows = [
        efficiency_row(m, d, batch=args.batch, overrides=tuple(args.overrides), step=step)
        for d in datasets
        for m in models
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(format_efficiency(rows))
    return 0


def cmd_memory_scaling(args) -> int:
    from gsit.analysis.memory_scaling import make_config, memory_scaling

    opts = ("device", "dataset", "scales", "scopes", "backends", "batch", "dtype", "warmup", "reps")
    opts += ("cpu_mem_cap_gb", "check_max_n", "fit_from", "threads", "max_seconds", "seed")
    command = "gsit " + " ".join(getattr(args, "argv", None) or ["memory-scaling"])
    memory_scaling(make_config(**{k: getattr(args, k) for k in opts}, command=command), args.out)
    return 0


# ----------------------------------------------------------------------------- registration


def _common_data(p, *, dataset: bool = True) -> None:
    if dataset:
        p.add_argument(
            "--dataset",
            default=None,
            help="mosi | mosei | sims | simsv2 | mintrec | synthetic (default: synthetic without --data)",
        )
    p.add_argument("--data", default=None, help="MMSA pickle, converted directory, or MIntRec directory")


def register(sub) -> None:
    """Add the analysis subcommands to the ``gsit`` parser's subparsers."""
    from gsit.analysis.variants import VARIANTS

    p = sub.add_parser(
        "ablate",
        help="train the mask ablations, baselines and a text-only control; one table",
        description="Train every variant (paper Table 4 structures, design switches, MulT, "
        "Vanilla, text-only control) with gsit train's protocol into OUT/<variant>/ and "
        "write OUT/ablation.{csv,md,json}: test metrics as mean ± std over seeds.",
    )
    _common_data(p)
    p.add_argument("--text-encoder", default=None, help="local BERT-family model directory")
    p.add_argument("--config", default=None, help="TOML file merged over every variant's preset")
    p.add_argument(
        "--out", default=None, help="new output directory (default runs/ablation-<dataset>-<time>)"
    )
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the presets')")
    p.add_argument(
        "--variants", default=None, help=f"comma-separated subset of: {','.join(VARIANTS)} (default: all)"
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument(
        "overrides",
        nargs="*",
        help="section.key=value for every variant (model.* keys a model lacks are skipped)",
    )
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser(
        "robustness",
        help="missing-modality evaluation of a trained run (CSV + PNG)",
        description="Score a trained run with each modality and pair removed (zeroed, training "
        "mean, dropped from the graph) and under MMSA's random per-step missing "
        "protocol at rates 0.1..0.9.",
    )
    p.add_argument("run_dir", help="a run directory written by gsit train")
    _common_data(p, dataset=False)
    p.add_argument("--out", default=None, help="new output directory (default RUN_DIR/robustness-<time>)")
    p.add_argument("--split", default="test", help="train | valid | test")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of the run (default: all)")
    p.add_argument("--rates", default=None, help="comma-separated missing rates (default 0.1,...,0.9)")
    p.add_argument("--mask-seed", type=int, default=0, help="seed of the random masks (MMSA missing_seed)")
    p.add_argument("--metric", default=None, help="metric to plot (default: the dataset's first primary one)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument(
        "--keep-one",
        action="store_true",
        help="single-modality check instead: the full model beside each modality kept alone "
        "(and none), per removal policy; writes single_modality.csv/.md/.json "
        "(default dir RUN_DIR/single-modality-<time>)",
    )
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser(
        "attention-map",
        help="PNG of each encoder's allowed adjacency and learned attention",
        description="Allowed adjacency (dense mask) of every encoder and the attention averaged "
        "over heads and depth for one sample; weights captured by hooks outside the "
        "model.",
    )
    p.add_argument("run_dir", help="a run directory written by gsit train")
    _common_data(p, dataset=False)
    p.add_argument("--sample", type=int, required=True, help="row index in the split")
    p.add_argument("--split", default="test", help="train | valid | test")
    p.add_argument("--seed", type=int, default=None, help="which seed's checkpoint (default: the first)")
    p.add_argument(
        "--out", default=None, help="new PNG path (default RUN_DIR/attention_<split>_<i>_seed<s>.png)"
    )
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.set_defaults(func=cmd_attention_map)

    p = sub.add_parser(
        "weight-stats",
        help="weight statistics per scope (paper Table 5) and attention-probability statistics",
        description="Mean / variance / skewness / kurtosis of the weights per scope (cross forward, "
        "cross backward, self; GsiT and MulT) for every run and seed, trained and at initialisation, "
        "and of the attention probabilities per encoder on one batch; CSV, JSON, Markdown and "
        "histogram PNGs into a new directory, the paper's Table 5 beside.",
    )
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories written by gsit train")
    p.add_argument("--data", default=None, help="replace the runs' data path")
    p.add_argument("--out", default=None, help="new output directory (default runs/weight-stats-<time>)")
    p.add_argument("--seeds", default=None, help="comma-separated seeds of every run (default: all)")
    p.add_argument(
        "--tensors",
        default="matrices",
        choices=("matrices", "all"),
        help="matrices: parameters with >= 2 dims (no biases, no LayerNorm); all: every parameter",
    )
    p.add_argument("--split", default="valid", help="split of the attention batch")
    p.add_argument("--samples", type=int, default=32, help="rows of the attention batch (the first ones)")
    p.add_argument("--no-plots", action="store_true", help="tables only (no matplotlib needed)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.set_defaults(func=cmd_weight_stats)

    p = sub.add_parser(
        "tune",
        help="Optuna TPE search on validation loss, then a multi-seed final run",
        description="Trials score on the validation split only (the test split is sealed); the "
        "best configuration is re-trained over --final-seeds and only then tested.",
    )
    p.add_argument("--model", default="gsit", help="gsit | mult | vanilla")
    _common_data(p)
    p.add_argument(
        "--text-encoder", default=None, help="local BERT-family model directory (never downloaded)"
    )
    p.add_argument("--config", default=None, help="TOML file merged over the preset")
    p.add_argument(
        "--trials",
        type=int,
        required=True,
        help="trials this worker runs (several workers "
        "sharing --storage add up; 0 with --storage: "
        "only the final run of the study's best)",
    )
    p.add_argument(
        "--no-final",
        action="store_true",
        help="search only (parallel workers); one later `--trials 0` run does the final run",
    )
    p.add_argument(
        "--percent",
        action="store_true",
        help="final test metrics with Acc/F1 x100 (2 decimals), MAE/Corr with 3",
    )
    p.add_argument(
        "--space",
        default=None,
        help="search-space TOML (default: d_model, learning_rate_other, embed_dropout)",
    )
    p.add_argument(
        "--storage",
        default=None,
        help="Optuna storage URL shared by parallel workers: sqlite:///tune.db on one host, "
        "postgresql://user@host/db across hosts (default: memory, one process)",
    )
    p.add_argument("--study-name", default=None, help="Optuna study name (default: gsit-<model>-<dataset>)")
    p.add_argument(
        "--out", default=None, help="new output directory (default runs/tune-<model>-<dataset>-<time>)"
    )
    p.add_argument("--search-seed", type=int, default=1111, help="training seed of every trial")
    p.add_argument(
        "--final-seeds", default=None, help="comma-separated seeds of the final run (default 1111-1115)"
    )
    p.add_argument("--trial-max-epochs", type=int, default=0, help="epoch cap per trial (0: the config's)")
    p.add_argument("--timeout", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides fixed in every trial")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="tables (Markdown, CSV, LaTeX) and training curves of run directories")
    p.add_argument("runs_dir", help="folder searched recursively for run directories")
    p.add_argument("--out", default=None, help="new output directory (default RUNS_DIR/report-<time>)")
    p.add_argument("--no-curves", action="store_true", help="tables only (no matplotlib needed)")
    p.add_argument(
        "--percent",
        action="store_true",
        help="Acc/F1 x100 with 2 decimals, MAE/Corr with 3 (the papers' convention)",
    )
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "efficiency",
        help="params (both conventions), true FLOPs and thop-style MACs",
        description="Per model and dataset preset: parameters (total and the paper's convention), "
        "true forward FLOPs per sample, and thop-convention MACs of one batch "
        "(paper: GsiT 26.224 G, MulT-dagger 26.294 G on MOSI, batch 8).",
    )
    p.add_argument("--model", default=None, help="gsit | mult | mult_dagger | vanilla (default: all)")
    p.add_argument("--dataset", default=None, help="default: mosi, mosei, sims")
    p.add_argument("--batch", type=int, default=8, help="batch size of the thop-style MAC count")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument(
        "--step-time",
        action="store_true",
        help="also measure a training step (time, and peak memory on a GPU) of each model",
    )
    p.add_argument("--step-batch", type=int, default=32, help="batch size of --step-time")
    p.add_argument("--device", default="cpu", help="device of the step measurement (cpu, cuda, cuda:1)")
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"), help="step measurement precision")
    p.add_argument(
        "--backend", default=None, help="GsiT/Vanilla attention backend of the step (default pairs)"
    )
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.d_model=64")
    p.set_defaults(func=cmd_efficiency)
