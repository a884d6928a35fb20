"""Where a ``gsit train`` epoch's time goes: host preparation, GPU step time, optimizer, evaluation, saving.

    PYTHONPATH=src python benchmarks/profile_train.py --encoder bert-base --execution graphed --out DIR

Runs ONE real ``gsit train`` in this process (MOSI- or MOSEI-shaped generated data, as
``benchmarks/bench_train.py`` makes it) and instruments it from outside, without changing what runs:

* every epoch: wall time of ``train_epoch``, of each ``evaluate_split`` and of checkpoint staging, and
  ``graphs`` (compiled + captured graphs so far) read right after the epoch's training, before its
  validation pass (so epoch 1's validation captures show up in epoch 2's count);
* after the last epoch's training (``--epochs``, default 3), on the same runner and data:

  - ``host_prep_s``: building the epoch's padded CPU batches alone (``StepRunner._cpu_batch``);
  - ``gpu_step_ms``: the most used captured training graph replayed back to back (no host work between
    replays; synchronised once), i.e. the GPU time of one step;
  - ``copy_ms``: copying one batch into the captured graph's input buffers (as the step does);
  - ``optimizer_step_ms``: ``optimizer.step()`` alone (once per accumulation window);
  - ``profile_top``: the top CUDA kernels of a few steps run uncaptured under ``torch.profiler``.

The instrumented replays add into ``.grad`` and the timed optimizer steps move the weights, so the run's
test metrics printed at the end are not a training result.  Output: ``DIR/profile_<tag>.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import make_bert, make_data, versions  # noqa: E402


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="mosi", choices=["mosi", "mosei"])
    p.add_argument("--model", default="gsit")
    p.add_argument("--encoder", default="none", choices=["none", "bert-base", "bert-tiny"])
    p.add_argument("--execution", default="graphed")
    p.add_argument("--amp", default="none", choices=["none", "bf16"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--scale", type=float, default=1.0)
    p.add_argument("--mosei-train", type=int, default=2048)
    p.add_argument("--work", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--tag", default=None)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)

    import torch

    import gsit.train as T
    from gsit.cli import main as gsit_main

    work = Path(args.work or f"/tmp/gsit-profile-{os.getpid()}")
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = args.tag or f"{args.dataset}_{args.model}_{args.encoder}_{args.execution}_{args.amp}"
    kind = "features" if args.encoder == "none" else "bert"
    data = make_data(work, args.dataset, scale=args.scale, mosei_train=args.mosei_train, kind=kind)
    report: dict = {"tag": tag, "args": vars(args), "versions": versions(), "epochs": []}

    orig_epoch, orig_eval, orig_stage = T.train_epoch, T.evaluate_split, T.stage_epoch
    timing: dict = {"eval_s": [], "stage_s": []}

    def timed_eval(*a, **k):
        _sync()
        t0 = time.perf_counter()
        r = orig_eval(*a, **k)
        _sync()
        timing["eval_s"].append(time.perf_counter() - t0)
        return r

    def timed_stage(*a, **k):
        t0 = time.perf_counter()
        r = orig_stage(*a, **k)
        timing["stage_s"].append(time.perf_counter() - t0)
        return r

    def timed_epoch(model, optimizer, split, *, run, seed, epoch, task, ctx, progress=None, runner=None):
        _sync()
        t0 = time.perf_counter()
        loss = orig_epoch(
            model,
            optimizer,
            split,
            run=run,
            seed=seed,
            epoch=epoch,
            task=task,
            ctx=ctx,
            progress=progress,
            runner=runner,
        )
        _sync()
        wall = time.perf_counter() - t0
        row = {"epoch": epoch, "train_s": wall, "graphs": runner.graph_count() if runner else 0}
        if epoch == args.epochs and runner is not None and runner.execution.static:
            try:
                row.update(_instrument(runner, optimizer, split, run=run, seed=seed, epoch=epoch))
            except Exception as e:  # noqa: BLE001 - keep the epoch timings; say what failed
                import traceback

                row["instrument_error"] = traceback.format_exc()[-1500:]
                print(f"instrumentation failed: {e!r}", flush=True)
        report["epochs"].append(row)
        print(json.dumps(row), flush=True)
        return loss

    T.train_epoch, T.evaluate_split, T.stage_epoch = timed_epoch, timed_eval, timed_stage
    cmd = [
        "train",
        "--quiet",
        "--model",
        args.model,
        "--dataset",
        args.dataset,
        "--data",
        str(data),
        "--device",
        args.device,
        "--seeds",
        "1111",
        "--run-dir",
        str(work / f"run_{tag}_{int(time.time())}"),
        f"train.max_epochs={args.epochs}",
        "train.early_stop=1000",
        f"train.execution={args.execution}",
        f'data.text_kind="{kind}"',
    ]
    if args.encoder != "none":
        cmd += ["--text-encoder", str(make_bert(work, tiny=args.encoder == "bert-tiny"))]
    if args.amp != "none":
        cmd += ["--amp", args.amp]
    cmd += args.overrides
    t0 = time.perf_counter()
    rc = gsit_main(cmd)
    report["total_s"] = time.perf_counter() - t0
    report["rc"] = rc
    report["eval_s"] = timing["eval_s"]
    report["stage_s"] = timing["stage_s"]
    if torch.cuda.is_available():
        report["peak_mem_mb"] = torch.cuda.max_memory_allocated() / 2**20
    path = out / f"profile_{tag}.json"
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {path}")
    return int(rc or 0)


def _instrument(runner, optimizer, split, *, run, seed, epoch) -> dict:
    import numpy as np

    from gsit.capture import copy_batch
    from gsit.data.batch import epoch_batches
    from gsit.evaluate import split_dataset

    dataset = split_dataset(split)
    batches = epoch_batches(len(split), run.train.batch_size, shuffle=True, seed=seed, epoch=epoch)
    res: dict = {"batches": len(batches)}
    t0 = time.perf_counter()
    prepared = [runner._cpu_batch(dataset, np.asarray(b), runner.batch_size) for b in batches]
    res["host_prep_s"] = time.perf_counter() - t0
    graphs = runner._train_graphs
    if graphs:
        # the captured graph of the most frequent shape
        key_of = Counter(
            (True, tuple((m, tuple(t.shape), t.dtype) for m, t in sorted(b.inputs.items())))
            for b, _ in prepared
        )
        key = next((k for k, _ in key_of.most_common() if k in graphs), next(iter(graphs)))
        c = graphs[key]
        saved = [p.grad.clone() for p in runner.params]
        for _ in range(3):
            c.graph.replay()
        _sync()
        n = 50
        t0 = time.perf_counter()
        for _ in range(n):
            c.graph.replay()
        _sync()
        res["gpu_step_ms"] = (time.perf_counter() - t0) / n * 1e3
        b, w = prepared[0]
        times = []
        for _ in range(20):
            _sync()
            t1 = time.perf_counter()
            copy_batch(c, b, w)
            _sync()
            times.append(time.perf_counter() - t1)
        res["copy_ms"] = statistics.median(times) * 1e3
        # replay + host prep + copy, serially (what the loop does per batch when nothing overlaps)
        _sync()
        t0 = time.perf_counter()
        for b, w in prepared:
            copy_batch(c, b, w)
            c.graph.replay()
        _sync()
        res["replay_loop_s"] = time.perf_counter() - t0
        # uncaptured steps under the profiler: which kernels take the GPU time
        try:
            from torch.profiler import ProfilerActivity, profile

            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                for _ in range(3):
                    runner._train_step(c)
                _sync()
            table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
            res["profile_top"] = table
            total_cuda = sum(
                getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0))
                for e in prof.key_averages()
            )
            res["profiled_gpu_ms_per_step"] = total_cuda / 3 / 1e3
        except Exception as e:  # noqa: BLE001 - the profile is extra information; say why it is missing
            res["profile_error"] = repr(e)[:400]
        for p_, s in zip(runner.params, saved):
            p_.grad.copy_(s)
    times = []
    for _ in range(10):
        _sync()
        t1 = time.perf_counter()
        optimizer.step()
        _sync()
        times.append(time.perf_counter() - t1)
    res["optimizer_step_ms"] = statistics.median(times) * 1e3
    return res


if __name__ == "__main__":
    raise SystemExit(main())
