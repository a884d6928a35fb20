"""The optional contrastive objective (``train.contrastive_weight``, gsit.evaluate.contrastive_loss):
InfoNCE checked against a float64 hand-written reference, zero-weight rows masked out, weight 0 = today's
training (bit for bit), the eager loop and the static (padded) step agree, the models' summaries are their
head inputs, tiny CLI runs for GsiT and MulT, config range errors and the ablation variants."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import gsit.evaluate as evaluate_mod
from gsit import cli
from gsit.analysis.variants import DEFAULT_VARIANTS, VARIANTS
from gsit.build import build_model
from gsit.config import load_config
from gsit.data import make_synthetic, write_mmsa_pickle
from gsit.data.batch import epoch_batches
from gsit.distributed import Dist
from gsit.errors import ConfigError, GsitError
from gsit.evaluate import batch_from, contrastive_loss, training_loss
from gsit.execution import Execution
from gsit.train import make_optimizer, make_runner, train_epoch

NO_DROPOUT = ["model.text_dropout=0.0", "model.embed_dropout=0.0", "model.attn_dropout=0.0"]
TINY = ["model.d_model=8", "model.num_heads=2", "model.num_layers=1", *NO_DROPOUT]
PADDED = Execution("test", "padded", "static shapes, eager (test)")
EAGER = Execution("eager", "eager", "test")


def _reference(s: np.ndarray, tau: float, w: np.ndarray | None = None) -> float:
    """InfoNCE written out with Python floats (float64): for every modality pair m < n and both directions,
    -log softmax of the own partner among the real rows, anchor-weighted mean, averaged over the terms."""
    B, M, _ = s.shape
    w = np.ones(B) if w is None else w
    z = s / np.linalg.norm(s, axis=-1, keepdims=True)
    terms = []
    for m in range(M):
        for n in range(m + 1, M):
            for a, b in ((m, n), (n, m)):
                num, den = 0.0, 0.0
                for i in range(B):
                    cands = [j for j in range(B) if w[j] > 0 or j == i]
                    logits = {j: float(z[i, a] @ z[j, b]) / tau for j in cands}
                    top = max(logits.values())
                    lse = top + math.log(sum(math.exp(v - top) for v in logits.values()))
                    num += w[i] * (lse - logits[i])
                    den += w[i]
                terms.append(num / den)
    return sum(terms) / len(terms)


def _summaries(B=5, M=3, D=4, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, M, D, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("tau", [0.07, 0.5, 2.0])
def test_contrastive_loss_matches_float64_reference(tau):
    s = _summaries()
    got = float(contrastive_loss(s, tau))
    assert got == pytest.approx(_reference(s.numpy(), tau), rel=1e-5)
    # negative control: shuffling the audio summaries across samples breaks the pairing, and the reference
    # (hence the test) sees it -- the function does not return the same value whatever the pairing
    shuffled = s.clone()
    shuffled[:, 1] = s[[1, 2, 3, 4, 0], 1]
    assert float(contrastive_loss(shuffled, tau)) == pytest.approx(
        _reference(shuffled.numpy(), tau), rel=1e-5
    )
    assert abs(float(contrastive_loss(shuffled, tau)) - got) > 1e-3


def test_contrastive_loss_is_low_for_aligned_and_about_log_b_for_unrelated_summaries():
    base = _summaries(B=16, M=1, D=32, seed=1)
    aligned = base.expand(-1, 3, -1).clone()  # every modality summary of a sample is the same vector
    assert float(contrastive_loss(aligned, 0.1)) < 0.05
    unrelated = _summaries(B=16, M=3, D=32, seed=2)
    assert abs(float(contrastive_loss(unrelated, 1e3)) - math.log(16)) < 0.01  # uniform softmax


def test_contrastive_loss_ignores_zero_weight_rows_loss_and_gradients():
    """A static batch: 5 real rows + 3 zero-weight copies of row 0 -> the same loss and the same gradient
    for the real rows as the unpadded batch, and no gradient for the copies."""
    real = _summaries(B=5).requires_grad_(True)
    loss = contrastive_loss(real, 0.2)
    (g_real,) = torch.autograd.grad(loss, real)
    padded = torch.cat([real.detach(), real.detach()[[0, 0, 0]]]).requires_grad_(True)
    w = torch.tensor([1.0] * 5 + [0.0] * 3)
    loss_p = contrastive_loss(padded, 0.2, w)
    (g_pad,) = torch.autograd.grad(loss_p, padded)
    loss, loss_p = loss.detach(), loss_p.detach()
    assert float(loss_p) == pytest.approx(float(loss), rel=1e-12)
    torch.testing.assert_close(g_pad[:5], g_real, rtol=1e-12, atol=1e-14)
    assert torch.count_nonzero(g_pad[5:]) == 0
    assert float(loss_p) == pytest.approx(_reference(padded.detach().numpy(), 0.2, w.numpy()), rel=1e-9)
    # negative control: the copies as real rows (weight 1) change the loss
    assert abs(float(contrastive_loss(padded, 0.2, torch.ones(8))) - float(loss)) > 1e-3
    # weights None == all ones; one real row: its only candidate is its partner, so the loss is 0
    torch.testing.assert_close(contrastive_loss(real, 0.2, torch.ones(5)), loss)
    assert float(contrastive_loss(padded, 0.2, torch.tensor([1.0] + [0.0] * 7))) == 0.0


def test_contrastive_loss_rejects_bad_shapes_and_temperatures():
    with pytest.raises(ValueError, match=r"\(B, M >= 2, D\)"):
        contrastive_loss(torch.zeros(4, 8), 0.1)
    with pytest.raises(ValueError, match=r"\(B, M >= 2, D\)"):
        contrastive_loss(torch.zeros(4, 1, 8), 0.1)
    with pytest.raises(ValueError, match="temperature"):
        contrastive_loss(torch.zeros(4, 3, 8), 0.0)


def test_training_loss_needs_summaries_only_when_the_weight_is_positive():
    out = {"prediction": torch.zeros(3, 1)}
    y = torch.ones(3)
    assert float(training_loss(out, y, "regression")) == 1.0
    with pytest.raises(GsitError, match="summaries"):
        training_loss(out, y, "regression", contrastive_weight=0.1)


# ----------------------------------------------------------------------------- the models' summaries


def _data(**kw):
    args = dict(n_train=44, n_valid=20, n_test=12, text_len=12, audio_len=24, vision_len=20, seed=3)
    return make_synthetic(**{**args, **kw})


@pytest.mark.parametrize("model_name", ["gsit", "mult", "vanilla"])
def test_summaries_are_the_pooled_head_input(model_name):
    run = load_config(model_name, "synthetic", None, ["model.d_model=8", "model.num_heads=2"])
    data = _data()
    torch.manual_seed(0)
    model = build_model(run, data).eval()
    keys = sorted(model.state_dict())
    batch = batch_from(data.splits["valid"], np.arange(6), torch.device("cpu"))
    with torch.no_grad():
        out = model(batch.inputs, batch.lengths)
        s = out["summaries"]
        assert s.shape[:2] == (6, 3)
        flat = s.flatten(1)
        if model_name == "mult":
            h = model.proj2(torch.relu(model.proj1(flat))) + flat
            pred = model.out_layer(h)
        else:
            pred = model.head_out(torch.relu(model.head_hidden(flat)))
    torch.testing.assert_close(pred, out["prediction"], rtol=0, atol=0)
    assert sorted(model.state_dict()) == keys  # exposing them adds no parameter or buffer


# ----------------------------------------------------------------------------- training


def _train(run, data, execution, epochs=(1, 2)):
    torch.manual_seed(0)
    model = build_model(run, data)
    opt = make_optimizer(run, model)
    runner = make_runner(run, model, execution, task=data.task, ctx=Dist())
    kw = dict(run=run, seed=1, task=data.task, ctx=Dist(), runner=runner)
    losses = [train_epoch(model, opt, data.splits["train"], epoch=e, **kw) for e in epochs]
    return losses, {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_weight_zero_is_todays_training_bit_for_bit(monkeypatch):
    """weight 0: the loss function is never called, and two epochs give exactly the losses and parameters of
    a plain L1 loop written here (today's objective); weight 0.5 changes them (negative control)."""
    run0 = load_config("gsit", "synthetic", None, [*TINY, "train.batch_size=8", "train.update_epochs=2"])
    assert run0.train.contrastive_weight == 0.0
    data = _data()
    torch.manual_seed(0)
    model = build_model(run0, data)
    opt = make_optimizer(run0, model)
    ref_losses = []
    for epoch in (1, 2):
        total = 0.0
        batches = epoch_batches(44, 8, shuffle=True, seed=1, epoch=epoch)
        for i, idx in enumerate(batches):
            if i % 2 == 0:
                opt.zero_grad(set_to_none=False)
            b = batch_from(data.splits["train"], idx, torch.device("cpu"))
            loss = torch.nn.functional.l1_loss(
                model(b.inputs, b.lengths)["prediction"].float().view(-1), b.labels.float().view(-1)
            )
            loss.backward()
            if (i + 1) % 2 == 0:
                opt.step()
            total += float(loss)
        ref_losses.append(total / len(batches))

    def boom(*a, **k):
        raise AssertionError("contrastive_loss called with weight 0")

    monkeypatch.setattr(evaluate_mod, "contrastive_loss", boom)
    losses, state = _train(run0, data, EAGER)
    assert losses == ref_losses
    for k, v in model.state_dict().items():
        assert torch.equal(state[k], v), k
    monkeypatch.undo()
    run1 = load_config(
        "gsit",
        "synthetic",
        None,
        [*TINY, "train.batch_size=8", "train.update_epochs=2", "train.contrastive_weight=0.5"],
    )
    losses1, state1 = _train(run1, data, EAGER)
    assert abs(losses1[0] - losses[0]) > 1e-3
    assert any(not torch.equal(state1[k], state[k]) for k in state)


@pytest.mark.parametrize("model_name", ["gsit", "mult"])
def test_static_padded_step_equals_eager_with_the_contrastive_term(model_name, monkeypatch):
    """44 rows in batches of 8: the last batch is padded with zero-weight copies in the static step.  With
    the contrastive term on, eager and static agree (losses, parameters); if the term ignored the row
    weights, they would not (negative control)."""
    extra = ["train.batch_size=8", "train.update_epochs=1", "train.contrastive_weight=0.5"]
    if model_name == "mult":
        extra += ["model.output_dropout=0.0", "model.attn_dropout_a=0.0", "train.grad_clip=0.0"]
    run = load_config(model_name, "synthetic", None, [*TINY, *extra])
    data = _data()
    eager = _train(run, data, EAGER)
    static = _train(run, data, PADDED)
    np.testing.assert_allclose(static[0], eager[0], rtol=1e-5)
    for k in eager[1]:
        if k.endswith("attn.in_proj_bias"):  # its key slice has a pure round-off gradient (test_execution)
            continue
        torch.testing.assert_close(static[1][k], eager[1][k], rtol=1e-4, atol=1e-5, msg=k)
    real = evaluate_mod.contrastive_loss
    monkeypatch.setattr(evaluate_mod, "contrastive_loss", lambda s, t, w=None: real(s, t, None))
    bad = _train(run, data, PADDED)
    assert abs(bad[0][0] - eager[0][0]) > 1e-4


@pytest.mark.parametrize("model_name", ["gsit", "mult"])
def test_tiny_cli_train_with_the_contrastive_term(model_name, tmp_path):
    pkl = write_mmsa_pickle(_data(n_train=48, n_valid=16, n_test=16), tmp_path / "tiny.pkl")
    dirs = {}
    for w in (0.0, 0.5):
        dirs[w] = tmp_path / f"run-{w}"
        rc = cli.main(
            [
                "train", "--quiet", "--model", model_name, "--dataset", "synthetic", "--data", str(pkl),
                "--run-dir", str(dirs[w]), "--seeds", "1", "model.d_model=8", "model.num_heads=2",
                "model.num_layers=1", "train.max_epochs=2", "train.batch_size=16",
                f"train.contrastive_weight={w}", "train.contrastive_temperature=0.2",
            ]
        )  # fmt: skip
        assert rc == 0
    cfg = json.loads((dirs[0.5] / "config.json").read_text())
    assert cfg["train"]["contrastive_weight"] == 0.5 and cfg["train"]["contrastive_temperature"] == 0.2
    res = json.loads((dirs[0.5] / "results.json").read_text())
    assert math.isfinite(res["mean"]["MAE"])
    rows = [(d / "seed-1" / "epochs.csv").read_text().splitlines()[1] for d in dirs.values()]
    assert rows[0] != rows[1]  # the training loss includes the extra term


@pytest.mark.parametrize(
    "override, match",
    [
        ("train.contrastive_weight=-0.1", r"train.contrastive_weight=-0.1 is out of range: it must be >= 0"),
        ("train.contrastive_weight=inf", "train.contrastive_weight=inf is out of range"),
        ("train.contrastive_temperature=0.0", r"train.contrastive_temperature=0.0 is out of range: .*> 0"),
        ("train.contrastive_temperature=-1", "train.contrastive_temperature=-1.0 is out of range"),
        ('train.contrastive_weight="big"', "train.contrastive_weight: expected a number"),
    ],
)
def test_contrastive_settings_are_range_checked(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config("gsit", "synthetic", None, [override])


def test_ablation_variants_add_the_objective_and_stay_out_of_the_default_set():
    for name, model in (("contrastive", "gsit"), ("mult_contrastive", "mult")):
        v = VARIANTS[name]
        assert v.model == model and name not in DEFAULT_VARIANTS
        run = load_config(model, "synthetic", None, list(v.overrides))
        assert run.train.contrastive_weight == 0.1 and run.train.contrastive_temperature == 0.1
    assert (
        load_config("gsit", "synthetic", None, list(VARIANTS["original"].overrides)).train.contrastive_weight
        == 0
    )
