"""DDP under the fast path's static steps (gsit.execution): 2 gloo processes run the plain model on padded
per-rank batches and average the gradients with ONE all-reduce per accumulation window (no DDP hooks, which
a captured CUDA-graph step would bypass), and must give the one-process eager run's epoch losses and
weights.  The compiled and graphed modes share this code path (the compiled one end to end through
``torchrun``: ``tests/train/test_ddp.py``); CUDA graphs themselves need a GPU."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gsit.build import build_model
from gsit.config import load_config
from gsit.data import make_synthetic
from gsit.distributed import Dist, broadcast_parameters
from gsit.execution import Execution
from gsit.train import make_optimizer, make_runner, train_epoch

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gloo processes on Linux/macOS")

# batch 11 over 48 rows: the last global batch of 4 rows is split 2/2; every rank pads its share to 6
ARGS = [
    "model.d_model=8",
    "model.num_heads=2",
    "model.num_layers=1",
    "model.text_dropout=0.0",
    "model.embed_dropout=0.0",
    "model.attn_dropout=0.0",
    "train.batch_size=11",
    "train.update_epochs=2",
]
PADDED = Execution("test", "padded", "static shapes, eager (test)")
EPOCHS = 3


def _data():
    return make_synthetic(n_train=48, n_valid=12, n_test=12, text_len=10, audio_len=12, vision_len=12, seed=2)


def _train(ctx: Dist, *, static: bool, reduce: bool = True):
    torch.manual_seed(0)
    run = load_config("gsit", "synthetic", None, ARGS)
    data = _data()
    model = build_model(run, data)
    if ctx.enabled:
        if ctx.rank == 1:  # rank 0's weights must win (what DDP's constructor guarantees)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(1.0)
        broadcast_parameters(model)
    opt = make_optimizer(run, model)
    runner = make_runner(
        run, model, PADDED if static else Execution("eager", "eager", "t"), task=data.task, ctx=ctx
    )
    if not reduce:  # negative control: every rank steps on its own half of the gradient
        runner.world = 1
    losses = [
        train_epoch(
            model,
            opt,
            data.splits["train"],
            run=run,
            seed=1,
            epoch=e,
            task=data.task,
            ctx=ctx,
            runner=runner,
        )
        for e in range(1, EPOCHS + 1)
    ]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, init_file: str, out: str, reduce: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        losses, state = _train(Dist(rank, world, torch.device("cpu")), static=True, reduce=reduce)
        others = [None] * world
        dist.all_gather_object(others, {k: v for k, v in state.items()})
        if rank == 0:
            torch.save({"losses": losses, "states": others}, out)
    finally:
        dist.destroy_process_group()


def _two_ranks(tmp_path, reduce: bool):
    out = tmp_path / f"two_{reduce}.pt"
    mp.spawn(_worker, args=(2, str(tmp_path / f"init_{reduce}"), str(out), reduce), nprocs=2, join=True)
    return torch.load(out, weights_only=False)


def _without_key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    # the key slice of a packed QKV bias has a zero gradient in exact arithmetic; Adam turns round-off there
    # into lr-sized steps (see tests/train/test_execution_gpu.py)
    if name.endswith("in_proj_bias"):
        d = t.shape[0] // 3
        return torch.cat([t[:d], t[2 * d :]])
    return t


def test_two_ranks_with_one_all_reduce_per_window_match_one_eager_process(tmp_path):
    torch.set_num_threads(1)
    one_losses, one_state = _train(Dist(), static=False)
    two = _two_ranks(tmp_path, reduce=True)
    torch.testing.assert_close(torch.tensor(two["losses"]), torch.tensor(one_losses), rtol=1e-5, atol=1e-7)
    for rank_state in two["states"]:  # every rank holds the same weights, equal to the one-process run's
        for k, v in one_state.items():
            torch.testing.assert_close(
                _without_key_bias(k, rank_state[k]), _without_key_bias(k, v), rtol=1e-4, atol=1e-5, msg=k
            )
    # negative control: without the window all-reduce each rank follows its own half of the data
    bad = _two_ranks(tmp_path, reduce=False)
    diffs = [
        float((_without_key_bias(k, bad["states"][0][k]) - _without_key_bias(k, v)).abs().max())
        for k, v in one_state.items()
    ]
    assert max(diffs) > 1e-3
