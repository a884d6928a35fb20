"""gsit's MulT against the real ``mmsa`` package (PyPI ``mmsa==2.2.1``, installed by the ``test`` extra).

What is compared, all in float64:

* every shipped MulT preset (``configs/mult_<dataset>.toml``) holds the values of MMSA's
  ``config_regression.json`` entry ``mult`` for its dataset (mosi, mosei, sims from the installed package;
  simsv2 from MMSA's repository, commit a94e65d, whose MULT model and trainer files are byte-identical to
  the package's) -- model settings, text input (``use_bert: false``) and trainer settings;
* the model each preset builds equals MMSA's ``MULT`` built from that config: weights copied, eval mode,
  whole-model predictions within 1e-6 (measured: ~1e-15); the same for every ``mult_dagger`` preset against
  MMSA's ``MULT`` with its encoder layers tied the way the GsiT repository's ``TransformerEncoder`` ties them
  (``ModuleList([layer] * layers)``, src/MMSA-GsiT/models/subNets/transformers_encoder/transformer.py);
* a negative control: positions on, or the causal mask off, must break the equality;
* MMSA's ``TransformerEncoder`` with ``position_embedding=True`` (MMSA <= 2.1 behaviour) against gsit's
  ``positional=True`` encoder;
* the ``mmsa_mult`` training protocol (``gsit.train.train_seed``) against MMSA's own trainer
  ``MMSA.trains.singleTask.MULT.MULT.do_train`` run on the same batches with the same dropout random
  stream: parameters within 1e-5 (see TRAJECTORY_TOL) and the same learning rate after four epochs
  (accumulation windows, the dropped partial window, value clipping, Adam and ReduceLROnPlateau included).

MMSA takes its attention softmax in float32 (multihead_attention.py), so float64 parity is ~1e-7, not 1e-15.

Importing works on a CPU-only machine: ``import MMSA`` runs the package ``__init__`` (``run.py``), which
imports ``pynvml`` (nvidia-ml-py3) but initialises nothing at import time.  ``MMSA.models.singleTask.MULT``
as an attribute is the class (the subpackage ``__init__`` re-exports it), so the modules are taken from
``importlib.import_module``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("MMSA", reason="mmsa==2.2.1 is not installed (pip install -e '.[test]')")

from gsit.config import build_model_config, load_config  # noqa: E402
from gsit.data.spec import DATASETS  # noqa: E402
from gsit.models.mult import MulT, MulTEncoder  # noqa: E402

mmsa_config = importlib.import_module("MMSA.config")
mmsa_mult_model = importlib.import_module("MMSA.models.singleTask.MULT")
mmsa_transformer = importlib.import_module("MMSA.models.subNets.transformers_encoder.transformer")
mmsa_mult_trainer = importlib.import_module("MMSA.trains.singleTask.MULT")

TOL = 1e-6
LETTER = {"text": "l", "audio": "a", "vision": "v"}

# thuiar/MMSA commit a94e65d (2025-01-15), src/MMSA/config/config_regression.json, "mult" -> "simsv2"
# (mmsa==2.2.1 has no simsv2 entry; commonParams are the same as the package's)
MMSA_HEAD_SIMSV2 = {
    "attn_dropout_a": 0.2,
    "attn_dropout_v": 0.0,
    "relu_dropout": 0.1,
    "embed_dropout": 0.2,
    "res_dropout": 0.0,
    "dst_feature_dim_nheads": [30, 6],
    "batch_size": 16,
    "learning_rate": 0.0005,
    "nlevels": 4,
    "conv1d_kernel_size_l": 5,
    "conv1d_kernel_size_a": 3,
    "conv1d_kernel_size_v": 1,
    "text_dropout": 0.5,
    "attn_dropout": 0.1,
    "output_dropout": 0.3,
    "grad_clip": 1.0,
    "patience": 10,
    "weight_decay": 0.005,
    "transformers": "bert",
    "pretrained": "bert-base-chinese",
}
# drewjin/GsiT commit 76332ba, src/MMSA-GsiT/config/config_regression.json, "mult" (MulT-dagger): only the
# keys that differ from MMSA's entries of the same dataset
GSIT_REPO_MULT_DIFF = {
    "mosi": {"dst_feature_dim_nheads": [128, 4], "batch_size": 32},
    "mosei": {"dst_feature_dim_nheads": [128, 4], "batch_size": 8},
    "sims": {},
    "simsv2": {},
}


def mmsa_args(dataset: str, *, gsit_repo: bool = False) -> dict:
    """MMSA's run-time config for ``mult`` on ``dataset`` (its own ``get_config_regression`` where the package
    has the entry), with feature_dims as MMSA's data loader sets them from the data."""
    if dataset == "simsv2":
        args = dict(mmsa_config.get_config_regression("mult", "mosi"))  # commonParams + a dataset block
        args.update(MMSA_HEAD_SIMSV2)
        args["dataset_name"] = "simsv2"
    else:
        args = dict(mmsa_config.get_config_regression("mult", dataset))
    if gsit_repo:
        args.update(GSIT_REPO_MULT_DIFF[dataset])
    shapes = DATASETS[dataset].shapes
    args.update(
        feature_dims=[shapes["text"][1], shapes["audio"][1], shapes["vision"][1]],
        train_mode="regression",
        num_classes=3,
        use_bert=False,
    )
    return args


class Args(dict):
    """MMSA reads its config as attributes (EasyDict)."""

    __getattr__ = dict.__getitem__


def expected_preset(args: dict, *, share: bool) -> tuple[dict, dict, dict]:
    d, heads = args["dst_feature_dim_nheads"]
    model = {
        "d_model": d,
        "num_heads": heads,
        "num_layers": args["nlevels"],
        "share_layers": share,
        "kernel_sizes": {
            "text": args["conv1d_kernel_size_l"],
            "audio": args["conv1d_kernel_size_a"],
            "vision": args["conv1d_kernel_size_v"],
        },
        "attn_dropout": args["attn_dropout"],
        "attn_dropout_a": args["attn_dropout_a"],
        "attn_dropout_v": args["attn_dropout_v"],
        "relu_dropout": args["relu_dropout"],
        "embed_dropout": args["embed_dropout"],
        "res_dropout": args["res_dropout"],
        "text_dropout": args["text_dropout"],
        "output_dropout": args["output_dropout"],
        "causal": args["attn_mask"],
        "positional": False,
    }
    data = {"text_kind": "bert" if args["use_bert"] else "features"}
    # MMSA's trainer: Adam(model.parameters(), lr) -- weight_decay is never passed -- ReduceLROnPlateau(
    # mode="min", factor=0.1, patience), clip_grad_value_(grad_clip), accumulation update_epochs, early_stop
    train = {
        "protocol": "mmsa_mult",
        "batch_size": args["batch_size"],
        "learning_rate": args["learning_rate"],
        "weight_decay": 0.0,
        "accumulation_steps": args["update_epochs"],
        "early_stop": args["early_stop"],
        "grad_clip": args["grad_clip"],
        "scheduler": "plateau",
        "plateau_patience": args["patience"],
        "plateau_factor": 0.1,
    }
    return model, data, train


PRESETS = [("mult", ds) for ds in ("mosi", "mosei", "sims", "simsv2")] + [
    ("mult_dagger", ds) for ds in ("mosi", "mosei", "sims", "simsv2")
]


@pytest.mark.parametrize("model_name, dataset", PRESETS)
def test_preset_values_equal_mmsa_config(model_name, dataset):
    dagger = model_name == "mult_dagger"
    model, data, train = expected_preset(mmsa_args(dataset, gsit_repo=dagger), share=dagger)
    run = load_config(model_name, dataset)
    cfg = build_model_config(run, input_dims={"text": 768, "audio": 5, "vision": 20}, output_dim=1)
    got_model = {k: getattr(cfg, k) for k in model}
    assert got_model == model
    assert {k: getattr(run.data, k) for k in data} == data
    assert {k: getattr(run.train, k) for k in train} == train
    first = (Path(__file__).resolve().parents[2] / "configs" / f"{model_name}_{dataset}.toml").read_text()
    assert first.startswith(f"# gsit train --model {model_name} --dataset {dataset}")
    assert ("GsiT repository" if dagger else "MMSA") in first.splitlines()[0]


# --------------------------------------------------------------------------- whole-model parity
def mmsa_model(args: dict, *, share: bool) -> nn.Module:
    torch.manual_seed(0)
    model = mmsa_mult_model.MULT(Args(args))
    if share:  # the GsiT repository's TransformerEncoder: ModuleList([layer] * layers)
        for enc in model.modules():
            if isinstance(enc, mmsa_transformer.TransformerEncoder):
                enc.layers = nn.ModuleList([enc.layers[0]] * len(enc.layers))
    return model


def gsit_key(mmsa_key: str, model: MulT) -> str | None:
    """gsit's state_dict name for one of MMSA's (None: MMSA's unused ``version`` buffers)."""
    by_letter = {v: k for k, v in LETTER.items()}
    parts = mmsa_key.split(".")
    head = parts[0]
    if head in ("proj1", "proj2", "out_layer"):
        return mmsa_key
    if head in ("proj_l", "proj_a", "proj_v"):
        return f"front_end.convs.{by_letter[head[-1]]}.{parts[1]}"
    if parts[-1] == "version":
        return None
    if head.endswith("_mem"):  # trans_l_mem
        enc = f"mem.{by_letter[head[len('trans_')]]}"
    else:  # trans_l_with_a
        q, k = head[len("trans_")], head[-1]
        enc = f"cross.{by_letter[q]}->{by_letter[k]}"
    return f"{enc}.{encoder_key(parts[1:], model.config.share_layers)}"


def encoder_key(rest: list[str], share: bool) -> str:
    """gsit's name inside one encoder for MMSA's ``TransformerEncoder`` name parts ``rest``."""
    if rest[0] == "layer_norm":
        return f"final_norm.{rest[1]}"
    layer = "0" if share else rest[1]
    sub = rest[2:]
    if sub[0] == "self_attn":  # in_proj_weight / in_proj_bias / out_proj.*
        sub = ["attn", *sub[1:]]
    elif sub[0] == "layer_norms":  # 0: before attention (queries and keys/values), 1: before the FFN
        sub = ["attn_norm" if sub[1] == "0" else "ffn_norm", *sub[2:]]
    return ".".join(["layers", layer, *sub])


def copy_weights(src: MulT, dst: nn.Module) -> None:
    """Copy gsit's weights into MMSA's model; every tensor of both is accounted for."""
    ours = src.state_dict()
    theirs = dst.state_dict()
    used = set()
    new = {}
    for key, value in theirs.items():
        name = gsit_key(key, src)
        if name is None:
            new[key] = value
            continue
        assert name in ours, (key, name)
        assert ours[name].shape == value.shape, (key, name)
        new[key] = ours[name].clone()
        used.add(name)
    assert used == set(ours), sorted(set(ours) - used)
    dst.load_state_dict(new)


def gsit_model(model_name: str, dataset: str, overrides=()) -> MulT:
    shapes = DATASETS[dataset].shapes
    run = load_config(model_name, dataset, overrides=list(overrides))
    cfg = build_model_config(
        run, input_dims={m: shapes[m][1] for m in ("text", "audio", "vision")}, output_dim=1
    )
    torch.manual_seed(1)
    model = MulT(cfg)
    with torch.no_grad():  # move LayerNorm and bias parameters off their trivial initial values
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def inputs_for(dataset: str, batch: int = 3) -> dict[str, torch.Tensor]:
    """Real widths; lengths cut to keep the test fast, unequal across modalities (so the causal mask's
    |Tk - Tq| offset matters); zero padding at the end as in the MMSA pickles."""
    shapes = DATASETS[dataset].shapes
    lengths = {
        "text": shapes["text"][0],
        "audio": min(shapes["audio"][0], 47),
        "vision": min(shapes["vision"][0], 29),
    }
    g = torch.Generator().manual_seed(2)
    out = {}
    for m, T in lengths.items():
        x = torch.randn(batch, T, shapes[m][1], generator=g, dtype=torch.float64)
        x[0, T - T // 3 :] = 0.0
        out[m] = x
    return out


def predictions(ours: MulT, theirs: nn.Module, x: dict[str, torch.Tensor]):
    with torch.no_grad():
        a = ours(x)["prediction"]
        b = theirs(x["text"], x["audio"], x["vision"])["M"]
    return a, b


@pytest.mark.parametrize("model_name, dataset", PRESETS)
def test_preset_model_equals_mmsa_mult(model_name, dataset):
    dagger = model_name == "mult_dagger"
    ours = gsit_model(model_name, dataset).double().eval()
    theirs = mmsa_model(mmsa_args(dataset, gsit_repo=dagger), share=dagger).double().eval()
    copy_weights(ours, theirs)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())  # parameters() de-duplicates tied layers
    assert n_ours == n_theirs
    a, b = predictions(ours, theirs, inputs_for(dataset))
    assert a.shape == b.shape == (3, 1)
    assert (a - b).abs().max().item() < TOL, (a, b)


@pytest.mark.parametrize("change", ["model.positional=true", "model.causal=false"])
def test_preset_parity_negative_control(change):
    """The comparison above can fail: positions on (MMSA <= 2.1) or the future mask off give another model."""
    ours = gsit_model("mult", "mosi", [change]).double().eval()
    theirs = mmsa_model(mmsa_args("mosi"), share=False).double().eval()
    copy_weights(ours, theirs)
    a, b = predictions(ours, theirs, inputs_for("mosi"))
    assert (a - b).abs().max().item() > 1e-3


@pytest.mark.filterwarnings("ignore:The number of elements in the out tensor")  # MMSA's make_positions
@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_positional_encoder_equals_mmsa_position_embedding(share, causal, cross):
    """gsit's ``positional=True`` equals MMSA's TransformerEncoder(position_embedding=True) (the fairseq
    sinusoidal table, padding detected on the first feature).  MMSA builds the table in float32, hence
    the 1e-6 tolerance."""
    torch.manual_seed(0)
    D, H, L = 16, 4, 3
    ours = (
        MulTEncoder(
            d_model=D,
            num_heads=H,
            num_layers=L,
            share_layers=share,
            attn_dropout=0.0,
            relu_dropout=0.0,
            res_dropout=0.0,
            embed_dropout=0.0,
            causal=causal,
            positional=True,
            ffn_activation="relu",
        )
        .double()
        .eval()
    )
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.1 * torch.randn_like(p))
    theirs = mmsa_transformer.TransformerEncoder(D, H, L, attn_mask=causal, position_embedding=True).double()
    if share:
        theirs.layers = nn.ModuleList([theirs.layers[0]] * L)
    mine = ours.state_dict()
    buffers = ("version", "embed_positions._float_tensor")  # MMSA's buffers without a gsit counterpart
    sd = {
        key: value if key in buffers else mine[encoder_key(key.split("."), share)].clone()
        for key, value in theirs.state_dict().items()
    }
    theirs.load_state_dict(sd)
    theirs.eval()
    x = torch.randn(2, 7, D, dtype=torch.float64)
    src = torch.randn(2, 10, D, dtype=torch.float64)
    x[1, 5:] = 0.0  # padded frames get no position
    src[0, 8:] = 0.0
    with torch.no_grad():
        a = ours(x, src) if cross else ours(x)
        xt, st = x.transpose(0, 1), src.transpose(0, 1)  # MMSA's (T, B, D)
        b = (theirs(xt, st, st) if cross else theirs(xt)).transpose(0, 1)
    assert (a - b).abs().max().item() < TOL


# --------------------------------------------------------------------------- the training protocol
PROTOCOL_EPOCHS = 4
# MMSA takes the attention softmax in float32 even for float64 inputs (multihead_attention.py: ``F.softmax(
# attn_weights.float(), dim=-1).type_as(attn_weights)``), so its gradients carry ~1e-8 relative noise.  Adam
# divides each gradient by its own running magnitude, which turns that noise into visible steps where a
# gradient is nearly zero.  Measured after four epochs: 1.2e-8 (no dropout) and 1.3e-6 (dropout) on the
# parameters; one step of lr 2e-3 moves a parameter by up to 2e-3, so a protocol difference (a step more or
# less, another clip or window) shows as ~1e-3.  The key rows of ``in_proj_bias`` are compared separately:
# the softmax cancels a key bias, so its true gradient is exactly zero and only float noise moves it.
TRAJECTORY_TOL = 1e-5


class StopAfter(Exception):
    pass


class FakeLoader:
    """What MMSA's trainer iterates (``for batch_data in dataloader``, ``len(dataloader)``): the batches of a
    gsit split in the order gsit's ``epoch_batches`` gives for epoch 1, 2, ... (train) or row order (eval),
    as MMSA's data loader delivers them (float64 features, ``labels['M']`` of shape (B,)).  ``epochs``: raise
    :class:`StopAfter` when epoch ``epochs + 1`` would start, i.e. after epoch ``epochs``' validation and
    scheduler step -- where ``train_seed(stop_after_epoch=epochs)`` stops."""

    def __init__(self, split, batches_for_epoch, epochs: int | None = None) -> None:
        self.split, self.batches_for_epoch, self.epochs, self.epoch = split, batches_for_epoch, epochs, 0

    def __len__(self) -> int:
        return len(self.batches_for_epoch(max(self.epoch, 1)))

    def __iter__(self):
        self.epoch += 1
        if self.epochs is not None and self.epoch > self.epochs:
            raise StopAfter
        s = self.split
        for idx in self.batches_for_epoch(self.epoch):
            yield {
                "text": torch.from_numpy(s.text[idx]),
                "audio": torch.from_numpy(s.audio[idx]),
                "vision": torch.from_numpy(s.vision[idx]),
                "labels": {"M": torch.from_numpy(s.labels[idx].astype(np.float64))},
            }


def protocol_data(n_train: int, batch_size: int):
    """A small MOSI-like dataset in float64 (labels float32-exact, so gsit's float32 loss sees the same
    values); lengths chosen so every modality has its own T."""
    from gsit.data.dataset import MultimodalData, Split, validate

    rng = np.random.default_rng(0)
    dims = {"text": 12, "audio": 5, "vision": 7}
    lengths = {"text": 9, "audio": 13, "vision": 11}

    def split(name, n):
        arrays = {m: rng.standard_normal((n, lengths[m], dims[m])) for m in dims}
        labels = np.clip(arrays["text"][:, 0, 0] + 0.5 * arrays["audio"][:, 1, 0], -3, 3)
        if name == "valid":  # unrelated to the inputs: the validation loss stalls, the plateau schedule acts
            labels = np.clip(rng.standard_normal(n), -3, 3)
        return Split(
            name=name,
            text=arrays["text"],
            audio=arrays["audio"],
            vision=arrays["vision"],
            labels=labels.astype(np.float32),
            ids=np.array([f"{name}{i}" for i in range(n)]),
        )

    splits = {
        "train": split("train", n_train),
        "valid": split("valid", 2 * batch_size + 5),
        "test": split("test", batch_size),
    }
    data = MultimodalData(splits=splits, source="protocol-test", task="regression")
    return validate(data, dataset="mosi")


@pytest.mark.parametrize("dropout", [False, True])
def test_mmsa_mult_protocol_equals_mmsa_trainer(tmp_path, monkeypatch, dropout):
    """Four epochs of gsit's ``mmsa_mult`` protocol (``train_seed``) and of MMSA's ``MULT.do_train``
    (MMSA/trains/singleTask/MULT.py, run as shipped) from the same weights, batches and dropout stream.

    The preset's trainer values (mosi: lr 2e-3, clip 0.6, update_epochs 8, factor 0.1, dropouts) with two
    changes that make four epochs informative: plateau patience 0 (so an epoch without improvement cuts the
    learning rate) and a small model (d=8).  21 batches per epoch: two steps, and a partial window of 5
    batches whose gradients are discarded.  One shim: torch >= 2.7 removed ``ReduceLROnPlateau``'s
    ``verbose`` argument, which MMSA passes (line 22); the shim drops it and builds the same scheduler."""
    from gsit.build import build_model as gsit_build_model
    from gsit.checkpoint import load_tensors
    from gsit.data.batch import epoch_batches
    from gsit.distributed import Dist
    from gsit.train import Progress, set_seed, train_seed

    epochs, seed = PROTOCOL_EPOCHS, 1111
    overrides = [
        "model.d_model=8",
        "model.num_heads=2",
        "model.num_layers=2",
        "train.plateau_patience=0",
        f"train.seeds=[{seed}]",
        "model.kernel_sizes={text=3, audio=5, vision=1}",
    ]
    # embedding, residual and FFN dropout masks are drawn over MMSA's (T, B, D) tensors and gsit's (B, T, D)
    # ones: the same distribution, but not the same draws, so those are off in both; the text, attention
    # ((B*H, Tq, Tk) vs (B, H, Tq, Tk): one memory order) and output dropouts keep the preset's values
    off = ("embed_dropout", "res_dropout", "relu_dropout")
    if not dropout:
        off += ("attn_dropout", "attn_dropout_a", "attn_dropout_v", "text_dropout", "output_dropout")
    no_dropout = {k: 0.0 for k in off}
    overrides += [f"model.{k}=0.0" for k in no_dropout]
    run = load_config("mult", "mosi", overrides=overrides)
    t = run.train
    data = protocol_data(20 * t.batch_size + 3, t.batch_size)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        # MMSA's model first (its construction draws random numbers), then gsit's initial model exactly as
        # train_seed builds it (set_seed, then build_model): the RNG stream then continues identically
        args = mmsa_args("mosi")
        args.update(
            dst_feature_dim_nheads=[8, 2],
            nlevels=2,
            feature_dims=[12, 5, 7],
            conv1d_kernel_size_l=3,
            conv1d_kernel_size_a=5,
            conv1d_kernel_size_v=1,
            patience=0,
            KeyEval="Loss",
            device=torch.device("cpu"),
            model_name="mult",
            cur_seed=seed,
            model_save_path=str(tmp_path / "mmsa_best.pth"),
        )
        args.update(no_dropout)
        theirs = mmsa_mult_model.MULT(Args(args))
        set_seed(seed)
        initial = gsit_build_model(run, data)
        copy_weights(initial, theirs)
        optimizers = []

        def plateau(opt, verbose=None, **kw):
            optimizers.append(opt)
            return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)

        monkeypatch.setattr(mmsa_mult_trainer, "ReduceLROnPlateau", plateau)
        trainer = mmsa_mult_trainer.MULT(Args(args))
        loaders = {
            "train": FakeLoader(
                data.splits["train"],
                lambda e: epoch_batches(
                    len(data.splits["train"]), t.batch_size, shuffle=True, seed=seed, epoch=e
                ),
                epochs,
            ),
            "valid": FakeLoader(
                data.splits["valid"],
                lambda e: [
                    np.arange(len(data.splits["valid"]))[i : i + t.batch_size]
                    for i in range(0, len(data.splits["valid"]), t.batch_size)
                ],
            ),
        }
        with pytest.raises(StopAfter):
            trainer.do_train(theirs, loaders)

        set_seed(seed)  # train_seed seeds itself; this only makes the test independent of the above
        with pytest.raises(KeyboardInterrupt):
            train_seed(
                run,
                data,
                seed=seed,
                seed_dir=tmp_path / "gsit",
                ctx=Dist(),
                resume=False,
                progress=Progress(True, Dist()),
                dataset="mosi",
                stop_after_epoch=epochs,
            )
    finally:
        torch.set_default_dtype(default_dtype)
    trained = {
        k[len("model.") :]: v
        for k, v in load_tensors(tmp_path / "gsit" / "last.safetensors").items()
        if k.startswith("model.")
    }
    moved, diffs, key_bias = 0.0, {}, {}
    for key, value in theirs.state_dict().items():
        name = gsit_key(key, initial)
        if name is None:
            continue
        assert trained[name].dtype == torch.float64
        diff = (trained[name] - value).abs()
        if key.endswith("in_proj_bias"):  # rows D:2D: the key bias, which the softmax cancels (see above)
            D = diff.shape[0] // 3
            key_bias[key] = diff[D : 2 * D].max().item()
            diff[D : 2 * D] = 0.0
        diffs[key] = diff.max().item()
        moved = max(moved, (trained[name] - initial.state_dict()[name]).abs().max().item())
    assert max(diffs.values()) < TRAJECTORY_TOL, sorted(diffs.items(), key=lambda kv: -kv[1])[:3]
    assert max(key_bias.values()) < 2 * epochs * t.learning_rate  # moved by Adam on float32 noise only
    assert moved > 1e-3  # the parameters did move
    meta = json.loads((tmp_path / "gsit" / "last.json").read_text())
    lrs = [g["lr"] for g in meta["optimizer"]["param_groups"]]
    assert lrs == [g["lr"] for g in optimizers[0].param_groups]
    assert lrs[0] < t.learning_rate  # the plateau schedule cut the learning rate at least once
