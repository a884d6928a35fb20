"""The training protocol (SPEC §9): summed-gradient accumulation, the three Adam groups, early stopping on
the 4-decimal validation loss, validation-only model selection, the result files and the run directory --
and the headline: on the default synthetic task GsiT clearly beats a text-only control of the same
architecture."""

from __future__ import annotations

import copy
import csv
import json
import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import gsit.evaluate as evaluate_mod
import gsit.train as train_mod
from gsit import cli
from gsit.build import build_model
from gsit.checkpoint import load_model_weights
from gsit.config import load_config
from gsit.data import make_synthetic, write_mmsa_pickle
from gsit.data.batch import epoch_batches
from gsit.distributed import Dist
from gsit.evaluate import split_loss
from gsit.train import Progress, make_optimizer, train_epoch, train_seed

NO_DROPOUT = ["model.text_dropout=0.0", "model.embed_dropout=0.0", "model.attn_dropout=0.0"]
TINY_MODEL = ["model.d_model=8", "model.num_heads=2", "model.num_layers=1", *NO_DROPOUT]
TINY_CLI = ["model.d_model=16", "model.num_layers=1", "train.max_epochs=3", "train.batch_size=16"]


def tiny_data(**kw):
    args = dict(n_train=64, n_valid=32, n_test=32, text_len=12, audio_len=14, vision_len=14, seed=0)
    args.update(kw)
    return make_synthetic(**args)


def _grads(model) -> dict[str, torch.Tensor]:
    return {
        n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
    }


def _batch_loss_grads(model, split, idx) -> dict[str, torch.Tensor]:
    """Gradient of one batch's MEAN L1 loss (fresh zero gradients)."""
    model.zero_grad(set_to_none=True)
    batch = evaluate_mod.batch_from(split, idx, torch.device("cpu"))
    out = model(batch.inputs, batch.lengths)
    torch.nn.functional.l1_loss(out["prediction"].view(-1), batch.labels.view(-1)).backward()
    return _grads(model)


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize(
    "n_train, batch_size, update_epochs", [(56, 8, 3), (64, 8, 8), (40, 8, 8), (32, 8, 1)]
)
def test_summed_gradient_accumulation_and_dropped_partial_window(n_train, batch_size, update_epochs, seed):
    """Each step's gradient is the SUM of the window's per-batch mean-loss gradients; steps per epoch =
    floor(n_batches / update_epochs); the partial window is never stepped and does not leak into the next
    epoch's first window."""
    run = load_config(
        "gsit",
        "synthetic",
        None,
        [*TINY_MODEL, f"train.batch_size={batch_size}", f"train.update_epochs={update_epochs}"],
    )
    data = tiny_data(n_train=n_train)
    split = data.splits["train"]
    model = build_model(run, data)
    opt = make_optimizer(run, model)
    n_batches = math.ceil(n_train / batch_size)
    steps: list[dict] = []
    real_step = opt.step

    def spy_step(*a, **k):
        steps.append({"grads": _grads(model), "model": copy.deepcopy(model)})
        out = real_step(*a, **k)
        steps[-1]["after"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        return out

    opt.step = spy_step
    for epoch in (1, 2):
        before = len(steps)
        train_epoch(model, opt, split, run=run, seed=7, epoch=epoch, task="regression", ctx=Dist())
        epoch_steps = steps[before:]
        assert len(epoch_steps) == n_batches // update_epochs
        batches = epoch_batches(len(split), batch_size, shuffle=True, seed=7, epoch=epoch)
        assert len(batches) == n_batches
        for w, rec in enumerate(epoch_steps):
            window = batches[w * update_epochs : (w + 1) * update_epochs]
            clone = rec["model"]
            clone.train()
            expected = None
            for idx in window:
                g = _batch_loss_grads(clone, split, idx)
                expected = g if expected is None else {k: expected[k] + g[k] for k in g}
            for name, g in rec["grads"].items():
                torch.testing.assert_close(g, expected[name], rtol=1e-4, atol=1e-6, msg=name)
            # the summed gradient is update_epochs times the window-mean gradient, not the mean itself
            if update_epochs > 1:
                mean_norm = sum(float(v.norm()) for v in expected.values()) / update_epochs
                assert sum(float(v.norm()) for v in rec["grads"].values()) > 1.5 * mean_norm
        # the partial window changed nothing: the weights are those right after the epoch's last step
        if epoch_steps:
            for name, p in model.named_parameters():
                assert torch.equal(p.detach(), epoch_steps[-1]["after"][name]), name


def test_optimizer_step_count_counts_full_windows_only(seed):
    run = load_config("gsit", "synthetic", None, [*TINY_MODEL, "train.batch_size=4", "train.update_epochs=8"])
    data = tiny_data(n_train=76)  # 19 batches -> 2 full windows of 8, 3 batches dropped
    model = build_model(run, data)
    opt = make_optimizer(run, model)
    calls = []
    real = opt.step
    opt.step = lambda *a, **k: (calls.append(1), real(*a, **k))[1]
    zero_calls = []
    real_zero = opt.zero_grad
    opt.zero_grad = lambda *a, **k: (zero_calls.append(k), real_zero(*a, **k))[1]
    for epoch in (1, 2, 3):
        train_epoch(
            model, opt, data.splits["train"], run=run, seed=1, epoch=epoch, task="regression", ctx=Dist()
        )
        assert len(calls) == 2 * epoch
    assert len(zero_calls) == 3 * 3  # once per window start, partial windows included


def test_train_epoch_loss_is_read_once_not_per_batch(seed, monkeypatch):
    """The running loss stays on the device (no host sync per step); the returned mean equals the mean
    of the per-batch losses, and the progress bar still gets a running value."""
    run = load_config("gsit", "synthetic", None, [*TINY_MODEL, "train.batch_size=4", "train.update_epochs=2"])
    data = tiny_data(n_train=40)  # 10 batches
    model = build_model(run, data)
    opt = make_optimizer(run, model)
    losses: list[float] = []
    real_loss = train_mod.training_loss

    def spy_loss(*a, **k):
        out = real_loss(*a, **k)
        losses.append(out.detach().clone())
        return out

    monkeypatch.setattr(train_mod, "training_loss", spy_loss)
    reads = []
    real_float = torch.Tensor.__float__
    monkeypatch.setattr(torch.Tensor, "__float__", lambda t: (reads.append(1), real_float(t))[1])
    mean = train_epoch(
        model, opt, data.splits["train"], run=run, seed=1, epoch=1, task="regression", ctx=Dist()
    )
    n_reads = len(reads)
    monkeypatch.undo()
    assert len(losses) == 10 and n_reads == 1  # one read per epoch, none per batch
    assert mean == pytest.approx(sum(float(v) for v in losses) / 10, rel=1e-12)
    shown = []
    mean2 = train_epoch(
        model,
        opt,
        data.splits["train"],
        run=run,
        seed=1,
        epoch=2,
        task="regression",
        ctx=Dist(),
        progress=lambda i, n, v: shown.append((i, n, v)),
    )
    assert shown[-1][:2] == (10, 10) and shown[-1][2] == pytest.approx(mean2, rel=1e-12)


# ----------------------------------------------------------------------------- optimizer groups


def test_three_adam_parameter_groups_with_a_tiny_bert(seed):
    from transformers import BertConfig

    from gsit.models.text import BertTextEncoder

    enc = BertTextEncoder.from_config(
        BertConfig(
            vocab_size=2048, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    )
    data = tiny_data(text_kind="bert")
    run = load_config(
        "gsit",
        "synthetic",
        None,
        [
            *TINY_MODEL,
            "train.learning_rate_bert=3e-5",
            "train.learning_rate_other=7e-4",
            "train.weight_decay_bert=0.01",
            "train.weight_decay_other=0.002",
        ],
    )
    model = build_model(run, data, enc)
    opt = make_optimizer(run, model)
    assert type(opt) is torch.optim.Adam  # coupled L2, not AdamW
    assert len(opt.param_groups) == 3
    names = {id(p): n for n, p in model.named_parameters()}
    g1, g2, g3 = ([names[id(p)] for p in g["params"]] for g in opt.param_groups)
    no_decay = ("bias", "LayerNorm.bias", "LayerNorm.weight")
    assert g1 and all(n.startswith("text_encoder.") and not any(nd in n for nd in no_decay) for n in g1)
    assert g2 and all(n.startswith("text_encoder.") and any(nd in n for nd in no_decay) for n in g2)
    assert any("LayerNorm.weight" in n for n in g2) and any(n.endswith(".bias") for n in g2)
    assert g3 and not any(n.startswith("text_encoder.") for n in g3)
    assert any(n.startswith("fusion.") for n in g3) and any(n.startswith("head_") for n in g3)
    # every trainable parameter is in exactly one group
    assert sorted(g1 + g2 + g3) == sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert len(set(g1 + g2 + g3)) == len(g1 + g2 + g3)
    settings = [(g["lr"], g["weight_decay"], g["betas"], g["eps"]) for g in opt.param_groups]
    assert settings == [
        (3e-5, 0.01, (0.9, 0.999), 1e-8),
        (3e-5, 0.0, (0.9, 0.999), 1e-8),
        (7e-4, 0.002, (0.9, 0.999), 1e-8),
    ]


def test_without_bert_one_group_and_mmsa_protocol_one_group(seed):
    data = tiny_data()
    run = load_config("gsit", "synthetic", None, TINY_MODEL)
    opt = make_optimizer(run, build_model(run, data))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == run.train.learning_rate_other
    run = load_config(
        "mult",
        "synthetic",
        None,
        ["model.d_model=8", "model.num_heads=2", 'train.protocol="mmsa_mult"', "train.learning_rate=0.003"],
    )
    opt = make_optimizer(run, build_model(run, data))
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == 0.003


# ----------------------------------------------------------------------------- MMSA loss rounding


def test_split_loss_is_mean_over_batches_rounded_to_4_decimals():
    labels = np.zeros(6, dtype=np.float32)
    preds = np.array([[0.1], [0.1], [0.1], [0.1], [1.00013], [1.00013]], dtype=np.float32)
    # batches of 4 and 2: batch MAEs 0.1 and 1.00013 -> mean 0.550065 -> 0.5501 (the sample mean is 0.40004)
    assert split_loss(preds, labels, task="regression", batch_size=4) == 0.5501
    assert split_loss(preds, labels, task="regression", batch_size=6) == round(
        float(np.mean(np.abs(preds))), 4
    )
    value = split_loss(preds + 0.123456, labels, task="regression", batch_size=4)
    assert value == round(value, 4)


# ----------------------------------------------------------------------------- early stop and selection


def test_early_stop_selection_on_validation_only_and_test_read_once(tmp_path, monkeypatch, seed):
    """Scripted validation losses: 1.0, 0.5, 0.50004 (rounds to 0.5: no improvement), 0.49996 (rounds to
    0.5: no improvement although it is lower), 0.6 -> with early_stop=3 training stops after epoch 5 and
    the epoch-2 weights are selected.  The test split is read by one predict_split call, after training,
    with the best weights loaded."""
    run = load_config(
        "gsit",
        "synthetic",
        None,
        [*TINY_MODEL, "train.batch_size=16", "train.early_stop=3", "train.update_epochs=1"],
    )
    data = tiny_data()
    offsets = [1.0, 0.5, 0.50004, 0.49996, 0.6, 0.7, 0.3]
    events: list[str] = []
    snapshots: dict[int, dict[str, torch.Tensor]] = {}
    test_states: list[dict[str, torch.Tensor]] = []
    real_predict, real_batch_from = evaluate_mod.predict_split, evaluate_mod.batch_from

    def spy_batch_from(split, idx, device):
        events.append(split.name)
        return real_batch_from(split, idx, device)

    def spy_predict(model, split, **kw):
        events.append(f"predict:{split.name}")
        if split.name == "valid":
            epoch = len(snapshots) + 1
            snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}
            preds = np.asarray(split.labels, dtype=np.float32)[:, None] + np.float32(offsets[epoch - 1])
            return preds
        test_states.append({k: v.clone() for k, v in model.state_dict().items()})
        return real_predict(model, split, **kw)

    monkeypatch.setattr(train_mod, "batch_from", spy_batch_from)
    monkeypatch.setattr(evaluate_mod, "batch_from", spy_batch_from)
    monkeypatch.setattr(evaluate_mod, "predict_split", spy_predict)
    result = train_seed(
        run,
        data,
        seed=3,
        seed_dir=tmp_path / "seed-3",
        ctx=Dist(),
        resume=False,
        progress=Progress(True, Dist()),
        dataset="synthetic",
    )
    assert (result["epochs"], result["best_epoch"], result["valid_loss"]) == (5, 2, 0.5)
    assert events.count("predict:test") == 1 and events.count("predict:valid") == 5
    first_test = events.index("predict:test")
    assert all(e in ("test", "predict:test") for e in events[first_test:])  # nothing after the test read
    assert "test" not in events[:first_test]
    assert events[-1] == "test"
    # the best (epoch-2) weights were saved, reloaded and scored on test
    best = load_tensors_plain(tmp_path / "seed-3" / "best.safetensors")
    for k, v in snapshots[2].items():
        assert torch.equal(best[k], v), k
        assert torch.equal(test_states[0][k], v), k
    assert any(not torch.equal(snapshots[5][k], v) for k, v in snapshots[2].items())
    # epochs.csv records the rounded validation losses and the running best epoch
    rows = list(csv.DictReader(open(tmp_path / "seed-3" / "epochs.csv")))
    assert [float(r["valid_Loss"]) for r in rows] == [1.0, 0.5, 0.5, 0.5, 0.6]
    assert [int(r["best_epoch"]) for r in rows] == [1, 2, 2, 2, 2]
    assert set(result["test"]) >= {"Loss", "MAE", "Corr", "Has0_acc_2", "Non0_acc_2", "Mult_acc_7"}


def test_max_epochs_caps_training(tmp_path, seed):
    run = load_config(
        "gsit",
        "synthetic",
        None,
        [*TINY_MODEL, "train.batch_size=32", "train.max_epochs=2", "train.early_stop=50"],
    )
    result = train_seed(
        run,
        tiny_data(),
        seed=1,
        seed_dir=tmp_path / "s",
        ctx=Dist(),
        resume=False,
        progress=Progress(True, Dist()),
        dataset="synthetic",
    )
    assert result["epochs"] == 2


def load_tensors_plain(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ----------------------------------------------------------------------------- run directory and result files


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("two_seed")
    pkl = write_mmsa_pickle(tiny_data(), root / "tiny.pkl")
    run_dir = root / "run"
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(pkl),
            "--dataset",
            "synthetic",
            "--run-dir",
            str(run_dir),
            "--seeds",
            "1,2",
            *TINY_CLI,
        ]
    )
    assert rc == 0
    return run_dir


def test_results_json_and_csv_mean_std_over_seeds(two_seed_run):
    res = json.loads((two_seed_run / "results.json").read_text())
    assert res["model"] == "gsit" and res["dataset"] == "synthetic"
    assert res["seeds"] == [1, 2] and res["n_seeds"] == 2 and len(res["per_seed"]) == 2
    keys = [
        "Loss",
        "Has0_acc_2",
        "Has0_F1_score",
        "Non0_acc_2",
        "Non0_F1_score",
        "Mult_acc_5",
        "Mult_acc_7",
        "MAE",
        "Corr",
    ]
    assert list(res["mean"]) == keys and list(res["std"]) == keys
    for k in keys:
        vals = np.array([s["test"][k] for s in res["per_seed"]], dtype=np.float64)
        assert type(res["mean"][k]) is float and type(res["std"][k]) is float
        assert res["mean"][k] == pytest.approx(float(vals.mean()), abs=1e-12)
        assert res["std"][k] == pytest.approx(float(vals.std()), abs=1e-12)  # population std (numpy default)
        assert all(type(s["test"][k]) is float for s in res["per_seed"])
    for s in res["per_seed"]:
        seed_res = json.loads((two_seed_run / f"seed-{s['seed']}" / "results.json").read_text())
        assert seed_res == s
        assert set(s) == {"seed", "best_epoch", "epochs", "valid_loss", "test"}
        assert 1 <= s["best_epoch"] <= s["epochs"] <= 3
    with open(two_seed_run / "results.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    assert len(rows) == 2
    header, row = rows
    assert header[:3] == ["model", "dataset", "n_seeds"] and row[:3] == ["gsit", "synthetic", "2"]
    assert header[3:] == [f"{k}_{s}" for k in keys for s in ("mean", "std")]
    for h, v in zip(header[3:], row[3:]):
        k, stat = h.rsplit("_", 1)
        assert float(v) == pytest.approx(res[stat][k], abs=1e-12)


def test_epochs_csv_columns(two_seed_run):
    for seed in (1, 2):
        with open(two_seed_run / f"seed-{seed}" / "epochs.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        metric_keys = [
            "Loss",
            "Has0_acc_2",
            "Has0_F1_score",
            "Non0_acc_2",
            "Non0_F1_score",
            "Mult_acc_5",
            "Mult_acc_7",
            "MAE",
            "Corr",
        ]
        assert list(rows[0]) == [
            "epoch",
            "train_loss",
            "seconds",
            "lr",
            *[f"valid_{k}" for k in metric_keys],
            "best_epoch",
            "graphs",
        ]
        assert all(r["graphs"] == "0" for r in rows)  # eager on the CPU: nothing compiled or captured
        assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
        losses = [float(r["valid_Loss"]) for r in rows]
        best = int(rows[-1]["best_epoch"])
        assert best == 1 + losses.index(min(losses))  # selection on the (first) lowest validation loss
        assert all(float(r["lr"]) == 2e-3 for r in rows)  # the synthetic preset's learning_rate_other
        assert not any(k.startswith("test") for k in rows[0])  # the test split is never scored per epoch
        res = json.loads((two_seed_run / f"seed-{seed}" / "results.json").read_text())
        assert res["best_epoch"] == best and res["valid_loss"] == min(losses)


def test_run_dir_contents(two_seed_run, monkeypatch):
    files = {p.name for p in two_seed_run.iterdir()}
    assert {
        "config.json",
        "command.txt",
        "versions.json",
        "data.json",
        "results.json",
        "results.csv",
        "seed-1",
        "seed-2",
    } <= files
    assert not [p for p in two_seed_run.rglob("*") if p.name.endswith(".tmp")]  # no temp files left behind
    cfg = json.loads((two_seed_run / "config.json").read_text())
    assert cfg["model_name"] == "gsit" and cfg["model"]["d_model"] == 16 and cfg["model"]["num_layers"] == 1
    assert (
        cfg["train"]["seeds"] == [1, 2]
        and cfg["train"]["max_epochs"] == 3
        and cfg["train"]["batch_size"] == 16
    )
    assert cfg["data"]["dataset"] == "synthetic" and cfg["data"]["path"].endswith("tiny.pkl")
    command = (two_seed_run / "command.txt").read_text()
    assert command.startswith("gsit train") and "--seeds 1,2" in command
    versions = json.loads((two_seed_run / "versions.json").read_text())
    assert (
        versions["torch"] == torch.__version__ and versions["numpy"] == np.__version__ and "gsit" in versions
    )
    facts = json.loads((two_seed_run / "data.json").read_text())
    assert facts["splits"] == {"train": 64, "valid": 32, "test": 32}
    assert facts["dims"] == {"text": 32, "audio": 5, "vision": 20}
    assert facts["seq_lengths"] == {"text": 12, "audio": 14, "vision": 14}
    assert facts["task"] == "regression" and facts["text_kind"] == "features"
    for seed in (1, 2):
        sd = two_seed_run / f"seed-{seed}"
        assert {"best.safetensors", "last.safetensors", "last.json", "epochs.csv", "results.json"} <= {
            p.name for p in sd.iterdir()
        }
        raw = (sd / "best.safetensors").read_bytes()
        header_len = int.from_bytes(raw[:8], "little")
        header = json.loads(
            raw[8 : 8 + header_len]
        )  # the safetensors layout: a JSON header, then raw tensors
        assert "fusion.forward_encoder.final_norm.weight" in header
        assert b"\x80\x04" not in raw[:2] and not raw.startswith(b"PK")  # neither a pickle nor a torch zip

    # loading needs no pickle at all
    def no_pickle(*a, **k):
        raise AssertionError("pickle used while loading a checkpoint")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    from safetensors.torch import load_file

    tensors = load_file(str(two_seed_run / "seed-1" / "best.safetensors"))
    data = make_synthetic(n_train=64, n_valid=32, n_test=32, text_len=12, audio_len=14, vision_len=14, seed=0)
    run = load_config("gsit", "synthetic", None, ["model.d_model=16", "model.num_layers=1"])
    model = build_model(run, data)
    load_model_weights(two_seed_run / "seed-1" / "best.safetensors", model)
    assert set(tensors) == set(model.state_dict())
    last = load_file(str(two_seed_run / "seed-1" / "last.safetensors"))
    assert any(k.startswith("optim.") for k in last) and "rng.torch" in last
    assert json.loads((two_seed_run / "seed-1" / "last.json").read_text())["state"]["epoch"] == 3


# ----------------------------------------------------------------------------- the headline


def test_gsit_beats_text_only_control_on_default_synthetic_task(tmp_path, capsys):
    """``gsit train`` with no data trains GsiT on the embedded synthetic task, whose label is the product of
    a text cue and an audio cue (times a vision magnitude): text alone carries no information about it.
    Measured on CPU (seed 1111, 8 epochs): GsiT test MAE 0.56, Corr 0.95, Non0 Acc-2 1.00; the text-only
    control (audio and vision zeroed, same architecture and budget) MAE 1.92, Corr -0.11, Acc-2 0.46."""
    results = {}
    for name, extra in (("full", []), ("text_only", ['data.zero_modalities=["audio","vision"]'])):
        out = tmp_path / name
        assert cli.main(["train", "--quiet", "--out", str(out), "train.max_epochs=8", *extra]) == 0
        (run_dir,) = list(out.iterdir())
        results[name] = json.loads((run_dir / "results.json").read_text())["mean"]
    capsys.readouterr()
    full, text = results["full"], results["text_only"]
    print(
        f"GsiT: MAE {full['MAE']:.4f} Corr {full['Corr']:.4f} Acc2 {full['Non0_acc_2']:.4f} | "
        f"text-only: MAE {text['MAE']:.4f} Corr {text['Corr']:.4f} Acc2 {text['Non0_acc_2']:.4f}"
    )
    assert full["MAE"] <= text["MAE"] - 0.8
    assert full["MAE"] < 0.9
    assert full["Corr"] > 0.85
    assert abs(text["Corr"]) < 0.3
    assert full["Non0_acc_2"] > 0.9 and text["Non0_acc_2"] < 0.7


@pytest.mark.slow
def test_compiled_training_with_the_triton_backend_matches_eager(tmp_path, seed):
    """`gsit train --compile` with the fused triton backend (kernels under TRITON_INTERPRET=1 on CPU,
    Inductor for everything else): it trains, and the validation losses follow the eager run's."""
    pytest.importorskip("triton")
    import os

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
    over = [
        *TINY_MODEL,
        "train.batch_size=32",
        "train.max_epochs=2",
        "train.early_stop=50",
        "model.attention_backend=triton",
        "model.attn_dropout=0.0",
    ]
    results = {}
    for compiled in (False, True):
        run = load_config("gsit", "synthetic", None, over + (["train.compile=true"] if compiled else []))
        results[compiled] = train_seed(
            run,
            tiny_data(),
            seed=1,
            seed_dir=tmp_path / str(compiled),
            ctx=Dist(),
            resume=False,
            progress=Progress(True, Dist()),
            dataset="synthetic",
        )
    torch._dynamo.reset()
    eager, comp = results[False], results[True]
    assert comp["epochs"] == eager["epochs"] == 2
    assert abs(comp["test"]["MAE"] - eager["test"]["MAE"]) < 0.05, (comp["test"], eager["test"])


def test_update_epochs_is_an_alias_of_accumulation_steps(tmp_path):
    """MMSA's name ``update_epochs`` (batches per optimizer step) maps to ``accumulation_steps`` in
    overrides and TOML files; both at once is an error."""
    from gsit.config import ConfigError
    from gsit.config import load_config as load

    assert load("gsit", "synthetic", None, ["train.update_epochs=3"]).train.accumulation_steps == 3
    assert load("gsit", "synthetic", None, ["train.accumulation_steps=5"]).train.accumulation_steps == 5
    toml = tmp_path / "u.toml"
    toml.write_text("[train]\nupdate_epochs = 4\n")
    assert load("mult", "synthetic", toml).train.accumulation_steps == 4
    assert load("gsit", "synthetic", toml, ["train.accumulation_steps=2"]).train.accumulation_steps == 2
    toml.write_text("[train]\nupdate_epochs = 4\naccumulation_steps = 4\n")
    with pytest.raises(ConfigError, match="u.toml.*both accumulation_steps and its alias update_epochs"):
        load("gsit", "synthetic", toml)


def test_resume_accepts_a_run_saved_with_update_epochs(tmp_path):
    """A run directory written before the rename stores ``update_epochs``; resuming it with the same
    settings is allowed, with other settings it is refused."""
    import json

    from gsit.errors import GsitError
    from gsit.runs import check_resume_dir

    run = load_config("gsit", "synthetic", None, ["train.accumulation_steps=3"])
    saved = json.loads(json.dumps(run.to_dict()))
    saved["train"]["update_epochs"] = saved["train"].pop("accumulation_steps")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    check_resume_dir(tmp_path, run)
    other = load_config("gsit", "synthetic", None, ["train.accumulation_steps=2"])
    with pytest.raises(GsitError, match="different configuration"):
        check_resume_dir(tmp_path, other)
