"""The Python API (gsit.run / load_run / predict / export / from_pretrained) and save_pretrained /
from_pretrained of every model (issue 14, items 3 and 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import gsit
from gsit import cli
from gsit.data import make_synthetic, save_converted
from gsit.errors import GsitError

TINY = {"model.d_model": 16, "model.num_layers": 1, "train.max_epochs": 2, "train.batch_size": 16}


def tiny_data():
    return make_synthetic(n_train=48, n_valid=24, n_test=24, text_len=10, audio_len=12, vision_len=12, seed=1)


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("api_run")
    data_dir = save_converted(tiny_data(), root / "data")
    res = gsit.run(
        model="gsit", dataset="synthetic", data=data_dir, seeds=[7, 8], overrides=TINY, run_dir=root / "run"
    )
    return res, data_dir


def test_public_names():
    from gsit import GsiT, GsiTConfig, MulT, MulTConfig, Vanilla, from_pretrained, load_run, predict, run

    assert GsiT.config_class is GsiTConfig and MulT.config_class is MulTConfig
    assert Vanilla.config_class is GsiTConfig
    assert callable(run) and callable(load_run) and callable(predict) and callable(from_pretrained)
    with pytest.raises(AttributeError):
        gsit.NoSuchName  # noqa: B018


def test_train_returns_results_and_records_the_cli_command(api_run):
    res, data_dir = api_run
    assert res["seeds"] == [7, 8] and set(res["mean"]) >= {"Has0_acc_2", "MAE", "Corr"}
    run_dir = res["run_dir"]
    on_disk = json.loads((gsit.api.Path(run_dir) / "results.json").read_text())
    assert on_disk["mean"] == res["mean"]
    command = (gsit.api.Path(run_dir) / "command.txt").read_text()
    assert command.startswith("gsit train --model gsit --dataset synthetic --data ")
    assert "--seeds 7,8" in command and "model.d_model=16" in command
    with pytest.raises(GsitError, match="already exists"):
        gsit.run(data=data_dir, dataset="synthetic", seeds=[1], overrides=TINY, run_dir=run_dir)


def test_load_run_and_predict_match_the_run(api_run):
    res, data_dir = api_run
    model, config = gsit.load_run(res["run_dir"], seed=8)
    assert config.model["d_model"] == 16 and not model.training
    preds = gsit.predict(res["run_dir"], data=data_dir, seed=8)
    labels = tiny_data().splits["test"].labels
    assert preds.shape == (24,) and preds.dtype == np.float32
    seed8 = next(r for r in res["per_seed"] if r["seed"] == 8)
    assert round(float(np.mean(np.abs(preds - labels))), 4) == pytest.approx(seed8["test"]["MAE"], abs=1e-4)
    # the same rows as arrays give the same predictions
    split = tiny_data().splits["test"]
    arrays = {"text": split.text, "audio": split.audio, "vision": split.vision}
    np.testing.assert_allclose(gsit.predict(model, data=arrays), preds, rtol=0, atol=1e-6)
    with pytest.raises(GsitError, match=r"arrays\['audio'\]: feature width"):
        gsit.predict(model, data={**arrays, "audio": split.audio[:, :, :1]})
    with pytest.raises(GsitError, match="missing modality 'vision'"):
        gsit.predict(model, data={"text": split.text, "audio": split.audio})
    with pytest.raises(GsitError, match="has 23 rows"):
        gsit.predict(model, data={**arrays, "vision": split.vision[:23]})


def _inputs(cfg, n=5, t=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {m: torch.randn(n, t, cfg.input_dims[m], generator=g) for m in cfg.modalities}


@pytest.mark.parametrize("name", ["GsiT", "Vanilla", "MulT"])
def test_save_pretrained_round_trip(tmp_path, name):
    cls = getattr(gsit, name)
    cfg_cls = cls.config_class
    kw = {
        "d_model": 20,
        "num_heads": 2,
        "num_layers": 1,
        "input_dims": {"text": 6, "audio": 3, "vision": 4},
        "kernel_sizes": {"text": 1, "audio": 3, "vision": 1},
        "output_dim": 3,
    }
    cfg = cfg_cls(**kw)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    x = _inputs(cfg)
    with torch.no_grad():
        before = model(x)["prediction"]
    folder = model.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    loaded = cls.from_pretrained(folder)
    assert loaded.config == cfg and isinstance(loaded.config.modalities, tuple)
    with torch.no_grad():
        assert torch.equal(loaded(x)["prediction"], before)
    assert type(gsit.from_pretrained(folder)) is cls
    with pytest.raises(GsitError, match="never overwrites"):
        model.save_pretrained(folder)
    other = "MulT" if name != "MulT" else "GsiT"
    with pytest.raises(GsitError, match=f"holds a {name} model"):
        getattr(gsit, other).from_pretrained(folder)


def test_save_pretrained_with_a_bert_text_encoder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from gsit.models.text import BertTextEncoder

    bert_cfg = transformers.BertConfig(
        vocab_size=50,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    enc = BertTextEncoder.from_config(bert_cfg)
    cfg = gsit.GsiTConfig(
        d_model=8,
        num_heads=2,
        num_layers=1,
        input_dims={"text": 8, "audio": 3, "vision": 4},
        kernel_sizes={"text": 1, "audio": 1, "vision": 1},
    )
    model = gsit.GsiT(cfg, text_encoder=enc).eval()
    ids = torch.randint(1, 50, (4, 1, 7))
    x = {
        "text": torch.cat([ids.float(), torch.ones(4, 1, 7), torch.zeros(4, 1, 7)], dim=1),
        "audio": torch.randn(4, 6, 3),
        "vision": torch.randn(4, 6, 4),
    }
    with torch.no_grad():
        before = model(x)["prediction"]
    loaded = gsit.GsiT.from_pretrained(model.save_pretrained(tmp_path / "m"))
    with torch.no_grad():
        assert torch.equal(loaded(x)["prediction"], before)


def test_export_writes_a_loadable_folder_and_a_model_card(api_run, tmp_path, capsys):
    res, data_dir = api_run
    out = tmp_path / "exported"
    rc = cli.main(["export", res["run_dir"], "--seed", "8", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    card = (out / "README.md").read_text()
    assert "# GsiT on synthetic" in card and "seed 8" in card and "[7, 8]" in card
    assert "gsit train --model gsit" in card and "torch:" in card and "split sizes" in card
    mae = res["mean"]["MAE"]
    assert f"{mae:.3f}" in card  # --percent convention: MAE with 3 decimals
    model = gsit.from_pretrained(out)
    run_model, _ = gsit.load_run(res["run_dir"], seed=8)
    split = tiny_data().splits["test"]
    arrays = {"text": split.text, "audio": split.audio, "vision": split.vision}
    np.testing.assert_array_equal(gsit.predict(model, arrays), gsit.predict(run_model, arrays))
    before = sorted(p.name for p in out.iterdir())
    rc = cli.main(["export", res["run_dir"], "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_run_with_a_local_text_encoder_loads_predicts_and_exports(tmp_path, capsys):
    """text_bert data + --text-encoder: load_run rebuilds the encoder without reading the data, and the
    exported folder (which carries the fine-tuned encoder) predicts as the run does."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    bert_dir = tmp_path / "tiny-bert"
    transformers.BertModel(
        transformers.BertConfig(
            vocab_size=2100,
            hidden_size=16,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=16,
        )
    ).save_pretrained(bert_dir)
    data = make_synthetic(
        n_train=24, n_valid=8, n_test=8, text_len=8, audio_len=6, vision_len=6, seed=5, text_kind="bert"
    )
    data_dir = save_converted(data, tmp_path / "data")
    res = gsit.run(
        dataset="synthetic",
        data=data_dir,
        text_encoder=bert_dir,
        seeds=[1],
        overrides={**TINY, "train.max_epochs": 1},
        run_dir=tmp_path / "run",
    )
    model, _ = gsit.load_run(res["run_dir"])
    assert model.text_encoder is not None
    preds = gsit.predict(res["run_dir"], data=data_dir)
    labels = data.splits["test"].labels
    assert round(float(np.mean(np.abs(preds - labels))), 4) == pytest.approx(res["mean"]["MAE"], abs=1e-4)
    out = gsit.export(res["run_dir"], tmp_path / "exported")
    loaded = gsit.from_pretrained(out)
    split = data.splits["test"]
    arrays = {"text": split.text_bert, "audio": split.audio, "vision": split.vision}
    np.testing.assert_array_equal(gsit.predict(loaded, arrays), preds)
