"""``gsit tune``: search-space parsing, the sealed test split, and an end-to-end study on a tiny synthetic
task whose test split is instrumented to prove it is read only after the final phase starts."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from gsit.analysis.tune import SealedSplit, parse_space, search_view, toml_value, tune  # noqa: E402
from gsit.data.synthetic import make_synthetic  # noqa: E402
from gsit.errors import ConfigError, GsitError  # noqa: E402

TINY = {
    "n_train": 120,
    "n_valid": 40,
    "n_test": 40,
    "text_len": 10,
    "audio_len": 12,
    "vision_len": 12,
    "seed": 0,
}


class RecordingSplit:
    """Wraps a Split; records every attribute read and len() with the phase current at that moment."""

    def __init__(self, split, state: dict) -> None:
        self.__dict__["_split"] = split
        self.__dict__["_state"] = state

    def __getattr__(self, attr):
        self._state["reads"].append((self._state["phase"], attr))
        return getattr(self._split, attr)

    def __len__(self):
        self._state["reads"].append((self._state["phase"], "__len__"))
        return len(self._split)


def test_parse_space_nested_toml_and_errors(tmp_path):
    p = tmp_path / "space.toml"
    p.write_text(
        '[model.d_model]\ntype = "categorical"\nchoices = [16, 32]\n\n'
        '[train.learning_rate_other]\ntype = "float"\nlow = 1e-4\nhigh = 1e-2\nlog = true\n'
    )
    from gsit.analysis.tune import load_space

    space = load_space(p)
    assert space == {
        "model.d_model": {"type": "categorical", "choices": [16, 32]},
        "train.learning_rate_other": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    }
    for bad, msg in (
        ({"model": {"d_model": {"type": "gauss"}}}, "type"),
        ({"model": {"d_model": {"type": "int", "low": 5, "high": 2}}}, "low < high"),
        ({"model": {"d_model": {"type": "categorical", "choices": []}}}, "non-empty"),
        (
            {"train": {"learning_rate_other": {"type": "float", "low": 0, "high": 1, "log": True}}},
            "log scale",
        ),
        ({"model": {"d_model": {"type": "int", "low": 1, "high": 2, "bogus": 1}}}, "unknown keys"),
    ):
        with pytest.raises(ConfigError, match=msg):
            parse_space(bad)
    assert (
        toml_value("self_only") == '"self_only"'
        and toml_value(True) == "true"
        and toml_value(1e-05) == "1e-05"
    )


def test_sealed_split_refuses_every_use():
    data = make_synthetic(**TINY)
    view = search_view(data)
    assert view.splits["train"] is data.splits["train"] and isinstance(view.splits["test"], SealedSplit)
    assert isinstance(data.splits["test"], type(data.splits["train"]))  # the original is untouched
    with pytest.raises(GsitError, match="sealed"):
        _ = view.splits["test"].labels
    with pytest.raises(GsitError, match="sealed"):
        len(view.splits["test"])


def test_tune_never_reads_test_before_final_phase(tmp_path):
    data = make_synthetic(**TINY)
    state = {"phase": "setup", "reads": [], "phases": []}
    data.splits["test"] = RecordingSplit(data.splits["test"], state)

    def on_phase(name: str) -> None:
        state["phase"] = name
        state["phases"].append(name)

    space = {
        "model.d_model": {"type": "categorical", "choices": [8, 16]},
        "train.learning_rate_other": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True},
    }
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    res = tune(
        "synthetic",
        trials=4,
        space=space,
        storage=storage,
        study_name="tiny",
        out=tmp_path / "tune",
        overrides=("model.num_heads=2", "train.max_epochs=2"),
        final_seeds=(1, 2),
        trial_max_epochs=3,
        device="cpu",
        data=data,
        on_phase=on_phase,
    )
    assert state["phases"] == ["search", "final"]
    assert [r for r in state["reads"] if r[0] != "final"] == []  # nothing before the final phase
    assert any(attr == "labels" for _, attr in state["reads"])  # ... and the final run did score it
    out = Path(res["out"])
    summary = json.loads((out / "tune.json").read_text())
    assert summary["n_trials"] == 4 and summary["final_seeds"] == [1, 2]
    assert set(summary["best_params"]) == set(space)
    final = json.loads((out / "final" / "results.json").read_text())
    assert final["n_seeds"] == 2 and final["seeds"] == [1, 2]
    with open(out / "trials.csv", newline="") as fh:
        trials = list(csv.DictReader(fh))
    assert len(trials) == 4 and {"model.d_model", "train.learning_rate_other"} <= set(trials[0])
    best = min(float(t["valid_loss"]) for t in trials if t["state"] == "COMPLETE")
    assert summary["best_valid_loss"] == pytest.approx(best)
    # the study lives in the storage and is continued, not replaced
    study = optuna.load_study(study_name="tiny", storage=storage)
    assert len(study.trials) == 4


def test_tune_rejects_unknown_config_key_before_training(tmp_path):
    with pytest.raises(ConfigError, match="unknown keys"):
        tune(
            "synthetic",
            trials=1,
            space={"model.nope": {"type": "int", "low": 1, "high": 2}},
            out=tmp_path / "t",
            data=make_synthetic(**TINY),
        )
    assert not (tmp_path / "t").exists()
