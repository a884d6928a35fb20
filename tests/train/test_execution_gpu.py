"""The fast path on a CUDA GPU (gsit.execution): compiled and CUDA-graphed training steps give the eager
path's losses, parameters and predictions (fp32: dropout off, to float round-off; bf16: within bf16
tolerance), compile and capture only during the first epoch, and work with padding-aware mode, length
bucketing, the fused triton kernel and a fine-tuned BERT-family text encoder.

Run: ``PYTHONPATH=src pytest -m gpu tests/train/test_execution_gpu.py``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
if os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("TRITON_INTERPRET=1 is set: the GPU tests need compiled kernels", allow_module_level=True)

from gsit.build import build_model  # noqa: E402
from gsit.config import load_config  # noqa: E402
from gsit.data import make_synthetic  # noqa: E402
from gsit.data.batch import LENGTH_LEVELS  # noqa: E402
from gsit.distributed import Dist  # noqa: E402
from gsit.evaluate import predict_split  # noqa: E402
from gsit.execution import Execution  # noqa: E402
from gsit.train import make_optimizer, make_runner, train_epoch  # noqa: E402

DEV = torch.device("cuda", 0)
NO_DROPOUT = ["model.text_dropout=0.0", "model.embed_dropout=0.0", "model.attn_dropout=0.0"]
SMALL = [
    "model.d_model=32",
    "model.num_heads=4",
    "model.num_layers=2",
    "train.batch_size=8",
    "train.update_epochs=2",
]


@pytest.fixture(autouse=True)
def _ieee_fp32():
    """fp32 comparisons need fp32 products: cuDNN convolutions default to TF32 (10-bit mantissa), whose
    rounding depends on the algorithm picked for each shape, which alone moves results by ~1e-3."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _data(text_kind="features"):
    # 44 rows in batches of 8: a padded last batch every epoch; lengths ragged for padding-aware mode
    return make_synthetic(
        n_train=44,
        n_valid=20,
        n_test=12,
        text_len=16,
        audio_len=40,
        vision_len=48,
        seed=3,
        text_kind=text_kind,
    )


def _train(run, data, mode, epochs=3, text_encoder=None, cut_after_epoch=0):
    """Train one model; ``mode``: one execution, or a list of one per epoch (the same model and optimizer go
    on: an eagerly started optimizer continues as a captured one); ``cut_after_epoch``: every lr x 0.1
    after that epoch (a plateau scheduler's cut).  Returns losses, state, last predictions, graph counts
    per epoch and the runners by mode."""
    modes = [mode] * epochs if isinstance(mode, str) else list(mode)
    torch.manual_seed(0)
    model = build_model(run, data, text_encoder).to(DEV)
    opt = make_optimizer(run, model)
    ctx = Dist(device=DEV)
    runners = {
        m: make_runner(run, model, Execution("test", m, "test"), task=data.task, ctx=ctx)
        for m in dict.fromkeys(modes)
    }
    losses, graphs = [], []
    for e, m in enumerate(modes, start=1):
        runner = runners[m]
        losses.append(
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
        )
        if e == cut_after_epoch:
            for g in opt.param_groups:
                g["lr"] *= 0.1
        preds = predict_split(model, data.splits["valid"], run=run, ctx=ctx, runner=runner)
        graphs.append(runner.graph_count())
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    return np.array(losses), state, preds, graphs, runners


def _close(fast, eager, rtol, atol, what=""):
    """Epoch losses and predictions to ``rtol``/``atol``; parameters after training to 100x that (Adam
    divides by sqrt(v): round-off in near-zero gradients moves a weight by up to lr per step)."""
    loss_rel = float(np.max(np.abs(fast[0] - eager[0]) / np.abs(eager[0])))
    pred_abs = float(np.max(np.abs(fast[2] - eager[2])))
    par_abs = max(float((fast[1][k] - eager[1][k]).abs().max()) for k in eager[1])
    print(
        f"MAXDIFF {what}: loss rel {loss_rel:.2e}, prediction abs {pred_abs:.2e}, parameter abs {par_abs:.2e}"
    )
    np.testing.assert_allclose(fast[0], eager[0], rtol=rtol)
    np.testing.assert_allclose(fast[2], eager[2], rtol=rtol, atol=atol)
    for k in eager[1]:
        a, b = _without_key_bias(k, fast[1][k]), _without_key_bias(k, eager[1][k])
        torch.testing.assert_close(a, b, rtol=100 * rtol, atol=100 * atol, msg=k)


def _without_key_bias(name: str, t: torch.Tensor) -> torch.Tensor:
    """The key slice of a packed QKV bias has a zero gradient in exact arithmetic (softmax ignores a
    per-query constant), so Adam turns its round-off into lr-sized steps: not comparable across orders."""
    if name.endswith("attn.in_proj_bias"):
        d = t.shape[0] // 3
        return torch.cat([t[:d], t[2 * d :]])
    return t


@pytest.mark.parametrize(
    "mode, extra",
    [
        ("compiled_graphed", []),
        ("graphed", []),
        ("graphed", ["model.padding_aware=true", "train.length_bucketing=true"]),
        ("compiled", ["train.grad_clip=0.01"]),
    ],
    ids=["compiled_graphed", "graphed", "graphed-padding-aware", "compiled-clip"],
)
def test_fast_path_equals_eager_fp32_and_never_recompiles(mode, extra):
    run = load_config("gsit", "synthetic", None, [*SMALL, *NO_DROPOUT, *extra])
    data = _data()
    eager = _train(run, data, "eager")
    fast = _train(run, data, mode)
    _close(fast, eager, rtol=1e-4, atol=1e-4, what=f"{mode} {extra}")
    graphs = fast[3]
    assert graphs[0] > 0 and graphs[-1] == graphs[0], f"compiles/captures per epoch: {graphs}"
    # train + eval shapes, plus one captured optimizer step
    bound = (2 * len(LENGTH_LEVELS) if "model.padding_aware=true" in extra else 2) + 1
    if mode == "graphed":
        assert graphs[0] <= bound


def test_bf16_triton_compiled_graphed_within_bf16_tolerance():
    pytest.importorskip("triton")
    run = load_config(
        "gsit", "synthetic", None, [*SMALL, *NO_DROPOUT, "model.attention_backend=triton", 'train.amp="bf16"']
    )
    data = _data()
    eager = _train(run, data, "eager")
    fast = _train(run, data, "compiled_graphed")
    print(f"MAXDIFF bf16 triton: loss rel {float(np.max(np.abs(fast[0] - eager[0]) / np.abs(eager[0]))):.2e}")
    np.testing.assert_allclose(fast[0], eager[0], rtol=3e-2)
    np.testing.assert_allclose(fast[2], eager[2], atol=5e-2 * max(1.0, float(np.abs(eager[2]).max())))


def test_text_encoder_fine_tuned_inside_the_captured_step():
    transformers = pytest.importorskip("transformers")
    from gsit.models.text import BertTextEncoder

    cfg = transformers.BertConfig(
        vocab_size=2048,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    data = _data("bert")
    run = load_config("gsit", "synthetic", None, [*SMALL, *NO_DROPOUT])
    results = {}
    for mode in ("eager", "compiled_graphed"):
        torch.manual_seed(5)
        enc = BertTextEncoder.from_config(cfg)
        results[mode] = _train(run, data, mode, epochs=2, text_encoder=enc)
    _close(results["compiled_graphed"], results["eager"], rtol=1e-4, atol=1e-4, what="text encoder")
    assert any(k.startswith("text_encoder.") for k in results["eager"][1])


def test_dropout_on_runs_and_learns_like_eager():
    """With dropout on, masks come from the same generator in another order: the runs agree in
    distribution (loss within a few percent), not bit for bit."""
    run = load_config("gsit", "synthetic", None, SMALL)
    data = _data()
    eager = _train(run, data, "eager", epochs=4)
    fast = _train(run, data, "compiled_graphed", epochs=4)
    assert np.all(np.isfinite(fast[0]))
    np.testing.assert_allclose(fast[0][-1], eager[0][-1], rtol=0.25)


@pytest.mark.parametrize("mode", ["graphed", "compiled_graphed"])
def test_mult_fast_path_equals_eager(mode):
    run = load_config(
        "mult",
        "synthetic",
        None,
        ["model.d_model=16", "model.num_heads=2", "model.num_layers=1", "train.batch_size=8"],
    )
    run_nd = load_config(
        "mult",
        "synthetic",
        None,
        [
            f"model.{k}=0.0"
            for k in (
                "attn_dropout",
                "attn_dropout_a",
                "attn_dropout_v",
                "relu_dropout",
                "res_dropout",
                "embed_dropout",
                "text_dropout",
                "output_dropout",
            )
        ]
        + ["model.d_model=16", "model.num_heads=2", "model.num_layers=1", "train.batch_size=8"],
    )
    del run
    data = _data()
    eager = _train(run_nd, data, "eager", epochs=2)
    fast = _train(run_nd, data, mode, epochs=2)
    _close(fast, eager, rtol=1e-4, atol=1e-4, what=f"mult {mode}")
    assert fast[3][-1] == fast[3][0], f"compiles/captures per epoch: {fast[3]}"


def test_triton_accepts_valid_lengths_on_the_cpu():
    pytest.importorskip("triton")
    from gsit.graph import SequenceLayout
    from gsit.models.gsit import GraphFusion

    torch.manual_seed(0)
    fusion = (
        GraphFusion(
            modalities=("text", "vision", "audio"),
            d_model=32,
            num_heads=4,
            num_layers=1,
            attention_backend="triton",
        )
        .to(DEV)
        .eval()
    )
    layout = SequenceLayout(("text", "vision", "audio"), (10, 20, 30))
    x = torch.randn(3, 60, 32, device=DEV)
    vl = torch.tensor([[10, 20, 30], [5, 0, 7], [1, 2, 3]])
    with torch.no_grad():
        torch.testing.assert_close(fusion(x, layout, vl), fusion(x, layout, vl.to(DEV)))


def test_captured_optimizer_continues_an_eager_optimizer_and_follows_lr_changes():
    """The optimizer update captured in a CUDA graph: (a) an optimizer whose state was created eagerly (as
    after a resume: step counters on the CPU) continues captured; (b) an lr change (a plateau scheduler's
    cut) gives a new captured update with the new lr; both equal the all-eager run."""
    run = load_config("gsit", "synthetic", None, [*SMALL, *NO_DROPOUT])
    data = _data()
    eager = _train(run, data, "eager", cut_after_epoch=2)
    mixed = _train(run, data, ["eager", "graphed", "graphed"], cut_after_epoch=2)
    print(
        f"MAXDIFF optimizer continue + lr cut: loss rel {np.max(np.abs(mixed[0] - eager[0]) / eager[0]):.2e}"
    )
    np.testing.assert_allclose(mixed[0], eager[0], rtol=1e-4)
    for k in eager[1]:
        torch.testing.assert_close(
            _without_key_bias(k, mixed[1][k]), _without_key_bias(k, eager[1][k]), rtol=1e-2, atol=1e-2, msg=k
        )
    step = mixed[4]["graphed"]._optimizer_step
    assert step is not None and len(step.graphs) == 2  # one captured update per lr setting
    # negative control: without the lr cut the captured run must differ from the eager run with it
    uncut = _train(run, data, ["eager", "graphed", "graphed"])
    assert abs(uncut[0][2] - eager[0][2]) > 1e-6
