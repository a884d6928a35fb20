"""The ``gsit`` command line.  Thin: each subcommand parses arguments and calls one library function.

User errors (bad files, bad configs, bad names) print one line ``gsit: error: ...`` and exit with code 2.
Anything unexpected prints one line ``gsit: error: <what was being done>: <Type>: <message>`` and exits
with code 1 (the traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from gsit.errors import GsitError

_DOING = ["starting"]  # what the command is doing now, for the last-resort error line


def _doing(what: str) -> None:
    _DOING[0] = what


def _add_common_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="gsit", help="gsit | mult | vanilla")
    p.add_argument(
        "--dataset",
        default=None,
        help="mosi | mosei | sims | simsv2 | mintrec | synthetic (default: synthetic without --data)",
    )
    p.add_argument("--data", default=None, help="MMSA pickle, converted directory, or MIntRec directory")
    p.add_argument(
        "--text-encoder", default=None, help="local BERT-family model directory (never downloaded)"
    )
    p.add_argument("--config", default=None, help="TOML file merged over the preset")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.d_model=64")


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
    _doing("reading the configuration")
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
    _doing("starting the device")
    ctx = init_distributed(args.device if devices is None else "cpu")
    _doing(f"loading the data ({run.data.path or 'synthetic'})")
    data = _load_data(run, quiet=args.quiet or not ctx.main)
    _doing("checking the run directory")
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
    _doing("building the model")
    preflight(run, data)
    # an execution this device cannot run fails before any directory exists (--gpus: the workers' device)
    if devices is not None:
        from gsit.spread import device_ctx
    worker_ctx = ctx if devices is None else device_ctx(devices[0])
    run_execution(run, worker_ctx)
    created = run_dir is None or not run_dir.exists()
    if run_dir is None:
        run_dir = shared_new_run_dir(Path(args.out), run.model_name, dataset, ctx)
    _doing(f"training (run directory {run_dir})")
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's line breaks and appends ``(default: X)`` to an option's help unless the help already
    says its default or the default is empty (None, False, no list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or default in (None, False, argparse.SUPPRESS)
            or default == []
            or not (action.option_strings or action.nargs in ("?", "*"))
        ):
            return text
        return f"{text} (default: %(default)s)"


EPILOG = """start here:
  gsit train --seeds 1111 train.max_epochs=3          GsiT on a generated dataset, a minute on a CPU
  gsit train --dataset mosi --data MOSI/Processed/unaligned_50.pkl     the paper's protocol on MOSI
  gsit train ... --print-config                       the resolved configuration, nothing run
  gsit report runs/ --percent --no-curves             paper-style tables of every run under runs/
  gsit eval RUN_DIR | gsit predict RUN_DIR --out preds.csv | gsit export RUN_DIR --out DIR

overrides (section.key=value, TOML values) may go anywhere after the subcommand, e.g.
  gsit train model.d_model=64 --seeds 1111,1112 train.max_epochs=20
`gsit COMMAND --help` lists each command's options; the README has the metric glossary and data format."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gsit", description=__doc__.splitlines()[0], epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--debug",
        action="store_true",
        help="print the traceback of an unexpected error (accepted anywhere on the line)",
    )
    sub = parser.add_subparsers(dest="command")

    p = sub.add_parser("train", help="train and test a model (no --data: GsiT on a synthetic dataset)")
    _add_common_train(p)
    p.add_argument("--seeds", default=None, help="comma-separated seeds (default: the preset's, 1111-1115)")
    p.add_argument("--out", default="runs", help="root folder for new run directories")
    p.add_argument("--run-dir", default=None, help="exact new run directory (must not exist or be empty)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a killed run")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument(
        "--gpus",
        default=None,
        metavar="LIST",
        help="spread the seeds over these GPUs of this host, one process each (e.g. 0,1 or "
        "cuda:0,cuda:2); results gathered into one run directory",
    )
    p.add_argument("--worker-of", default=None, help=argparse.SUPPRESS)  # internal: a --gpus worker
    p.add_argument("--worker-seeds", default=None, help=argparse.SUPPRESS)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (static shapes)")
    p.add_argument(
        "--amp",
        default=None,
        choices=["none", "bf16"],
        help="mixed precision; overrides train.amp (default: the preset's, none)",
    )
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (slower on GPU)")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on the console (RUN_DIR/train.log still gets every line)",
    )
    p.add_argument(
        "--log-every",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="off a terminal, a progress line at most this often within an epoch",
    )
    p.add_argument(
        "--tensorboard",
        action="store_true",
        help="per-epoch scalars in RUN_DIR/tensorboard/ (needs the tensorboard package)",
    )
    p.add_argument(
        "--percent",
        action="store_true",
        help="show Acc/F1 x100 with 2 decimals and MAE/Corr with 3 (the papers' convention)",
    )
    p.add_argument(
        "--results-csv",
        default=None,
        metavar="DIR",
        help="append the run's mean/std row to DIR/<dataset>.csv (like MMSA's "
        "results/normal/<dataset>.csv: one table per dataset across runs)",
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (a valid --config file) and exit; reads no data",
    )
    p.add_argument(
        "--print-format", default="toml", choices=["toml", "json"], help="format of --print-config"
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="re-score a run's best checkpoint")
    p.add_argument("run_dir", help="a run directory written by gsit train")
    p.add_argument("--data", default=None, help="data path (default: the run's)")
    p.add_argument("--split", default="test", help="train | valid | test")
    p.add_argument("--seed", type=int, default=None, help="score only this seed (default: every seed)")
    p.add_argument(
        "--percent",
        action="store_true",
        help="Acc/F1 x100 with 2 decimals, MAE/Corr/Loss with 3 (the papers' convention)",
    )
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("predict", help="write predictions with sample ids to CSV")
    p.add_argument("run_dir", help="a run directory written by gsit train")
    p.add_argument("--data", default=None, help="data path (default: the run's)")
    p.add_argument("--out", required=True, help="new CSV file (never overwritten)")
    p.add_argument("--split", default="test", help="train | valid | test")
    p.add_argument(
        "--seed",
        default="all",
        help="'all' (one row per seed and sample, with a seed column) or one seed of the run",
    )
    p.add_argument(
        "--ensemble",
        action="store_true",
        help="also write the mean over the chosen seeds (seed column 'ensemble'; classification: "
        "mean logits)",
    )
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser(
        "export",
        help="a run's checkpoint as a from_pretrained folder with a model card",
        description="Write OUT/ (must not exist): config.json + model.safetensors "
        "(gsit.from_pretrained(OUT) loads it, no training data needed), the run's "
        "configuration and a README.md model card (data, metrics, seeds, command, "
        "versions).",
    )
    p.add_argument("run_dir", help="a run directory written by gsit train")
    p.add_argument("--seed", type=int, default=None, help="which seed's best checkpoint (default: the first)")
    p.add_argument("--out", required=True, help="new folder (never overwritten)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("metrics", help="MMSA-exact metrics of saved predictions")
    p.add_argument("--dataset", required=True, help="metric family: mosi | mosei | sims | simsv2 | mintrec")
    p.add_argument("--pred", required=True, help=".npy predictions")
    p.add_argument("--true", required=True, help=".npy labels")
    p.set_defaults(func=cmd_metrics)

    p = sub.add_parser("profile", help="parameters and FLOPs per model and dataset preset")
    p.add_argument("--model", default=None, help="gsit | mult | vanilla (default: all three)")
    p.add_argument("--dataset", default=None, help="dataset preset (default: mosi, mosei, sims)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. model.d_model=64")
    p.set_defaults(func=cmd_profile)

    p = sub.add_parser("synth", help="write a synthetic MMSA-format dataset with a planted cross-modal label")
    p.add_argument("--out", required=True, help="output file (pkl) or new directory (npz)")
    p.add_argument("--preset", default="small", help="small | mosi | mosei | sims (sizes and shapes)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the generator")
    p.add_argument(
        "--format",
        default="pkl",
        choices=["pkl", "npz"],
        help="pkl: an MMSA pickle; npz: gsit's converted directory (npz + json)",
    )
    p.add_argument(
        "--task",
        default="sign",
        choices=["sign", "recall"],
        help="sign: y = text cue x audio cue x vision magnitude (default); recall: the text names one "
        "of K audio segments and y is that segment's value (needs cross-modal attention)",
    )
    p.add_argument("--recall-keys", type=int, default=4, help="recall: number of audio segments K")
    p.set_defaults(func=cmd_synth)

    p = sub.add_parser("convert", help="convert an MMSA pickle to gsit's code-free format (npz + json)")
    p.add_argument("input", help="MMSA pickle (or MIntRec directory)")
    p.add_argument("--out", required=True, help="new output directory")
    p.add_argument(
        "--dataset", default=None, help="dataset name (mosi, mosei, sims, ...) recorded with the data"
    )
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("build-mosi", help="build a MOSI dataset from an utterance CSV with a local tokenizer")
    p.add_argument("--csv", required=True, help="utterance CSV with columns utterance_id, split, text, label")
    p.add_argument("--tokenizer", required=True, help="local BERT-family model/tokenizer directory")
    p.add_argument("--features", default=None, help="npz with utterance_id, audio, video arrays")
    p.add_argument("--max-text-len", type=int, default=50, help="tokens per utterance (padded/truncated)")
    p.add_argument("--out", required=True, help="new output directory")
    p.set_defaults(func=cmd_build_mosi)

    from gsit.analysis.commands import register as register_analysis

    register_analysis(sub)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    return parser


def _os_error_text(e: OSError) -> str:
    """``Permission denied: 'x'`` instead of ``[Errno 13] Permission denied: 'x'``."""
    if e.strerror:
        return f"{e.filename}: {e.strerror}" if e.filename is not None else e.strerror
    return str(e)


# a section.key=value override (section.sub.key=... too); anything else left over is an unknown argument
_OVERRIDE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)+=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """``parser.parse_args`` that also accepts ``section.key=value`` overrides anywhere on the line (argparse
    alone takes only one contiguous run of them).  Order is kept: a later override of a key wins."""
    args, extra = parser.parse_known_args(argv)
    takes_overrides = isinstance(getattr(args, "overrides", None), list)
    unknown = [t for t in extra if not (takes_overrides and _OVERRIDE.match(t))]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if extra:
        # argparse fills the positional with the first contiguous run; the rest come later on the line
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv  # accepted anywhere on the line (also after the subcommand)
    argv = [a for a in argv if a != "--debug"]
    parser = build_parser()
    args = parse_args(parser, argv)
    args.argv = argv  # recorded in a run's command.txt
    if args.version:
        from gsit import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    _doing(f"running gsit {args.command}")
    try:
        return int(args.func(args) or 0)
    except GsitError as e:
        print(f"gsit: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"gsit: error: {_DOING[0]}: {_os_error_text(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"gsit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gsit: interrupted while {_DOING[0]}", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: one line, the traceback only with --debug
        if debug:
            import traceback

            traceback.print_exc()
        text = _os_error_text(e) if isinstance(e, OSError) else " ".join(str(e).split())
        if len(text) > 300:
            text = text[:297] + "..."
        print(
            f"gsit: error: {_DOING[0]}: {type(e).__name__}: {text}"
            f"{'' if debug else ' (run with --debug for the traceback)'}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
