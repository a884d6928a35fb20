"""What researchers wait for: whole ``gsit train`` epochs of the paper protocol, eager vs the fast path.

    PYTHONPATH=src python benchmarks/bench_train.py --out benchmarks/results/train_NVIDIA-H200.csv
    PYTHONPATH=src python benchmarks/bench_train.py --datasets mosi --models gsit --encoders none \\
        --device cpu --epochs 2 --scale 0.02 --out /tmp/t.csv

(the second is the CPU smoke run of tests/benchmarks/test_bench_train.py).

Each row is ONE real ``gsit train`` run in a fresh process (so compilation and CUDA-graph capture are part
of its first epoch), one seed, ``train.max_epochs = --epochs``, early stopping off, on generated data with
the dataset's real widths and padded lengths (MOSI 50/375/500, MOSEI 50/500/500; ``gsit synth``'s
generator, planted cross-modal label).  The MOSEI-shaped training split is cut to ``--mosei-train`` samples
to fit a device session; ``full_epoch_s`` extrapolates to the real split size from the measured samples/s
(marked in the CSV).  Paths: ``eager`` = ``train.execution=eager`` (today's default), ``fast`` =
``train.execution=auto`` (what a user now gets on a GPU); any other execution name is passed as is (the
``execution`` column always records what the run chose).  Text: ``none`` = precomputed 768-d features;
``bert-base`` = a BERT-base-sized encoder (``transformers.BertConfig()``: 12 layers, 768 wide) with random
weights, saved locally and fine-tuned as the paper does (nothing is downloaded).

Columns: ``epoch_s`` is the median of epochs 2 and later (training + validation, as ``epochs.csv`` records
it), ``warmup_s`` = epoch 1 - ``epoch_s``, ``recompiles_after_warmup`` = compiled graphs + captured CUDA
graphs added after epoch 1 (``graphs`` column of ``epochs.csv``), ``peak_mem_mb`` = the training process's
``torch.cuda.max_memory_allocated``, ``test_MAE`` of the run.  Nothing here times another backend than
the one named in the row: a failed run is written as ``status=failed`` with its error.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (
    "dataset",
    "model",
    "text_encoder",
    "path",
    "execution",
    "attention_backend",
    "amp",
    "epoch_s",
    "warmup_s",
    "recompiles_after_warmup",
    "peak_mem_mb",
    "test_MAE",
    "epochs",
    "train_samples",
    "samples_per_s",
    "full_train_samples",
    "full_epoch_s",
    "status",
    "error",
    "overrides",
    "code",
    "gpu",
    "torch",
    "triton",
    "transformers",
    "cuda",
)
FULL_TRAIN = {"mosi": 1284, "mosei": 16326}


def versions() -> dict[str, str]:
    import torch

    out = {
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda or ""),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    for mod in ("triton", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - optional packages: an empty column says it is absent
            out[mod] = ""
    return out


def _code_version() -> str:
    """The repository commit the run used (empty where the copy has no git metadata)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def make_data(work: Path, dataset: str, *, scale: float, mosei_train: int, kind: str) -> Path:
    """An MMSA pickle with the dataset's shapes (``kind``: features | bert text), made once per work dir."""
    from gsit.data.synthetic import make_synthetic, write_mmsa_pickle

    path = work / f"{dataset}_{kind}_{scale}_{mosei_train}.pkl"
    if path.exists():
        return path
    kw = {"preset": dataset, "scale": scale, "seed": 0, "text_kind": kind}
    if dataset == "mosei":
        kw.update(
            n_train=max(2, int(mosei_train * scale)),
            n_valid=max(2, int(256 * scale)),
            n_test=max(2, int(256 * scale)),
        )
    write_mmsa_pickle(make_synthetic(**kw), path)
    return path


def make_bert(work: Path, tiny: bool) -> Path:
    """A BERT-base-sized encoder with random weights, saved locally (``tiny``: 2 layers x 64, CPU smoke)."""
    from transformers import BertConfig, BertModel

    path = work / ("bert-tiny-random" if tiny else "bert-base-random")
    if not (path / "config.json").is_file():
        cfg = (
            BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
            if tiny
            else BertConfig()
        )
        BertModel(cfg).save_pretrained(str(path))
    return path


def one_run(
    *,
    dataset: str,
    model: str,
    encoder: str,
    path: str,
    data: Path,
    bert: Path | None,
    work: Path,
    device: str,
    epochs: int,
    amp: str,
    backend: str | None,
    timeout: float,
    overrides: tuple[str, ...] = (),
) -> dict:
    run_dir = work / f"run_{dataset}_{model}_{encoder}_{path}_{int(time.time() * 1000)}"
    cmd = [
        sys.executable,
        "-m",
        "gsit.cli",
        "train",
        "--quiet",
        "--model",
        model,
        "--dataset",
        dataset,
        "--data",
        str(data),
        "--device",
        device,
        "--seeds",
        "1111",
        "--run-dir",
        str(run_dir),
        f"train.max_epochs={epochs}",
        "train.early_stop=1000",
        f"train.execution={'auto' if path == 'fast' else path}",
    ]
    if bert is not None:
        cmd += ["--text-encoder", str(bert), 'data.text_kind="bert"']
    else:  # precomputed 768-d text features (the GsiT presets default to token ids + an encoder)
        cmd += ['data.text_kind="features"']
    if amp != "none":
        cmd += ["--amp", amp]
    cmd += list(overrides)
    if backend and model != "mult":
        cmd += [f"model.attention_backend={backend}"]
    # a cold compiler cache per run: warmup_s is what a first run on a new machine pays
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "TORCHINDUCTOR_CACHE_DIR": str(run_dir) + "_inductor",
        "TRITON_CACHE_DIR": str(run_dir) + "_triton",
    }
    row = {
        "dataset": dataset,
        "model": model,
        "text_encoder": encoder,
        "path": path,
        "amp": amp,
        "attention_backend": backend if model != "mult" else "mult",
        "overrides": " ".join(overrides),
        "code": _code_version(),
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {**row, "status": "failed", "error": " | ".join(tail)[-400:]}
    with open(run_dir / "seed-1111" / "epochs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    secs = [float(r["seconds"]) for r in rows]
    graphs = [int(r.get("graphs") or 0) for r in rows]
    steady = statistics.median(secs[1:]) if len(secs) > 1 else secs[0]
    results = json.loads((run_dir / "results.json").read_text())
    cfg = json.loads((run_dir / "config.json").read_text())
    n_train = json.loads((run_dir / "data.json").read_text())["splits"]["train"]
    per_s = n_train / steady
    return {
        **row,
        "execution": cfg.get("execution", {}).get("chosen", ""),
        "epoch_s": round(steady, 3),
        "warmup_s": round(secs[0] - steady, 2),
        "recompiles_after_warmup": graphs[-1] - graphs[0],
        "peak_mem_mb": max(float(r.get("peak_mem_mb") or 0) for r in rows),
        "test_MAE": round(results["mean"]["MAE"], 4),
        "epochs": len(secs),
        "train_samples": n_train,
        "samples_per_s": round(per_s, 1),
        "full_train_samples": FULL_TRAIN.get(dataset, n_train),
        "full_epoch_s": round(FULL_TRAIN.get(dataset, n_train) / per_s, 2),
        "status": "ok",
        "error": "",
    }


def write_csv(path: Path, rows: list[dict], env: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: {**env, **r}.get(k, "") for k in COLUMNS})
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", default="mosi,mosei")
    p.add_argument("--models", default="gsit,mult")
    p.add_argument("--encoders", default="none,bert-base", help="none | bert-base (comma-separated)")
    p.add_argument(
        "--paths",
        default="eager,fast",
        help="eager | fast (= train.execution=auto) | graphed | compiled | compiled_graphed",
    )
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--backend", default=None, help="GsiT attention backend (default: the preset's)")
    p.add_argument("--scale", type=float, default=1.0, help="split-size factor (CPU smoke: small)")
    p.add_argument("--mosei-train", type=int, default=2048, help="MOSEI-shaped training samples")
    p.add_argument("--work", default=None, help="scratch folder (data, encoder, run dirs)")
    p.add_argument("--out", required=True)
    p.add_argument("--append", action="store_true", help="keep the rows already in --out")
    p.add_argument("--max-seconds", type=float, default=1e9, help="start no new run after this")
    p.add_argument("--timeout", type=float, default=900, help="per-run limit (s)")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides for every run (CPU smoke)")
    args = p.parse_args(argv)
    work = Path(args.work or (Path("/tmp") / f"gsit-bench-train-{os.getpid()}"))
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    rows: list[dict] = []
    if args.append and out.is_file():
        with open(out, newline="") as fh:
            rows = list(csv.DictReader(fh))
    env = versions()
    t0 = time.time()
    for dataset in args.datasets.split(","):
        for encoder in args.encoders.split(","):
            kind = "bert" if encoder == "bert-base" else "features"
            data = make_data(work, dataset, scale=args.scale, mosei_train=args.mosei_train, kind=kind)
            bert = make_bert(work, tiny=args.device == "cpu") if encoder == "bert-base" else None
            for model in args.models.split(","):
                for path in args.paths.split(","):
                    if time.time() - t0 > args.max_seconds:
                        print(f"budget spent: skipping {dataset} {model} {encoder} {path}", flush=True)
                        continue
                    try:
                        row = one_run(
                            dataset=dataset,
                            model=model,
                            encoder=encoder,
                            path=path,
                            data=data,
                            bert=bert,
                            work=work,
                            device=args.device,
                            epochs=args.epochs,
                            amp=args.amp,
                            backend=args.backend,
                            timeout=args.timeout,
                            overrides=tuple(args.overrides),
                        )
                    except subprocess.TimeoutExpired:
                        row = {
                            "dataset": dataset,
                            "model": model,
                            "text_encoder": encoder,
                            "path": path,
                            "status": "failed",
                            "error": f"timeout after {args.timeout} s",
                        }
                    rows.append(row)
                    write_csv(out, rows, env)
                    print(
                        json.dumps(
                            {
                                k: row.get(k)
                                for k in (
                                    "dataset",
                                    "model",
                                    "text_encoder",
                                    "path",
                                    "execution",
                                    "epoch_s",
                                    "warmup_s",
                                    "recompiles_after_warmup",
                                    "test_MAE",
                                    "status",
                                    "error",
                                )
                            }
                        ),
                        flush=True,
                    )
    return 0 if all(r.get("status") == "ok" for r in rows) else 1


def default_name() -> str:
    import torch

    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return "train_" + re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") + ".csv"


if __name__ == "__main__":
    raise SystemExit(main())
