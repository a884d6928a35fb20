"""DistributedDataParallel through ``torchrun`` (gloo, CPU): 2 processes give a 1-process run's results up to
float summation order, and a dying worker fails the job quickly while the last checkpoint stays resumable.

Every rank takes a fixed stride of each global batch and scales its mean loss by its share, so the averaged
gradient equals the global-batch mean.  Dropout is set to 0 here: with dropout on, each rank draws its own
masks for its own rows, so the random stream (not the arithmetic) differs from a 1-process run.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from gsit.data import make_synthetic, write_mmsa_pickle

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="torchrun + gloo on Linux/macOS")

# batch 11 over 64 rows: the last global batch has 9 rows, split 5/4 between the ranks (unequal shares)
ARGS = [
    "--seeds",
    "4",
    "model.d_model=16",
    "model.num_layers=1",
    "model.text_dropout=0.0",
    "model.embed_dropout=0.0",
    "model.attn_dropout=0.0",
    "train.batch_size=11",
    "train.update_epochs=2",
    "train.max_epochs=4",
    "train.early_stop=50",
]


def env(**extra: str) -> dict[str, str]:
    e = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "GSIT_DIST_TIMEOUT": "60",
    }
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    e.update(extra)
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={nproc}",
        "--nnodes=1",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "gsit.cli",
        *args,
    ]


def single(*args: str) -> list[str]:
    return [sys.executable, "-m", "gsit.cli", *args]


def train_cmd(data_pkl: Path, run_dir: Path, *extra: str, resume: bool = False) -> list[str]:
    """``gsit train`` arguments on the tiny data, into (or resuming) ``run_dir``."""
    target = ["--resume", str(run_dir)] if resume else ["--quiet", "--run-dir", str(run_dir)]
    return [
        "train",
        "--device",
        "cpu",
        "--data",
        str(data_pkl),
        "--dataset",
        "synthetic",
        *target,
        *ARGS,
        *extra,
    ]


def launch(cmd: list[str], *, timeout: float = 300, **env_extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env(**env_extra), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def data_pkl(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_data")
    data = make_synthetic(n_train=64, n_valid=31, n_test=33, text_len=12, audio_len=14, vision_len=14, seed=0)
    return write_mmsa_pickle(data, root / "tiny.pkl")


@pytest.fixture(scope="module")
def one_process_run(data_pkl, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("ddp_ref") / "one"
    r = launch(single(*train_cmd(data_pkl, run_dir)))
    assert r.returncode == 0, r.stderr
    return run_dir


@pytest.mark.slow
def test_two_processes_match_one_process(data_pkl, one_process_run, tmp_path):
    run_dir = tmp_path / "two"
    r = launch(torchrun(2, *train_cmd(data_pkl, run_dir)))
    assert r.returncode == 0, r.stderr[-3000:]
    one = json.loads((one_process_run / "results.json").read_text())
    two = json.loads((run_dir / "results.json").read_text())
    a, b = one["per_seed"][0], two["per_seed"][0]
    assert (a["epochs"], a["best_epoch"]) == (b["epochs"], b["best_epoch"])
    assert abs(a["valid_loss"] - b["valid_loss"]) <= 2e-4
    assert abs(a["test"]["MAE"] - b["test"]["MAE"]) <= 1e-4
    assert abs(a["test"]["Corr"] - b["test"]["Corr"]) <= 1e-3
    ta, tb = (load_file(str(d / "seed-4" / "best.safetensors")) for d in (one_process_run, run_dir))
    # weights agree to float noise, except where Adam normalises a gradient that is zero in exact
    # arithmetic (the key part of in_proj_bias: softmax ignores a per-query constant) -- there summation-order
    # noise of 1e-9 becomes an lr-sized step, harmless for the outputs (metrics above)
    total = off = 0
    for k in ta:
        diff = (ta[k] - tb[k]).abs()
        assert diff.max() <= 5e-3, k
        total += diff.numel()
        off += int((diff > 1e-4).sum())
    assert off <= 0.01 * total, f"{off} of {total} weights differ by more than 1e-4"
    # only rank 0 writes: one results file, one epochs.csv with one row per epoch
    rows = (run_dir / "seed-4" / "epochs.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + b["epochs"]
    assert (run_dir / "config.json").is_file() and (run_dir / "command.txt").is_file()


@pytest.mark.slow
def test_dead_worker_fails_the_job_and_checkpoint_stays_resumable(data_pkl, one_process_run, tmp_path):
    """GSIT_TEST_DIE_AT_EPOCH=3: rank 1 exits abruptly at the start of epoch 3 (after epoch 2's checkpoint).
    torchrun must tear the job down with a non-zero exit in bounded time; --resume (here with one process)
    then finishes the run from the epoch-2 state with the 1-process result."""
    run_dir = tmp_path / "dies"
    start = time.time()
    r = launch(torchrun(2, *train_cmd(data_pkl, run_dir)), timeout=240, GSIT_TEST_DIE_AT_EPOCH="3")
    elapsed = time.time() - start
    assert r.returncode != 0
    assert elapsed < 120, f"the job took {elapsed:.0f} s to fail"
    state = json.loads((run_dir / "seed-4" / "last.json").read_text())["state"]
    assert state["epoch"] == 2 and not state["done"]
    assert not (run_dir / "results.json").exists()
    assert set(load_file(str(run_dir / "seed-4" / "last.safetensors"))) >= {"rng.torch"}
    r = launch(single(*train_cmd(data_pkl, run_dir, resume=True)))
    assert r.returncode == 0, r.stderr
    assert "resumed after epoch 2" in r.stderr
    one = json.loads((one_process_run / "results.json").read_text())["per_seed"][0]
    res = json.loads((run_dir / "results.json").read_text())["per_seed"][0]
    assert (res["epochs"], res["best_epoch"]) == (one["epochs"], one["best_epoch"])
    assert abs(res["test"]["MAE"] - one["test"]["MAE"]) <= 1e-4
    assert abs(res["test"]["Corr"] - one["test"]["Corr"]) <= 1e-3


@pytest.mark.slow
def test_two_processes_compiled_match_one_eager_process(data_pkl, one_process_run, tmp_path):
    """``train.execution=compiled`` under DDP (torch.compile of the DDP module, static per-rank batches: the
    last global batch of 9 rows is split 5/4 and each rank's share is padded to 6 zero-weight rows) gives
    the one-process eager run's results up to float noise."""
    run_dir = tmp_path / "two_compiled"
    r = launch(torchrun(2, *train_cmd(data_pkl, run_dir, "train.execution=compiled")), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["execution"]["chosen"] == "compiled"
    a = json.loads((one_process_run / "results.json").read_text())["per_seed"][0]
    b = json.loads((run_dir / "results.json").read_text())["per_seed"][0]
    assert (a["epochs"], a["best_epoch"]) == (b["epochs"], b["best_epoch"])
    assert abs(a["valid_loss"] - b["valid_loss"]) <= 2e-4
    assert abs(a["test"]["MAE"] - b["test"]["MAE"]) <= 1e-3
    rows = (run_dir / "seed-4" / "epochs.csv").read_text().strip().splitlines()
    graphs = [int(line.split(",")[-1]) for line in rows[1:]]
    assert graphs[0] > 0 and graphs[-1] == graphs[0], graphs  # compiled in epoch 1 only
