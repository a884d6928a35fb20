"""The ``gsit`` subcommands: each turns parsed arguments into one library call (heavy imports inside, so
``gsit --help`` stays light).  The parser and the error handling are in :mod:`gsit.cli`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gsit.errors import GsitError

DOING = ["starting"]  # what the command is doing now, for the last-resort error line


def doing(what: str) -> None:
    """Record what the command is doing now (named by the last-resort error line)."""
    DOING[0] = what


def cmd_train(args: argparse.Namespace) -> int:
    from gsit.build import preflight
    from gsit.distributed import init_distributed
    from gsit.runs import check_new_run_dir, check_resume_data, check_resume_dir, shared_new_run_dir
    from gsit.train import run_execution, run_training

    dataset = args.dataset or ("synthetic" if args.data is None else None)
    if dataset is None:
        raise GsitError("--dataset is required with --data (mosi, mosei, sims, simsv2, mintrec, synthetic)")
    if args.resume and args.run_dir:
        raise GsitError(
            f"--resume {args.resume!r} and --run-dir {args.run_dir!r} cannot be combined: "
            f"--resume continues the run in its own directory"
        )
    doing("reading the configuration")
    run = _load_run(args, dataset)
    if args.print_config:
        from gsit.config_dump import to_json, to_toml

        sys.stdout.write(to_json(run) if args.print_format == "json" else to_toml(run))
        return 0
    if args.tensorboard:
        from gsit.progress import require_tensorboard

        require_tensorboard()  # before any data is read or directory created
    if args.worker_of:
        from gsit.spread import train_worker

        train_worker(
            run,
            Path(args.worker_of),
            [int(s) for s in args.worker_seeds.split(",")],
            device=args.device,
            quiet=args.quiet,
            tensorboard=args.tensorboard,
            log_every=args.log_every,
        )
        return 0
    devices = None
    if args.gpus:
        from gsit.spread import parse_devices

        devices = parse_devices(args.gpus)
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise GsitError("--gpus starts one process per device itself; do not combine it with torchrun")
    doing("starting the device")
    ctx = init_distributed(args.device if devices is None else "cpu")
    doing(f"loading the data ({run.data.path or 'synthetic'})")
    data = _load_data(run, quiet=args.quiet or not ctx.main)
    doing("checking the run directory")
    if args.resume:
        run_dir = Path(args.resume)
        check_resume_dir(run_dir, run)
        check_resume_data(run_dir, data)
    elif args.run_dir:
        run_dir = Path(args.run_dir)
        check_new_run_dir(run_dir, ctx)
    else:
        run_dir = None
    # build the model once before any run directory is created or written: a bad model setting, text
    # encoder or token id fails here with one clear line
    doing("building the model")
    preflight(run, data)
    # an execution this device cannot run fails before any directory exists (--gpus: the workers' device)
    if devices is not None:
        from gsit.spread import device_ctx
    worker_ctx = ctx if devices is None else device_ctx(devices[0])
    run_execution(run, worker_ctx)
    created = run_dir is None or not run_dir.exists()
    if run_dir is None:
        run_dir = shared_new_run_dir(Path(args.out), run.model_name, dataset, ctx)
    doing(f"training (run directory {run_dir})")
    if devices is None:
        try:
            results = run_training(
                run,
                data,
                run_dir=run_dir,
                resume=bool(args.resume),
                quiet=args.quiet,
                device=args.device,
                command=["gsit", *args.argv],
                ctx=ctx,
                tensorboard=args.tensorboard,
                log_every=args.log_every,
            )
        except BaseException:
            if ctx.main and not args.resume:
                from gsit.runs import discard_unstarted_run

                discard_unstarted_run(run_dir, created=created)
            raise
    else:
        if not args.resume:  # the run's files, written once by this process (no seed is trained here)
            run_training(
                run,
                data,
                run_dir=run_dir,
                quiet=args.quiet,
                command=["gsit", *args.argv],
                ctx=worker_ctx,
                only_seeds=[],
                write_summary=False,
                shown_device=f"{', '.join(devices)} (one worker process each)",
            )
        elif not args.quiet:
            print(f"resuming {run_dir} on {', '.join(devices)} (one worker process each)", file=sys.stderr)
        data = None  # the workers read the data themselves
        from gsit.spread import train_on_devices

        results = train_on_devices(args.argv, run, run_dir, devices)
    if ctx.main:
        from gsit.formatting import append_dataset_csv, results_lines

        summary = "\n".join(results_lines(results, run_dir, percent=args.percent))
        print(summary)
        with open(run_dir / "train.log", "a", encoding="utf-8") as fh:  # the log holds all the console showed
            fh.write(summary + "\n")
        if args.results_csv:
            print(f"appended a row to {append_dataset_csv(args.results_csv, results, run_dir)}")
    return 0


def _load_run(args, dataset: str):
    import dataclasses

    from gsit.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "seeds", None):
        try:
            seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        except ValueError as e:
            raise GsitError(f"--seeds {args.seeds!r} must be a comma-separated list of integers") from e
        overrides.append(f"train.seeds={seeds}")
    if getattr(args, "compile", False):
        overrides.append("train.compile=true")
    if getattr(args, "amp", None):
        overrides.append(f'train.amp="{args.amp}"')
    if getattr(args, "deterministic", False):
        overrides.append("train.deterministic=true")
    run = load_config(args.model, dataset, args.config, overrides)
    # --data and --text-encoder are paths, set as given (never parsed as TOML strings: no escapes)
    paths = {}
    if args.data:
        paths["path"] = str(Path(args.data))
    if args.text_encoder:
        paths["text_encoder"] = str(Path(args.text_encoder))
    return dataclasses.replace(run, data=dataclasses.replace(run.data, **paths)) if paths else run


def _load_data(run, *, quiet: bool = True):
    from gsit.data import load_run_data

    return load_run_data(run.data, quiet=quiet)


def cmd_eval(args) -> int:
    from gsit.evaluate import evaluate_run

    out = evaluate_run(args.run_dir, data_path=args.data, split=args.split, seed=args.seed)
    if args.percent:
        from gsit.formatting import percent_values

        out = {
            **out,
            "mean": percent_values(out["mean"]),
            "std": percent_values(out["std"]),
            "per_seed": [{**r, "test": percent_values(r["test"])} for r in out["per_seed"]],
            "units": "Acc/F1 x100 (2 decimals), MAE/Corr/Loss 3 decimals",
        }
    print(json.dumps(out, indent=2))
    return 0


def _seed_choice(text: str | None):
    if text is None or text == "all":
        return "all"
    try:
        return int(text)
    except ValueError as e:
        raise GsitError(f"--seed {text!r} must be 'all' or one integer seed of the run") from e


def cmd_predict(args) -> int:
    from gsit.evaluate import predict_run

    res = predict_run(
        args.run_dir,
        data_path=args.data,
        out=args.out,
        split=args.split,
        seed=_seed_choice(args.seed),
        ensemble=args.ensemble,
    )
    what = f"seeds {res['seeds']}" + (" and their ensemble mean" if args.ensemble else "")
    print(f"wrote {res['rows']} predictions to {args.out} ({res['samples']} samples x {what})")
    return 0


def cmd_export(args) -> int:
    from gsit.api import export

    out = export(args.run_dir, args.out, seed=args.seed)
    print(
        f"wrote {out} (config.json, model.safetensors, README.md model card); load it with "
        f"gsit.from_pretrained({str(out)!r})"
    )
    return 0


def cmd_metrics(args) -> int:
    import numpy as np

    from gsit.metrics import compute_metrics

    arrays = []
    for path in (args.pred, args.true):
        p = Path(path)
        if not p.is_file():
            raise GsitError(f"{path!r} is not a file")
        with open(p, "rb") as fh:
            if fh.read(6) != b"\x93NUMPY":
                raise GsitError(f"{path!r} is not a .npy file (no NumPy header); save arrays with numpy.save")
        try:
            arrays.append(np.load(p, allow_pickle=False))
        except Exception as e:
            raise GsitError(f"{path!r} is not a readable .npy array: {e}") from e
    print(json.dumps(compute_metrics(args.dataset, arrays[0], arrays[1]), indent=2))
    return 0


def cmd_profile(args) -> int:
    from gsit.analysis.profile import profile

    models = [args.model] if args.model else ["gsit", "mult", "vanilla"]
    datasets = [args.dataset] if args.dataset else ["mosi", "mosei", "sims"]
    rows = [profile(m, d, args.overrides) for m in models for d in datasets]
    if args.json:
        print(json.dumps(rows if len(rows) > 1 else rows[0], indent=2))
        return 0
    print(
        f"{'model':8s} {'dataset':8s} {'conv':>10s} {'fusion':>11s} {'head':>10s} {'text enc':>10s} "
        f"{'total':>11s} {'paper':>11s} {'GFLOPs/sample':>14s} {'attn GFLOPs':>12s} {'thop G (B=8)':>13s}"
    )
    for r in rows:
        p, f = r["params"], r["flops_per_sample"]
        print(
            f"{r['model']:8s} {r['dataset']:8s} {p['front_end']:10,d} {p['fusion']:11,d} {p['head']:10,d} "
            f"{p['text_encoder']:10,d} {p['total_without_text_encoder']:11,d} {p['paper_convention']:11,d} "
            f"{f['total'] / 1e9:14.3f} {f['attention'] / 1e9:12.3f} "
            f"{r['thop_macs_batch8']['paper_convention'] / 1e9:13.3f}"
        )
    print(
        "paper convention: GsiT = fusion + conv (head excluded); MulT = all but the text encoder. "
        "FLOPs: true forward FLOPs per sample at padded lengths, attention over allowed pairs only, no BERT. "
        "thop: the paper's MAC convention for one batch of 8 (the paper's MulT row is "
        "`gsit efficiency --model mult_dagger`)."
    )
    return 0


def cmd_synth(args) -> int:
    from gsit.data.synthetic import make_synthetic, write_mmsa_pickle

    kw = {"seed": args.seed, "task": args.task}
    if args.task == "recall":
        kw["recall_keys"] = args.recall_keys
    if args.preset != "small":
        kw["preset"] = args.preset
    data = make_synthetic(**kw)
    out = Path(args.out)
    if args.format == "pkl":
        write_mmsa_pickle(data, out)
    else:
        from gsit.data.convert import save_converted

        save_converted(data, out)
    print(f"wrote {out} ({', '.join(f'{k} {len(v)}' for k, v in data.splits.items())})")
    return 0


def cmd_convert(args) -> int:
    from gsit.data import load_dataset
    from gsit.data.convert import save_converted

    data = load_dataset(args.input, dataset=args.dataset)
    save_converted(data, Path(args.out))
    print(f"wrote {args.out}")
    return 0


def cmd_build_mosi(args) -> int:
    from gsit.data.convert import save_converted
    from gsit.data.mosi_real import build_mosi_from_csv

    data = build_mosi_from_csv(
        args.csv, tokenizer_dir=args.tokenizer, features_npz=args.features, max_text_len=args.max_text_len
    )
    save_converted(data, Path(args.out))
    print(f"wrote {args.out} ({', '.join(f'{k} {len(v)}' for k, v in data.splits.items())})")
    return 0
