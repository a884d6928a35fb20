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
ARGS = [
    "--seeds",
    "3",
    "model.d_model=16",
    "model.num_layers=1",
    "train.batch_size=16",
    "train.update_epochs=2",
    "train.max_epochs=6",
    "train.early_stop=50",
]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def train_cmd(data: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gsit.cli",
        "train",
        "--data",
        str(data),
        "--dataset",
        "synthetic",
        *extra,
        *ARGS,
    ]


def snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """path -> (size, mtime_ns, sha256) for every file under root, except ``train.log`` (the console's
    lines, appended to by every attempt, refused ones included: a log, not a result)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "train.log":
            st = p.stat()
            out[str(p.relative_to(root))] = (
                st.st_size,
                st.st_mtime_ns,
                hashlib.sha256(p.read_bytes()).hexdigest(),
            )
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
    data = make_synthetic(
        n_train=256, n_valid=32, n_test=32, text_len=12, audio_len=14, vision_len=14, seed=0
    )
    return write_mmsa_pickle(data, root / "tiny.pkl")


@pytest.fixture(scope="module")
def reference_run(data_pkl, tmp_path_factory) -> Path:
    """An uninterrupted run (subprocess, one thread)."""
    run_dir = tmp_path_factory.mktemp("resume_ref") / "ref"
    r = subprocess.run(
        train_cmd(data_pkl, "--quiet", "--run-dir", str(run_dir)),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return run_dir


def test_sigkill_then_resume_is_bit_identical(data_pkl, reference_run, tmp_path):
    run_dir = tmp_path / "killed"
    proc = subprocess.Popen(
        train_cmd(data_pkl, "--quiet", "--run-dir", str(run_dir)),
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
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

    r = subprocess.run(
        train_cmd(data_pkl, "--resume", str(run_dir)), env=env(), capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert f"resumed after epoch {state['epoch']}" in r.stderr
    assert_same_outcome(run_dir, reference_run)


def test_stop_hook_then_resume_in_process_is_bit_identical(tmp_path):
    """The same through the library: train_seed's stop_after_epoch hook interrupts, run_training resumes."""
    torch.set_num_threads(1)
    data = make_synthetic(n_train=64, n_valid=32, n_test=32, text_len=12, audio_len=14, vision_len=14, seed=0)
    run = load_config(
        "gsit",
        "synthetic",
        None,
        [
            "model.d_model=16",
            "model.num_layers=1",
            "train.batch_size=16",
            "train.max_epochs=4",
            "train.early_stop=50",
            "train.seeds=[2]",
        ],
    )
    ref = tmp_path / "ref"
    run_training(run, data, run_dir=ref, quiet=True, command=["test"])
    stopped = tmp_path / "stopped"
    run_training_args = dict(quiet=True, command=["test"])
    from gsit.distributed import Dist
    from gsit.train import Progress

    stopped.mkdir()
    with pytest.raises(KeyboardInterrupt):
        train_seed(
            run,
            data,
            seed=2,
            seed_dir=stopped / "seed-2",
            ctx=Dist(),
            resume=False,
            progress=Progress(True, Dist()),
            dataset="synthetic",
            stop_after_epoch=2,
        )
    assert json.loads((stopped / "seed-2" / "last.json").read_text())["state"]["epoch"] == 2
    run_training(run, data, run_dir=stopped, resume=True, **run_training_args)
    assert_same_outcome(stopped, ref, seed=2)


def test_resume_of_a_finished_run_changes_nothing(reference_run, data_pkl, capsys):
    before = snapshot(reference_run)
    log_before = (reference_run / "train.log").read_text()
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_pkl),
            "--dataset",
            "synthetic",
            "--resume",
            str(reference_run),
            *ARGS,
        ]
    )
    assert rc == 0
    after = snapshot(reference_run)
    changed = {k for k in before if before[k][2] != after.get(k, (0, 0, ""))[2]}
    # results.json/csv are rewritten with the same content; the log only gains the resume's lines
    assert changed <= {"train.log"} and set(after) == set(before)
    assert (reference_run / "train.log").read_text().startswith(log_before)
    capsys.readouterr()


def test_existing_run_dir_is_never_overwritten(reference_run, data_pkl, tmp_path, capsys):
    before = snapshot(reference_run)
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_pkl),
            "--dataset",
            "synthetic",
            "--run-dir",
            str(reference_run),
            *ARGS,
        ]
    )
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
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_pkl),
            "--dataset",
            "synthetic",
            "--run-dir",
            str(other),
            *ARGS,
        ]
    )
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert snapshot(other) == before and sorted(p.name for p in other.iterdir()) == ["notes.txt"]


def test_out_twice_gives_two_run_dirs(data_pkl, tmp_path, capsys):
    root = tmp_path / "runs"
    quick = [
        "--seeds",
        "1",
        "model.d_model=8",
        "model.num_heads=2",
        "model.num_layers=1",
        "train.max_epochs=1",
        "train.batch_size=64",
    ]
    for _ in range(2):
        assert (
            cli.main(
                [
                    "train",
                    "--quiet",
                    "--data",
                    str(data_pkl),
                    "--dataset",
                    "synthetic",
                    "--out",
                    str(root),
                    *quick,
                ]
            )
            == 0
        )
    dirs = sorted(p for p in root.iterdir())
    assert len(dirs) == 2 and dirs[0] != dirs[1]
    for d in dirs:
        assert d.name.startswith("gsit_synthetic_") and (d / "results.json").is_file()
    capsys.readouterr()


@pytest.mark.parametrize(
    "bad",
    [
        ["train.no_such_key=1"],
        ["model.d_model=17"],
        ["nosection.x=1"],
        ['train.batch_size="eight"'],
        ["model.attention_backend=nope"],
    ],
)
def test_failed_start_leaves_existing_run_dir_untouched(reference_run, data_pkl, bad, capsys):
    before = snapshot(reference_run)
    for mode in ("--resume", "--run-dir"):
        rc = cli.main(
            [
                "train",
                "--quiet",
                "--data",
                str(data_pkl),
                "--dataset",
                "synthetic",
                mode,
                str(reference_run),
                *ARGS,
                *bad,
            ]
        )
        err = capsys.readouterr().err
        assert rc == 2, err
        assert len(err.strip().splitlines()) == 1 and err.startswith("gsit: error:")
        assert snapshot(reference_run) == before


def test_resume_refuses_a_different_configuration(reference_run, data_pkl, capsys):
    before = snapshot(reference_run)
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_pkl),
            "--dataset",
            "synthetic",
            "--resume",
            str(reference_run),
            *ARGS,
            "train.learning_rate_other=0.01",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "different configuration" in err
    assert snapshot(reference_run) == before


# ----------------------------------------------------------------------------------------------------------
# crash consistency: a kill between any two writes of an epoch, then --resume, equals the uninterrupted run

KILL_DRIVER = """
import os, sys
import gsit.checkpoint as c
point, epoch = sys.argv[1], int(sys.argv[2])
if point == "between_tensor_files":      # last.next written, best.next not yet
    orig_t = c.atomic_save_tensors
    def t(path, tensors, metadata=None):
        if path.name == "best.next.safetensors" and metadata["epoch"] == str(epoch):
            os._exit(9)
        return orig_t(path, tensors, metadata)
    c.atomic_save_tensors = t
elif point == "before_commit":           # tensors staged and epochs.csv row written, last.json not
    orig_j = c.atomic_write_json
    def j(path, obj):
        if path.name == "last.json" and obj["state"]["epoch"] == epoch:
            os._exit(9)
        return orig_j(path, obj)
    c.atomic_write_json = j
elif point == "after_commit":            # last.json committed, staged files not renamed into place
    orig_s = c.settle_seed_dir
    def s(seed_dir, meta):
        if meta is not None and meta["state"]["epoch"] == epoch:
            os._exit(9)
        return orig_s(seed_dir, meta)
    c.settle_seed_dir = s
from gsit.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize(
    "point,epoch", [("between_tensor_files", 1), ("before_commit", 3), ("after_commit", 2)]
)
def test_kill_between_writes_then_resume_equals_uninterrupted(
    data_pkl, reference_run, tmp_path, point, epoch
):
    run_dir = tmp_path / "killed"
    cmd = [sys.executable, "-c", KILL_DRIVER, point, str(epoch)] + train_cmd(
        data_pkl, "--quiet", "--run-dir", str(run_dir)
    )[3:]
    r = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 9, r.stderr
    seed_dir = run_dir / "seed-3"
    if point == "after_commit":
        assert (seed_dir / "last.next.safetensors").is_file()  # the state the resume must roll forward
    r = subprocess.run(
        train_cmd(data_pkl, "--quiet", "--resume", str(run_dir)),
        env=env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert_same_outcome(run_dir, reference_run)
    assert sorted(p.name for p in seed_dir.iterdir()) == [
        "best.safetensors",
        "epochs.csv",
        "last.json",
        "last.safetensors",
        "results.json",
    ]


@pytest.mark.slow
def test_randomized_kills_then_resume_equal_uninterrupted(data_pkl, reference_run, tmp_path):
    """SIGKILL at random moments (many of them mid-write), resume, repeat until the run finishes."""
    import random

    rng = random.Random(13)
    run_dir = tmp_path / "killed"
    first = True
    for _ in range(40):
        args = ("--quiet", "--run-dir", str(run_dir)) if first else ("--quiet", "--resume", str(run_dir))
        proc = subprocess.Popen(
            train_cmd(data_pkl, *args), env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        try:
            proc.wait(timeout=rng.uniform(3.0, 9.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=60)
        err = proc.stderr.read().decode()
        if proc.returncode == 0:
            break
        assert proc.returncode == -signal.SIGKILL, err
        first = first and not (run_dir / "config.json").exists()
    assert proc.returncode == 0
    assert_same_outcome(run_dir, reference_run)


def test_missing_last_json_with_committed_files_is_refused(reference_run, tmp_path, data_pkl, capsys):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(reference_run, run_dir)
    (run_dir / "seed-3" / "results.json").unlink()
    (run_dir / "seed-3" / "last.json").unlink()
    before = snapshot(run_dir)
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_pkl),
            "--dataset",
            "synthetic",
            "--resume",
            str(run_dir),
            *ARGS,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "last.json" in err and "is missing" in err, err
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    "mutate,key",
    [
        (lambda m: m["state"].pop("epoch"), "state.epoch"),
        (lambda m: m["state"].update(epoch="2"), "state.epoch"),
        (lambda m: m["rng"].pop("numpy"), "rng.numpy"),
        (lambda m: m["commit"].update(state_id="x" * 32), "last.safetensors"),
    ],
)
def test_bad_last_json_is_refused(reference_run, tmp_path, data_pkl, capsys, mutate, key):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(reference_run, run_dir)
    (run_dir / "seed-3" / "results.json").unlink()
    meta = json.loads((run_dir / "seed-3" / "last.json").read_text())
    mutate(meta)
    (run_dir / "seed-3" / "last.json").write_text(json.dumps(meta))
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_pkl),
            "--dataset",
            "synthetic",
            "--resume",
            str(run_dir),
            *ARGS,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and key in err and len(err.strip().splitlines()) == 1, err


def test_resume_refuses_changed_data(reference_run, tmp_path, capsys):
    """The data file replaced at the same path (here: the copied run's config names the new file)."""
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(reference_run, run_dir)
    (run_dir / "seed-3" / "results.json").unlink()
    data = make_synthetic(
        n_train=256, n_valid=32, n_test=32, text_len=12, audio_len=14, vision_len=14, seed=0
    )
    data.splits["train"].labels[5] += 0.5
    other = write_mmsa_pickle(data, tmp_path / "tiny.pkl")
    cfg = json.loads((run_dir / "config.json").read_text())
    cfg["data"]["path"] = str(other)
    (run_dir / "config.json").write_text(json.dumps(cfg))
    before = snapshot(run_dir)
    rc = cli.main(
        ["train", "--quiet", "--data", str(other), "--dataset", "synthetic", "--resume", str(run_dir), *ARGS]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "split 'train' key 'labels' has different content" in err, err
    assert snapshot(run_dir) == before


def test_eval_with_a_checkpoint_of_other_shapes(reference_run, tmp_path, capsys):
    import shutil

    from safetensors.torch import save_file

    run_dir = tmp_path / "copy"
    shutil.copytree(reference_run, run_dir)
    best = run_dir / "seed-3" / "best.safetensors"
    tensors = load_file(str(best))
    k = next(iter(tensors))
    tensors[k] = torch.zeros(*(d + 1 for d in tensors[k].shape))
    save_file(tensors, str(best))
    rc = cli.main(["eval", str(run_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "best.safetensors" in err and k in err and "shape" in err, err
