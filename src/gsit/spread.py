"""Seeds spread over the devices of one host: ``gsit train --gpus 0,1 ...``.

The parent process resolves the configuration, checks the data, creates the run directory and writes its
files (config, command, versions, data facts) exactly as a one-process run; then it starts one worker process
per device (``python -m gsit.cli`` with the same arguments plus ``--worker-of RUN_DIR --worker-seeds S,..
--device D``).  Seeds are dealt round-robin (seed i of the list goes to device i mod n).  Each worker trains
its seeds into the shared run directory with the ordinary loop (``seed-<s>/`` per seed, so workers never
write the same file); the parent then gathers every ``seed-<s>/results.json`` in the configured seed order and
writes the run's ``results.json`` -- the same file a sequential run writes, since each seed's training depends
only on its seed.  A worker's stderr is shown prefixed with its device.  A failed worker is reported with the
command that resumes the run (finished seeds are kept).

Several hosts: use DDP (``torchrun``, README) or one ``gsit train --gpus`` per host with different seeds.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path
from typing import Any

from gsit.errors import GsitError

_DEVICE = re.compile(r"^(cpu|mps|cuda(:\d+)?|\d+)$")


def parse_devices(text: str) -> list[str]:
    """``"0,1"`` -> ``["cuda:0", "cuda:1"]``; ``cuda:N``, ``cpu`` (for tests) and ``mps`` are taken as they
    are.  CUDA devices must exist."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if not _DEVICE.match(t)]
    if not items or bad:
        raise GsitError(
            f"--gpus {text!r}: expected comma-separated GPU indices (0,1) or devices "
            f"(cuda:0,cpu); bad: {bad or '(empty)'}"
        )
    devices = [f"cuda:{t}" if t.isdigit() else t for t in items]
    cuda = [d for d in devices if d.startswith("cuda")]
    if cuda:
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        missing = [d for d in cuda if int(d.split(":")[1] if ":" in d else 0) >= n]
        if missing:
            raise GsitError(f"--gpus {text!r}: {missing} not available (this host has {n} CUDA device(s))")
    return devices


def deal_seeds(seeds: list[int], devices: list[str]) -> list[tuple[str, list[int]]]:
    """Round-robin: [(device, its seeds)], devices without a seed left out."""
    plan = [(d, list(seeds[i :: len(devices)])) for i, d in enumerate(devices)]
    return [(d, s) for d, s in plan if s]


def run_workers(argv: list[str], run_dir: Path, seeds: list[int], devices: list[str]) -> None:
    """Start one ``gsit train`` worker per device for its seeds; wait for all; raise if any failed."""
    plan = deal_seeds(list(seeds), devices)
    procs = []
    for device, mine in plan:
        cmd = [
            sys.executable,
            "-m",
            "gsit.cli",
            *argv,
            "--worker-of",
            str(run_dir),
            "--worker-seeds",
            ",".join(map(str, mine)),
            "--device",
            device,
        ]
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        tail: deque[str] = deque(maxlen=20)
        label = f"[{device} seeds {','.join(map(str, mine))}]"
        thread = threading.Thread(target=_forward, args=(proc, label, tail), daemon=True)
        thread.start()
        procs.append((device, mine, proc, thread, tail))
    failed = []
    for device, mine, proc, thread, tail in procs:
        rc = proc.wait()
        thread.join()
        if rc != 0:
            failed.append((device, mine, rc, list(tail)))
    if failed:
        lines = "; ".join(
            f"{d} (seeds {s}) exited with code {rc}: {t[-1] if t else 'no output'}" for d, s, rc, t in failed
        )
        raise GsitError(
            f"{len(failed)} of {len(procs)} worker(s) failed: {lines}. Finished seeds are kept "
            f"in {str(run_dir)!r}; continue with the same arguments plus --resume {run_dir}"
        )


def _forward(proc: subprocess.Popen, label: str, tail: deque) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        print(f"{label} {line}", file=sys.stderr, flush=True)


def device_ctx(device: str):
    """A one-process context on ``device`` (the parent resolves and records what its workers will run)."""
    import torch

    from gsit.distributed import Dist

    return Dist(device=torch.device(device))


def train_on_devices(argv: list[str], run, run_dir: Path, devices: list[str]) -> dict[str, Any]:
    """Train the run's seeds in one worker per device, then gather the per-seed results into the run's
    results.json (returned, as :func:`gsit.runs.write_results` returns it)."""
    from gsit.runs import write_results

    run_workers(argv, run_dir, list(run.train.seeds), devices)
    per_seed = []
    for s in run.train.seeds:
        path = run_dir / f"seed-{s}" / "results.json"
        if not path.is_file():
            raise GsitError(f"seed {s} has no results in {str(path)!r} after the workers finished")
        per_seed.append(json.loads(path.read_text()))
    return write_results(run_dir, run, per_seed)


def train_worker(
    run,
    run_dir: Path,
    seeds: list[int],
    *,
    device: str | None,
    quiet: bool,
    tensorboard: bool,
    log_every: float,
) -> None:
    """One worker: train ``seeds`` of the run in ``run_dir`` (started by the parent with the same
    configuration) on ``device``; finished seeds are skipped, interrupted ones resumed."""
    from gsit.data import load_run_data
    from gsit.distributed import init_distributed
    from gsit.runs import check_resume_dir
    from gsit.train import run_training

    check_resume_dir(run_dir, run)
    ctx = init_distributed(device)
    data = load_run_data(run.data, quiet=True)
    run_training(
        run,
        data,
        run_dir=run_dir,
        resume=True,
        quiet=quiet,
        device=device,
        ctx=ctx,
        tensorboard=tensorboard,
        log_every=log_every,
        only_seeds=seeds,
        write_summary=False,
    )
