"""``data.text_kind``: frozen text features or token ids + a text encoder, chosen per run; and the baselines'
defaults (MulT and MulT-dagger read the frozen features of an MMSA pickle, as MMSA's ``use_bert: false``;
GsiT fine-tunes a text encoder on the token ids, as the official code)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from gsit import cli
from gsit.config import DataConfig, load_config
from gsit.data import load_run_data, make_synthetic, write_mmsa_pickle
from gsit.errors import ConfigError, DataError

QUICK = [
    "--seeds",
    "1",
    "model.d_model=8",
    "model.num_heads=2",
    "model.num_layers=1",
    "train.max_epochs=1",
    "train.batch_size=32",
    "train.update_epochs=1",
]


def small(**kw):
    return make_synthetic(
        n_train=48, n_valid=16, n_test=16, text_len=10, audio_len=12, vision_len=11, seed=0, **kw
    )


@pytest.fixture(scope="module")
def pickles(tmp_path_factory):
    """MMSA pickles: features only (what ``gsit synth`` writes), token ids only, and both (a real MMSA
    pickle carries ``text`` and ``text_bert``)."""
    root = tmp_path_factory.mktemp("text_kind")
    features = small()
    bert = small(text_kind="bert")
    both = small()
    for name, s in both.splits.items():
        s.text_bert = bert.splits[name].text_bert
        s.text_lengths = None
    paths = {"features": root / "features.pkl", "bert": root / "bert.pkl", "both": root / "both.pkl"}
    for key, data in (("features", features), ("bert", bert), ("both", both)):
        write_mmsa_pickle(data, paths[key])
    return paths


def data_cfg(path, kind, dataset="mosi"):
    return DataConfig(dataset=dataset, path=str(path), text_kind=kind)


def test_text_kind_features_keeps_the_frozen_features(pickles):
    data = load_run_data(data_cfg(pickles["both"], "features"))
    assert data.text_kind == "features" and data.text_dim == 32
    assert all(s.text_bert is None and s.text is not None for s in data.splits.values())


def test_text_kind_bert_keeps_the_token_ids(pickles):
    data = load_run_data(data_cfg(pickles["both"], "bert"))
    assert data.text_kind == "bert"
    assert all(s.text is None and s.text_bert is not None for s in data.splits.values())


def test_text_kind_auto_prefers_token_ids(pickles):
    assert load_run_data(data_cfg(pickles["both"], "auto")).text_kind == "bert"
    assert load_run_data(data_cfg(pickles["features"], "auto")).text_kind == "features"


def test_text_kind_features_absent_is_a_clear_error(pickles):
    with pytest.raises(
        DataError,
        match=r"text_kind=\"features\" needs the key 'text'.*split 'train'.*"
        r"'text_bert'.*text_kind=\"bert\".*--text-encoder",
    ):
        load_run_data(data_cfg(pickles["bert"], "features"))


def test_text_kind_bert_absent_is_a_clear_error(pickles):
    with pytest.raises(
        DataError,
        match=r"features.pkl.*text_kind=\"bert\" needs the key 'text_bert'.*"
        r"the file has 'text'.*text_kind=\"features\"",
    ):
        load_run_data(data_cfg(pickles["features"], "bert"))


def test_text_kind_config_errors():
    with pytest.raises(ConfigError, match=r"data.text_kind='ids'.*allowed"):
        load_config("mult", "mosi", overrides=['data.text_kind="ids"'])
    with pytest.raises(ConfigError, match=r"text encoder '/enc' would not be used.*text_kind=\\?\"bert\\?\""):
        load_config("mult", "mosi", overrides=['data.text_encoder="/enc"'])


@pytest.mark.parametrize(
    "model, kind", [("mult", "features"), ("mult_dagger", "features"), ("gsit", "bert"), ("vanilla", "bert")]
)
@pytest.mark.parametrize("dataset", ["mosi", "mosei", "sims", "simsv2"])
def test_presets_choose_the_text_input_of_the_original_code(model, kind, dataset):
    assert load_config(model, dataset).data.text_kind == kind


@pytest.mark.parametrize("model", ["mult", "mult_dagger"])
def test_baseline_trains_on_frozen_features_of_an_mmsa_pickle(model, pickles, tmp_path, capsys):
    """The MulT presets on an MMSA pickle holding both text inputs: no text encoder, frozen features."""
    run_dir = tmp_path / "run"
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--model",
            model,
            "--dataset",
            "mosi",
            "--data",
            str(pickles["both"]),
            "--run-dir",
            str(run_dir),
            *QUICK,
        ]
    )
    assert rc == 0, capsys.readouterr().err
    facts = json.loads((run_dir / "data.json").read_text())
    assert facts["text_kind"] == "features" and facts["dims"]["text"] == 32
    config = json.loads((run_dir / "config.json").read_text())
    assert config["model_name"] == model and config["data"]["text_kind"] == "features"
    assert config["model"]["share_layers"] is (model == "mult_dagger")
    results = json.loads((run_dir / "results.json").read_text())
    assert np.isfinite(results["mean"]["MAE"])


def test_gsit_on_features_only_pickle_asks_for_token_ids(pickles, tmp_path, capsys):
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--model",
            "gsit",
            "--dataset",
            "mosi",
            "--data",
            str(pickles["features"]),
            "--run-dir",
            str(tmp_path / "run"),
            *QUICK,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "text_kind=\"bert\" needs the key 'text_bert'" in err
    assert not (tmp_path / "run").exists()


def test_ablation_mult_variant_reads_frozen_features_without_the_text_encoder(pickles, tmp_path):
    """``gsit ablate --text-encoder DIR`` gives the encoder to the GsiT variants; the MulT variant follows its
    preset (frozen features) and records the override as skipped."""
    from gsit.analysis.ablate import run_ablation

    out = run_ablation(
        "mosi",
        data_path=str(pickles["both"]),
        out=tmp_path / "abl",
        seeds=(1,),
        variants=("mult",),
        text_encoder=str(tmp_path / "no-such-encoder"),
        overrides=tuple(QUICK[2:]),
    )
    row = out["rows"][0]
    assert row["model"] == "mult"
    assert any(o.startswith("data.text_encoder=") for o in row["skipped_overrides"])
    facts = json.loads((tmp_path / "abl" / "mult" / "data.json").read_text())
    assert facts["text_kind"] == "features"
