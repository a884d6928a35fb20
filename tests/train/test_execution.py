"""Static-shape execution (gsit.execution) on the CPU: padded last batches and length levels change no
loss, gradient, parameter or prediction; the resolution of ``train.execution`` refuses what cannot run.
The compiled and CUDA-graphed steps themselves are checked on a GPU (tests/train/test_execution_gpu.py)."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from gsit import cli
from gsit.build import build_model
from gsit.config import load_config
from gsit.data import make_synthetic
from gsit.data.batch import LENGTH_LEVELS, cut_to_level, level_length, padded_rows
from gsit.distributed import Dist
from gsit.errors import ConfigError
from gsit.evaluate import predict_split, split_dataset
from gsit.execution import Execution, resolve_execution
from gsit.models.gsit import _static_step, static_shapes
from gsit.train import make_optimizer, make_runner, train_epoch

NO_DROPOUT = ["model.text_dropout=0.0", "model.embed_dropout=0.0", "model.attn_dropout=0.0"]
TINY = ["model.d_model=8", "model.num_heads=2", "model.num_layers=1", *NO_DROPOUT]
# the static path without compilation or graphs: the padding and length-level logic alone
PADDED = Execution("test", "padded", "static shapes, eager (test)")
EAGER = Execution("eager", "eager", "test")


def _data():
    # 44 training rows in batches of 8: the last batch has 4 rows and is padded to 8
    return make_synthetic(n_train=44, n_valid=20, n_test=12, text_len=12, audio_len=24, vision_len=20, seed=3)


def test_padded_rows_weights_and_errors():
    idx, w = padded_rows(np.array([5, 2, 9]), 5)
    assert idx.tolist() == [5, 2, 9, 5, 5] and w.tolist() == [1, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="does not fit"):
        padded_rows(np.arange(6), 5)
    with pytest.raises(ValueError, match="empty"):
        padded_rows(np.array([], dtype=np.int64), 5)


def test_level_length_picks_the_smallest_level_that_holds_the_valid_steps():
    assert level_length(500, 40) == 63  # ceil(0.125 * 500)
    assert level_length(500, 63) == 63
    assert level_length(500, 64) == 125
    assert level_length(500, 300) == 500
    assert level_length(50, 50) == 50
    # one level for all modalities: the most demanding modality decides
    data = _data()
    ds = split_dataset(data.splits["train"])
    batch = ds.__getitems__(np.arange(8))
    batch.lengths["audio"][:] = 3
    batch.lengths["vision"][:] = 11  # needs 0.75 of 20 -> level 1.0
    batch.lengths["text"][:] = 2
    cut = cut_to_level(
        batch, modalities=("text", "vision", "audio"), kernel_sizes={"text": 1, "audio": 1, "vision": 1}
    )
    assert {m: t.shape[1] for m, t in cut.inputs.items()} == {"text": 12, "audio": 24, "vision": 20}
    batch = ds.__getitems__(np.arange(8))
    for m in batch.lengths:
        batch.lengths[m][:] = 2
    cut = cut_to_level(
        batch, modalities=("text", "vision", "audio"), kernel_sizes={"text": 1, "audio": 1, "vision": 1}
    )
    assert {m: t.shape[1] for m, t in cut.inputs.items()} == {"text": 2, "audio": 3, "vision": 3}
    assert len(LENGTH_LEVELS) == 4  # the bound on shapes per run stated in the module docstring


def _train_two_epochs(run, data, execution, seed=0):
    torch.manual_seed(seed)
    model = build_model(run, data)
    opt = make_optimizer(run, model)
    runner = make_runner(run, model, execution, task=data.task, ctx=Dist())
    losses = [
        train_epoch(
            model,
            opt,
            data.splits["train"],
            run=run,
            seed=1,
            epoch=e,
            task=data.task,
            ctx=Dist(),
            runner=runner,
        )
        for e in (1, 2)
    ]
    preds = predict_split(model, data.splits["valid"], run=run, ctx=Dist(), runner=runner)
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}, preds


@pytest.mark.parametrize(
    "extra",
    [
        [],
        ["model.padding_aware=true", "train.length_bucketing=true"],
        ["train.update_epochs=2", "train.grad_clip=0.05", "train.eval_batch_size=7"],
    ],
    ids=["paper", "padding-aware+bucketing", "window2+clip+eval7"],
)
def test_static_shapes_change_no_loss_parameter_or_prediction(extra):
    """The padded last batch (zero-weight copies) and the length levels give the eager path's losses,
    parameters after two epochs and predictions, to float round-off."""
    run = load_config(
        "gsit", "synthetic", None, [*TINY, "train.batch_size=8", "train.update_epochs=1", *extra]
    )
    data = _data()
    eager = _train_two_epochs(run, data, EAGER)
    static = _train_two_epochs(run, data, PADDED)
    np.testing.assert_allclose(static[0], eager[0], rtol=1e-5)
    np.testing.assert_allclose(static[2], eager[2], rtol=1e-5, atol=1e-5)
    for k in eager[1]:
        a, b = _without_key_bias(k, static[1][k]), _without_key_bias(k, eager[1][k])
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)


def _without_key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    """The key slice of a packed QKV bias gets a zero gradient in exact arithmetic (adding one vector to
    every key shifts a query's logits by a constant, which softmax ignores), so its gradient is pure
    round-off, which Adam rescales to lr-sized steps: it differs between any two summation orders."""
    if name.endswith("attn.in_proj_bias"):
        d = t.shape[0] // 3
        return torch.cat([t[:d], t[2 * d :]])
    return t


def test_static_step_negative_control_a_weighted_padded_row_would_change_the_result():
    """If padded rows carried weight, the result would differ: the equality above is not vacuous."""
    import gsit.execution as ex

    run = load_config("gsit", "synthetic", None, [*TINY, "train.batch_size=8", "train.update_epochs=1"])
    data = _data()
    eager = _train_two_epochs(run, data, EAGER)
    real = ex.padded_rows
    try:
        ex.padded_rows = lambda rows, size: (real(rows, size)[0], np.ones(size, dtype=np.float32))
        bad = _train_two_epochs(run, data, PADDED)
    finally:
        ex.padded_rows = real
    assert abs(bad[0][0] - eager[0][0]) > 1e-4


def test_resolve_execution_auto_and_refusals():
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_execution("auto", device=cpu).mode == "eager"
    assert resolve_execution("auto", device=gpu).mode == "compiled_graphed"
    assert resolve_execution("auto", device=gpu, model_name="vanilla").mode == "compiled_graphed"
    for name in ("mult", "mult_dagger"):
        mult = resolve_execution("auto", device=gpu, model_name=name)
        assert mult.mode == "graphed" and "not compiled" in mult.reason
    other = resolve_execution("auto", device=gpu, model_name="some_new_model")
    assert other.mode == "eager" and "not been verified" in other.reason
    assert resolve_execution("auto", device=cpu, legacy_compile=True).mode == "compiled"
    assert resolve_execution("compiled", device=cpu).mode == "compiled"
    for mode in ("graphed", "compiled_graphed"):
        with pytest.raises(ConfigError, match="needs a CUDA device"):
            resolve_execution(mode, device=cpu)
        assert resolve_execution(mode, device=gpu, world=2).mode == mode  # DDP: one all-reduce per window
        with pytest.raises(ConfigError, match="grad_clip"):
            resolve_execution(mode, device=gpu, world=2, grad_clip=0.6)
    assert resolve_execution("eager", device=cpu, world=2, grad_clip=0.6).mode == "eager"
    with pytest.raises(ConfigError, match="--compile"):  # the legacy switch takes the static path too
        resolve_execution("auto", device=gpu, world=2, legacy_compile=True, grad_clip=0.6)
    assert resolve_execution("auto", device=gpu, world=2, grad_clip=0.6).mode == "eager"
    auto_ddp = resolve_execution("auto", device=gpu, world=2)
    assert auto_ddp.mode == "eager" and "not yet on 2 GPUs" in auto_ddp.reason
    with pytest.raises(ConfigError, match="train.execution='fast'"):
        resolve_execution("fast", device=cpu)


def test_train_records_the_execution_in_config_json(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert (
        cli.main(
            [
                "train",
                "--quiet",
                "--run-dir",
                str(run_dir),
                "--seeds",
                "1",
                "model.d_model=8",
                "model.num_heads=2",
                "model.num_layers=1",
                "train.max_epochs=1",
            ]
        )
        == 0
    )
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["execution"]["requested"] == "auto" and cfg["execution"]["chosen"] == "eager"
    assert "cpu" in cfg["execution"]["reason"]
    # resuming compares the settings, not the recorded resolution
    assert (
        cli.main(
            [
                "train",
                "--quiet",
                "--resume",
                str(run_dir),
                "--seeds",
                "1",
                "model.d_model=8",
                "model.num_heads=2",
                "model.num_layers=1",
                "train.max_epochs=1",
            ]
        )
        == 0
    )


def test_execution_setting_is_validated(tmp_path, capsys):
    assert cli.main(["train", "--quiet", "--run-dir", str(tmp_path / "r"), "train.execution=fast"]) == 2
    assert "train.execution" in capsys.readouterr().err
    assert (
        cli.main(
            [
                "train",
                "--quiet",
                "--device",
                "cpu",
                "--run-dir",
                str(tmp_path / "r2"),
                "train.execution=graphed",
            ]
        )
        == 2
    )
    assert "CUDA" in capsys.readouterr().err
    assert not (tmp_path / "r2").exists()


def test_copy_of_model_unaffected():  # the runner never replaces parameters or their storage
    run = load_config("gsit", "synthetic", None, [*TINY, "train.batch_size=8"])
    data = _data()
    model = build_model(run, data)
    before = {k: v.data_ptr() for k, v in model.state_dict().items()}
    ref = copy.deepcopy(model)
    make_runner(run, model, PADDED, task=data.task, ctx=Dist())
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == before
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), k


def test_static_shapes_context_stops_the_models_own_trim():
    """Under static_shapes() the padding-aware model must not read lengths on the host (the warm-up of a
    CUDA graph must run the very shapes that are captured)."""
    assert not _static_step()
    with static_shapes():
        assert _static_step()
        with static_shapes():
            assert _static_step()
        assert _static_step()
    assert not _static_step()
    run = load_config("gsit", "synthetic", None, [*TINY, "model.padding_aware=true"])
    data = _data()
    model = build_model(run, data).eval()
    batch = split_dataset(data.splits["train"]).__getitems__(np.arange(4))
    calls = []
    real = torch.Tensor.max
    torch.Tensor.max = lambda self, *a, **k: (calls.append(1), real(self, *a, **k))[1]
    try:
        with torch.no_grad(), static_shapes():
            static = model(batch.inputs, batch.lengths)["prediction"]
        assert calls == []
        with torch.no_grad():
            trimmed = model(batch.inputs, batch.lengths)["prediction"]
        assert calls  # the eager path trims (reads the longest valid length)
    finally:
        torch.Tensor.max = real
    torch.testing.assert_close(static, trimmed, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- captured optimizer step


STATE = {"epoch": 1, "best_valid": 1.0, "best_epoch": 1, "done": False, "best_state_id": None}


def test_a_capturable_optimizer_checkpoint_resumes_in_a_non_capturable_optimizer(tmp_path):
    """A graphed GPU run saves Adam with ``capturable=True``; resuming it eagerly (e.g. on a CPU, where
    capturable Adam cannot run) must get this process's setting, not the saved one, and keep the state."""
    from gsit.checkpoint import load_training_state, save_training_state

    run = load_config("gsit", "synthetic", None, TINY)
    data = _data()
    torch.manual_seed(0)
    model = build_model(run, data).to("cpu")
    opt = make_optimizer(run, model)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for g in opt.param_groups:  # what CapturedOptimizerStep leaves in the param groups
        g["capturable"] = True
    save_training_state(tmp_path / "last.pt", model=model, optimizer=opt, scheduler=None, state=STATE)
    model2 = build_model(run, data)
    fresh = make_optimizer(run, model2)
    load_training_state(tmp_path / "last.pt", model=model2, optimizer=fresh, scheduler=None)
    assert all(g["capturable"] is False for g in fresh.param_groups)
    before = [p.detach().clone() for p in model2.parameters()]
    for p in model2.parameters():
        p.grad = torch.ones_like(p)
    fresh.step()  # a capturable=True group would refuse CPU parameters
    assert any(not torch.equal(a, p) for a, p in zip(before, model2.parameters()))
    steps = {float(s["step"]) for s in fresh.state.values()}
    assert steps == {2.0}


def test_the_text_encoder_stays_out_of_torch_compile_but_trains():
    from gsit.capture import keep_text_encoder_eager

    traced = []  # per call of the encoder: was it being traced by Dynamo?

    class Enc(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            traced.append(torch.compiler.is_compiling())
            return self.lin(x).relu()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.text_encoder, self.head = Enc(), torch.nn.Linear(4, 1)

        def forward(self, x):
            return self.head(self.text_encoder(x) * 2)

    torch.manual_seed(0)
    x = torch.randn(3, 4)
    control = Model()  # negative control: compiled as is, Dynamo traces the encoder
    torch._dynamo.reset()
    torch.compile(control, dynamic=False)(x)
    assert traced == [True]
    traced.clear()
    model = Model()
    ref = model(x)
    keys = list(model.state_dict())
    keep_text_encoder_eager(model)
    keep_text_encoder_eager(model)  # idempotent
    assert list(model.state_dict()) == keys
    torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
    traced.clear()
    torch._dynamo.reset()
    out = torch.compile(model, dynamic=False)(x)
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert model.text_encoder.lin.weight.grad is not None
    assert traced == [False], "the text encoder was traced by Dynamo"
