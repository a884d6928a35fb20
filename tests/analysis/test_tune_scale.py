"""``gsit tune`` at scale (issue 14, item 7): workers sharing a storage join one study by default, the search
space never silently replaces command-line keys, Optuna does not repeat gsit's trial lines."""

from __future__ import annotations

import pytest

optuna = pytest.importorskip("optuna")

from gsit.analysis.tune import tune, without_fixed_keys  # noqa: E402
from gsit.config import parse_override  # noqa: E402
from gsit.data.synthetic import make_synthetic  # noqa: E402
from gsit.errors import ConfigError  # noqa: E402

TINY = {"n_train": 48, "n_valid": 16, "n_test": 16, "text_len": 6, "audio_len": 7, "vision_len": 7, "seed": 0}
SPACE = {
    "model.d_model": {"type": "categorical", "choices": [8, 16]},
    "train.learning_rate_other": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True},
}
FIXED = ("model.num_heads=2", "model.num_layers=1", "train.max_epochs=1", "train.batch_size=16")


def test_command_line_keys_are_not_searched():
    said = []
    kept = without_fixed_keys(
        SPACE, ["model.d_model=32", "train.seeds=[1]"], explicit=False, parse=parse_override, say=said.append
    )
    assert list(kept) == ["train.learning_rate_other"] and "model.d_model" in said[0]
    with pytest.raises(ConfigError, match=r"\['model.d_model'\] are also set on the command line"):
        without_fixed_keys(SPACE, ["model.d_model=32"], explicit=True, parse=parse_override)
    with pytest.raises(ConfigError, match="nothing is left to search"):
        without_fixed_keys(
            SPACE, ["model.d_model=32", "train.learning_rate_other=0.1"], explicit=False, parse=parse_override
        )
    assert without_fixed_keys(SPACE, FIXED, explicit=True, parse=parse_override) == SPACE


def test_explicit_space_clash_fails_before_training(tmp_path):
    with pytest.raises(ConfigError, match="model.d_model"):
        tune(
            "synthetic",
            trials=1,
            space=SPACE,
            out=tmp_path / "t",
            overrides=(*FIXED, "model.d_model=8"),
            data=make_synthetic(**TINY),
            device="cpu",
        )
    assert not (tmp_path / "t").exists()


def test_workers_sharing_a_storage_join_one_default_study(tmp_path, capfd):
    data = make_synthetic(**TINY)
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    common = dict(space=SPACE, storage=storage, overrides=FIXED, device="cpu", data=data, trial_max_epochs=1)
    first = tune("synthetic", trials=1, out=tmp_path / "w1", final=False, quiet=False, **common)
    err = capfd.readouterr().err
    assert first["study_name"] == "gsit-gsit-synthetic" and first["final_run_dir"] is None
    assert err.count("trial 0: valid loss") == 1 and "Trial 0 finished" not in err  # one line per trial
    assert "[I " not in err
    second = tune("synthetic", trials=1, out=tmp_path / "w2", final=False, sampler_seed=1, **common)
    assert second["study_name"] == first["study_name"] and second["n_trials"] == 2
    assert len(optuna.load_study(study_name="gsit-gsit-synthetic", storage=storage).trials) == 2
    final = tune("synthetic", trials=0, out=tmp_path / "final", final_seeds=(1,), **common)
    assert final["n_trials"] == 2 and final["final_run_dir"] and final["final_test_mean"]["MAE"] >= 0
    with pytest.raises(Exception, match="0 only with --storage"):
        tune("synthetic", trials=0, space=SPACE, data=data, out=tmp_path / "x")
