"""Overrides anywhere on the command line and ``gsit train --print-config`` (issue 14, item 1)."""

from __future__ import annotations

import json

import pytest

from gsit import cli
from gsit.config import load_config


def run_cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_overrides_anywhere_and_print_config_json(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(
        capsys,
        "train",
        "model.d_model=8",
        "--seeds",
        "1111",
        "train.max_epochs=1",
        "--out",
        str(tmp_path / "runs"),
        "data.binary=false",
        "--print-config",
        "--print-format",
        "json",
        "model.d_model=12",
    )
    assert rc == 0, err
    cfg = json.loads(out)
    assert cfg["model"]["d_model"] == 12  # the later override of a key wins
    assert cfg["train"]["seeds"] == [1111] and cfg["train"]["max_epochs"] == 1
    assert cfg["model"]["num_heads"] == load_config("gsit", "synthetic").model.get("num_heads", 4)
    assert "input_dims" not in cfg["model"]  # read from the data, never configured
    assert list(tmp_path.iterdir()) == []  # nothing created


def test_print_config_reads_no_data(tmp_path, capsys):
    missing = tmp_path / "no-such-data.pkl"
    rc, out, err = run_cli(capsys, "train", "--dataset", "mosi", "--data", str(missing), "--print-config")
    assert rc == 0, err
    assert f'path = "{missing}"' in out
    assert not missing.exists()


@pytest.mark.parametrize("model", ["gsit", "mult", "vanilla"])
def test_printed_toml_is_a_config_file_giving_the_same_run(tmp_path, capsys, model):
    overrides = [
        "model.d_model=40",
        "train.seeds=[3, 4]",
        "train.learning_rate_other=0.00123",
        'data.zero_modalities=["audio"]',
    ]
    rc, out, err = run_cli(
        capsys, "train", "--model", model, "--dataset", "mosi", "--print-config", *overrides
    )
    assert rc == 0, err
    path = tmp_path / "resolved.toml"
    path.write_text(out)
    expected = load_config(model, "mosi", None, overrides)
    again = load_config(model, "mosi", path)
    assert again.train == expected.train and again.data == expected.data
    from gsit.config import build_model_config

    dims = {"text": 768, "audio": 5, "vision": 20}
    assert build_model_config(again, input_dims=dims, output_dim=1) == build_model_config(
        expected, input_dims=dims, output_dim=1
    )


def test_unknown_tokens_are_still_errors(capsys):
    rc = None
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "model.d_model=8", "--no-such-flag", "train.max_epochs=1"])
    rc = e.value.code
    err = capsys.readouterr().err
    assert rc == 2 and "--no-such-flag" in err and "max_epochs" not in err
    with pytest.raises(SystemExit):  # eval takes no overrides
        cli.main(["eval", "some_run", "model.d_model=8"])
    assert "model.d_model=8" in capsys.readouterr().err
