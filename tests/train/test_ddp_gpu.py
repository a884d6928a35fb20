"""DDP on 2 GPUs under the fast path (``torchrun``, NCCL): ``train.execution=graphed`` (captured steps, one
all-reduce per window, captured optimizer step) gives the one-GPU eager run's epochs, best epoch and
test metrics.  Needs a machine with 2 CUDA GPUs; NOT yet run (no 2-GPU machine was lent so far).

Run: ``PYTHONPATH=src pytest -m gpu tests/train/test_ddp_gpu.py``.
"""

from __future__ import annotations

import json

import pytest
import torch

from tests.train.test_ddp import launch, single, torchrun, train_cmd

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available() or torch.cuda.device_count() < 2:
    pytest.skip("needs 2 CUDA GPUs", allow_module_level=True)


@pytest.fixture(scope="module")
def data_pkl(tmp_path_factory):
    from gsit.data import make_synthetic, write_mmsa_pickle

    data = make_synthetic(n_train=64, n_valid=31, n_test=33, text_len=12, audio_len=14, vision_len=14, seed=0)
    return write_mmsa_pickle(data, tmp_path_factory.mktemp("ddp_gpu") / "tiny.pkl")


def _cuda(cmd: list[str]) -> list[str]:
    return [("cuda" if a == "cpu" else a) for a in cmd]


@pytest.mark.parametrize("mode", ["graphed", "compiled_graphed"])
def test_two_gpus_fast_path_match_one_gpu_eager(data_pkl, tmp_path, mode):
    one, two = tmp_path / "one", tmp_path / "two"
    r = launch(single(*_cuda(train_cmd(data_pkl, one, "train.execution=eager"))), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    r = launch(torchrun(2, *_cuda(train_cmd(data_pkl, two, f"train.execution={mode}"))), timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((two / "config.json").read_text())["execution"]["chosen"] == mode
    a = json.loads((one / "results.json").read_text())["per_seed"][0]
    b = json.loads((two / "results.json").read_text())["per_seed"][0]
    assert (a["epochs"], a["best_epoch"]) == (b["epochs"], b["best_epoch"])
    assert abs(a["valid_loss"] - b["valid_loss"]) <= 2e-4
    assert abs(a["test"]["MAE"] - b["test"]["MAE"]) <= 1e-3
    rows = (two / "seed-4" / "epochs.csv").read_text().strip().splitlines()
    header = rows[0].split(",")
    graphs = [int(line.split(",")[header.index("graphs")]) for line in rows[1:]]
    assert graphs[0] > 0 and graphs[-1] == graphs[0], graphs
