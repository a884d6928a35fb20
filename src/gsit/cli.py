"""The ``gsit`` command line: the argument parser and the error handling of :func:`main`.  Thin: each
subcommand maps onto one function of :mod:`gsit.commands`, which calls the library.

User errors (bad files, bad configs, bad names) print one line ``gsit: error: ...`` and exit with code 2.
Anything unexpected prints one line ``gsit: error: <what was being done>: <Type>: <message>`` and exits
with code 1 (the traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import re
import sys

from gsit.commands import (
    DOING,
    cmd_build_mosi,
    cmd_convert,
    cmd_eval,
    cmd_export,
    cmd_metrics,
    cmd_predict,
    cmd_profile,
    cmd_synth,
    cmd_train,
    doing,
)
from gsit.errors import GsitError


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

    from gsit.analysis.commands import cmd_memory_scaling
    from gsit.analysis.commands import register as register_analysis

    register_analysis(sub)
    _add_memory_scaling(sub).set_defaults(func=cmd_memory_scaling)
    for p in sub.choices.values():
        p.formatter_class = HelpFormatter
    return parser


def _add_memory_scaling(sub) -> argparse.ArgumentParser:
    """``gsit memory-scaling``: its options are validated by :func:`gsit.analysis.memory_scaling.make_config`
    (one ``gsit: error:`` line naming the option), so the lists and fractions stay strings here."""
    p = sub.add_parser(
        "memory-scaling",
        help="peak memory and time of the decomposition against sequence length (Appendix B.2; CSV + PNG)",
        description="Multiply every segment of the MOSEI (or MOSI) conv-output layout by each --scales "
        "factor and record, per backend, the peak memory and time of one forward + backward of the "
        "attention alone and of the fusion block, each checked against the fp32 reference first; then "
        "log-log slopes.  Writes OUT/memory_scaling_<cpu|gpu>.csv and .png (never overwritten).",
    )
    p.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    p.add_argument("--out", required=True, help="folder for memory_scaling_<device>.csv / .png")
    p.add_argument("--dataset", default="mosei", help="mosei | mosi (the layout that is scaled)")
    p.add_argument("--scales", default=None, help="length factors (GPU default 1/8,...,64; CPU 1/8,...,2)")
    p.add_argument("--scopes", default=None, help="attention,fusion_block (default: both)")
    p.add_argument(
        "--backends", default=None, help="of reference,naive,pairs,triton,flex (default: not flex)"
    )
    p.add_argument("--batch", type=int, default=None, help="default 8 on the GPU, 1 on CPU")
    p.add_argument("--dtype", default=None, help="bf16 | fp32 (default bf16 on the GPU, fp32 on CPU)")
    p.add_argument("--warmup", type=int, default=None, help="default 3 on the GPU, 1 on CPU")
    p.add_argument("--reps", type=int, default=None, help="default 10 on the GPU, 3 on CPU")
    p.add_argument(
        "--cpu-mem-cap-gb", type=float, default=2.0, help="CPU: skip rows whose scores exceed this"
    )
    p.add_argument(
        "--check-max-n",
        type=int,
        default=None,
        help="check vs the reference up to this N (default GPU 2100, CPU 600)",
    )
    p.add_argument("--fit-from", default="1/2", help="fit slopes over scales >= this")
    p.add_argument(
        "--threads", type=int, default=None, help="CPU threads (default 1 on CPU: shared machines)"
    )
    p.add_argument("--max-seconds", type=float, default=None, help="later rows are written as skipped")
    p.add_argument("--seed", type=int, default=0, help="seed of the inputs and weights")
    return p


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
    doing(f"running gsit {args.command}")
    try:
        return int(args.func(args) or 0)
    except GsitError as e:
        print(f"gsit: error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError) as e:
        print(f"gsit: error: {DOING[0]}: {_os_error_text(e)}", file=sys.stderr)
        return 2
    except ValueError as e:
        print(f"gsit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gsit: interrupted while {DOING[0]}", file=sys.stderr)
        return 130
    except Exception as e:  # the last resort: one line, the traceback only with --debug
        if debug:
            import traceback

            traceback.print_exc()
        text = _os_error_text(e) if isinstance(e, OSError) else " ".join(str(e).split())
        if len(text) > 300:
            text = text[:297] + "..."
        print(
            f"gsit: error: {DOING[0]}: {type(e).__name__}: {text}"
            f"{'' if debug else ' (run with --debug for the traceback)'}",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
