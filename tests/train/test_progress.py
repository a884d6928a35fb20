"""Training progress (issue 14, item 6): header, epoch k/N, s/epoch, ETA, why a seed stopped, plain lines
off a terminal, a tqdm bar on one, everything also in RUN_DIR/train.log, optional TensorBoard."""

from __future__ import annotations

import importlib.util
import re

import pytest
import torch

from gsit import cli
from gsit.data import make_synthetic, save_converted
from gsit.distributed import Dist
from gsit.progress import Progress, stop_reason

TINY = ["model.d_model=16", "model.num_layers=1", "train.batch_size=8"]


def test_stop_reasons():
    assert stop_reason(epoch=9, best_epoch=4, early_stop=5, max_epochs=0).startswith(
        "early stop after epoch 9: no validation improvement for 5 epochs (best epoch 4)"
    )
    assert "while still improving" in stop_reason(epoch=3, best_epoch=3, early_stop=5, max_epochs=3)
    text = stop_reason(epoch=3, best_epoch=2, early_stop=5, max_epochs=3)
    assert "epoch cap reached" in text and "best epoch 2" in text and "still improving" not in text


def test_tqdm_bar_on_a_terminal(capsys):
    show = Progress(False, Dist(), tty=True, bar_interval=0).batch(seed=7, epoch=2, max_epochs=5)
    for i in range(1, 5):
        show(i, 4, 0.5)
    err = capsys.readouterr().err
    assert "seed 7 epoch 2/5" in err and "4/4" in err and "loss=0.5000" in err


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("progress")
    data = make_synthetic(n_train=40, n_valid=16, n_test=16, text_len=8, audio_len=9, vision_len=9, seed=3)
    return save_converted(data, root / "data")


def test_plain_progress_lines_and_train_log(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--data",
            str(data_dir),
            "--dataset",
            "synthetic",
            "--run-dir",
            str(run_dir),
            "--seeds",
            "1,2",
            "train.max_epochs=2",
            "--log-every",
            "0",
            *TINY,
        ]
    )
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert err.splitlines()[0] == f"run directory: {run_dir}"  # named first, not only at the end
    assert "device cpu" in err and "train 40, valid 16, test 16" in err and "parameters: " in err
    assert "epoch cap: 2; early stop after" in err
    assert re.search(r"seed 1 epoch 1/2 batch \d+/5 loss \d", err)  # plain lines within an epoch
    assert re.search(r"seed 1 epoch 2/2  train \d\.\d{4}  valid loss \d\.\d{4} .* s/epoch  ETA <= ", err)
    assert "seed 1: epoch cap reached (train.max_epochs=2)" in err
    assert re.search(r"seed 1 epoch 2/2 .* ETA <= \S+ \(0 epoch\(s\) at most\); ~\S+ for the run", err)
    assert "seed 2 (2/2)" in err and "for the run" not in err.split("seed 2 (2/2)")[1]
    log = (run_dir / "train.log").read_text().splitlines()
    stripped = [line.split(" ", 2)[2] for line in log]  # "YYYY-MM-DD HH:MM:SS text"
    assert [line for line in err.splitlines() if line] == stripped[: len(err.splitlines())]
    assert "(2 seed(s)); run: " in (run_dir / "train.log").read_text()  # the final summary too


def test_quiet_keeps_the_log(data_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--quiet",
                "--data",
                str(data_dir),
                "--dataset",
                "synthetic",
                "--run-dir",
                str(run_dir),
                "--seeds",
                "1",
                "train.max_epochs=1",
                *TINY,
            ]
        )
        == 0
    )
    assert capsys.readouterr().err == ""
    assert "seed 1 epoch 1/1" in (run_dir / "train.log").read_text()


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_missing_is_one_clear_error(data_dir, tmp_path, capsys):
    rc = cli.main(
        [
            "train",
            "--data",
            str(data_dir),
            "--dataset",
            "synthetic",
            "--run-dir",
            str(tmp_path / "r"),
            "--tensorboard",
            *TINY,
        ]
    )
    assert rc == 2 and "pip install tensorboard" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_tensorboard_scalars(data_dir, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    run_dir = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--quiet",
                "--data",
                str(data_dir),
                "--dataset",
                "synthetic",
                "--run-dir",
                str(run_dir),
                "--seeds",
                "1",
                "train.max_epochs=1",
                "--tensorboard",
                *TINY,
            ]
        )
        == 0
    )
    assert list((run_dir / "tensorboard" / "seed-1").glob("events.out.tfevents.*"))
