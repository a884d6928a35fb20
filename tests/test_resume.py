"""Resuming and never overwriting: a run killed with SIGKILL after an epoch and resumed with ``--resume``
ends bit-identical (CPU) to an uninterrupted run; new runs never write into an existing run directory;
a failed start leaves an existing run directory untouched."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gsit import cli
from gsit.config import load_config
from gsit.data import make_synthetic, write_mmsa_pickle
from gsit.train import run_training, train_seed

# dropout on: the resumed run must also restore the RNG stream exactly
ARGS = ["--seeds", "3", "model.d_model=16", "model.num_layers=1", "train.batch_size=16", "train.update_epochs=2",
        "train.max_epochs=6", "train.early_stop=50"]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(data: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "gsit.cli", "train", "--data", str(data), "--dataset", "synthetic", *extra, *ARGS]


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, sha256) for every file under root."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def assert_same_outcome(a: Path, b: Path, seed: int = 3) -> None:
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["per_seed"] == rb["per_seed"]
    assert ra["mean"] == rb["mean"]
    ta, tb = (load_file(str(d / f"seed-{seed}" / "best.safetensors")) for d in (a, b))
    assert set(ta) == set(tb)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k
    la, lb = (load_file(str(d / f"seed-{seed}" / "last.safetensors")) for d in (a, b))
    for k in la:
        assert torch.equal(la[k], lb[k]), k
    ea, eb = ((d / f"seed-{seed}" / "epochs.csv").read_text().splitlines() for d in (a, b))

    def strip_seconds(lines):  # the wall-clock column differs
        return [",".join(c for i, c in enumerate(line.split(",")) if i != 2) for line in lines]
    assert strip_seconds(ea) == strip_seconds(eb)


@pytest.fixture(scope="module")
def data_pkl(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("resume_data")
    data = make_synthetic(n_train=256, n_valid=32, n_test=32, text_len=12, audio_len=14, vision_len=14, seed=0)
    return write_mmsa_pickle(data, root / "tiny.pkl")


@pytest.fixture(scope="module")
def reference_run(data_pkl, tmp_path_factory) -> Path:
    """An uninterrupted run (subprocess, one thread)."""
    run_dir = tmp_path_factory.mktemp("resume_ref") / "ref"
    r = subprocess.run(train_cmd(data_pkl, "--quiet", "--run-dir", str(run_dir)), env=env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return run_dir


def test_sigkill_then_resume_is_bit_identical(data_pkl, reference_run, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(data_pkl, "--quiet", "--run-dir", str(run_dir)), env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    state_file = run_dir / "seed-3" / "last.json"
    deadline = time.time() + 240
    killed_after = None
    try:
        while time.time() < deadline and proc.poll() is None:
            if state_file.is_file():
                try:
                    epoch = json.loads(state_file.read_text())["state"]["epoch"]
                except (json.JSONDecodeError, KeyError, OSError):
                    epoch = 0  # (written atomically, but be tolerant)
                if epoch >= 1:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed_after = epoch
                    break
            time.sleep(0.02)
    finally:
        if proc.poll() is None and killed_after is None:
            proc.kill()
        proc.wait(timeout=60)
    assert killed_after is not None, f"the run ended before it could be killed: {proc.stderr.read()!r}"
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "results.json").exists() and not (run_dir / "seed-3" / "results.json").exists()
    state = json.loads(state_file.read_text())["state"]
    assert 1 <= state["epoch"] < 6 and not state["done"]

    r = subprocess.run(train_cmd(data_pkl, "--resume", str(run_dir)), env=env(), capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert f"resumed after epoch {state['epoch']}" in r.stderr
    assert_same_outcome(run_dir, reference_run)


def test_stop_hook_then_resume_in_process_is_bit_identical(tmp_path):
    """The same through the library: train_seed's stop_after_epoch hook interrupts, run_training resumes."""
    torch.set_num_threads(1)
    data = make_synthetic(n_train=64, n_valid=32, n_test=32, text_len=12, audio_len=14, vision_len=14, seed=0)
    run = load_config("gsit", "synthetic", None, ["model.d_model=16", "model.num_layers=1", "train.batch_size=16",
                                                   "train.max_epochs=4", "train.early_stop=50", "train.seeds=[2]"])
    ref = tmp_path / "ref"
    run_training(run, data, run_dir=ref, quiet=True, command=["test"])
    stopped = tmp_path / "stopped"
    run_training_args = dict(quiet=True, command=["test"])
    from gsit.distributed import Dist
    from gsit.train import Progress
    stopped.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_seed(run, data, seed=2, seed_dir=stopped / "seed-2", ctx=Dist(), resume=False,
                   progress=Progress(True, Dist()), dataset="synthetic", stop_after_epoch=2)
    assert json.loads((stopped / "seed-2" / "last.json").read_text())["state"]["epoch"] == 2
    run_training(run, data, run_dir=stopped, resume=True, **run_training_args)
    assert_same_outcome(stopped, ref, seed=2)


def test_resume_of_a_finished_run_changes_nothing(reference_run, data_pkl, capsys):
    before = snapshot(reference_run)
    log_before = (reference_run / "train.log").read_text()
    rc = cli.main(["train", "--quiet", "--data", str(data_pkl), "--dataset", "synthetic", "--resume",
                   str(reference_run), *ARGS])
    assert rc == 0
    after = snapshot(reference_run)
    changed = {k for k in before if before[k][2] != after.get(k, (0, 0, ""))[2]}
    # results.json/csv are rewritten with the same content; the log only gains the resume's lines
    assert changed <= {"train.log"} and set(after) == set(before)
    assert (reference_run / "train.log").read_text().startswith(log_before)
    capsys.readouterr()


def test_existing_run_dir_is_never_overwritten(reference_run, data_pkl, tmp_path, capsys):
    before = snapshot(reference_run)
    rc = cli.main(["train", "--quiet", "--data", str(data_pkl), "--dataset", "synthetic", "--run-dir",
                   str(reference_run), *ARGS])
    err = capsys.readouterr().err
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "already exists" in lines[0] and str(reference_run) in lines[0]
    assert snapshot(reference_run) == before
    # any non-empty folder, not only a run
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    before = snapshot(other)
    rc = cli.main(["train", "--quiet", "--data", str(data_pkl), "--dataset", "synthetic", "--run-dir", str(other),
                   *ARGS])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert snapshot(other) == before and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_out_twice_gives_two_run_dirs(data_pkl, tmp_path, capsys):
    root = tmp_path / "runs"
    quick = ["--seeds", "1", "model.d_model=8", "model.num_heads=2", "model.num_layers=1", "train.max_epochs=1",
             "train.batch_size=64"]
    for _ in range(2):
        assert cli.main(["train", "--quiet", "--data", str(data_pkl), "--dataset", "synthetic", "--out", str(root),
                         *quick]) == 0
    dirs = sorted(p for p in root.iterdir())
    assert len(dirs) == 2 and dirs[0] != dirs[1]
    for d in dirs:
        assert d.name.startswith("gsit_synthetic_") and (d / "results.json").is_file()
    capsys.readouterr()


@pytest.mark.parametrize("bad", [["train.no_such_key=1"], ["model.d_model=17"], ["nosection.x=1"],
                                 ["train.batch_size=\"eight\""], ["model.attention_backend=nope"]])
def test_failed_start_leaves_existing_run_dir_untouched(reference_run, data_pkl, bad, capsys):
    before = snapshot(reference_run)
    for mode in ("--resume", "--run-dir"):
        rc = cli.main(["train", "--quiet", "--data", str(data_pkl), "--dataset", "synthetic", mode,
                       str(reference_run), *ARGS, *bad])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("gsit: error:")
        assert snapshot(reference_run) == before


def test_resume_refuses_a_different_configuration(reference_run, data_pkl, capsys):
    before = snapshot(reference_run)
    rc = cli.main(["train", "--quiet", "--data", str(data_pkl), "--dataset", "synthetic", "--resume",
                   str(reference_run), *ARGS, "train.learning_rate_other=0.01"])
    err = capsys.readouterr().err
    assert rc == 2 and "different configuration" in err
    assert snapshot(reference_run) == before
