"""``gsit train --gpus``: seeds spread over devices, one process each, results gathered as a one-process run
(issue 14, item 7).  On CPU the devices are ``cpu,cpu``: two real worker processes."""

from __future__ import annotations

import json

import pytest
import torch

from gsit import cli
from gsit.data import make_synthetic, save_converted
from gsit.errors import GsitError
from gsit.spread import deal_seeds, parse_devices

TINY = [
    "model.d_model=8",
    "model.num_heads=2",
    "model.num_layers=1",
    "train.max_epochs=2",
    "train.batch_size=16",
]


def test_parse_devices_and_deal():
    assert parse_devices("cpu,cpu") == ["cpu", "cpu"]
    with pytest.raises(GsitError, match="bad: \\['gpu0'\\]"):
        parse_devices("0,gpu0")
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(GsitError, match=f"this host has {n} CUDA device"):
        parse_devices(f"{n}")
    assert deal_seeds([1, 2, 3, 4, 5], ["a", "b"]) == [("a", [1, 3, 5]), ("b", [2, 4])]
    assert deal_seeds([1], ["a", "b"]) == [("a", [1])]


def test_two_workers_give_the_sequential_results_even_after_a_failure(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    data_dir = save_converted(
        make_synthetic(n_train=40, n_valid=16, n_test=16, text_len=6, audio_len=7, vision_len=7, seed=4),
        tmp_path / "data",
    )
    common = ["train", "--data", str(data_dir), "--dataset", "synthetic", "--seeds", "1,2,3", *TINY]
    assert cli.main([*common, "--quiet", "--run-dir", str(tmp_path / "seq")]) == 0
    capsys.readouterr()
    # the workers die at the start of epoch 2 (after epoch 1's checkpoint): one clear error naming --resume
    monkeypatch.setenv("GSIT_TEST_DIE_AT_EPOCH", "2")
    assert cli.main([*common, "--gpus", "cpu,cpu", "--run-dir", str(tmp_path / "par")]) == 2
    err = capsys.readouterr().err
    assert "2 of 2 worker(s) failed" in err and "exited with code 13" in err and "--resume" in err
    assert not (tmp_path / "par" / "results.json").exists()
    monkeypatch.delenv("GSIT_TEST_DIE_AT_EPOCH")
    assert cli.main([*common, "--gpus", "cpu,cpu", "--resume", str(tmp_path / "par")]) == 0
    err = capsys.readouterr().err
    assert "[cpu seeds 1,3]" in err and "[cpu seeds 2]" in err and "one worker process each" in err
    seq = json.loads((tmp_path / "seq" / "results.json").read_text())
    par = json.loads((tmp_path / "par" / "results.json").read_text())
    assert par["seeds"] == [1, 2, 3]
    assert par["per_seed"] == seq["per_seed"] and par["mean"] == seq["mean"]
    log = (tmp_path / "par" / "train.log").read_text()
    assert "device cpu" in log and "seed 3 (3/3)" in log  # the workers' lines are in the run's log too
