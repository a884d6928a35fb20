"""The ``gsit`` command line: version, profile (SPEC §12 numbers), metrics, synth -> convert -> train,
eval reproducing a run's test metrics, predict, and the real console script's exit codes."""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import gsit
from gsit import cli
from gsit.data import make_synthetic, save_converted

TINY_CLI = ["model.d_model=16", "model.num_layers=1", "train.max_epochs=3", "train.batch_size=16"]


def tiny_data():
    return make_synthetic(n_train=64, n_valid=32, n_test=32, text_len=12, audio_len=14, vision_len=14, seed=0)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def subprocess_env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 1-seed run on a tiny converted dataset: (run_dir, data_dir)."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("cli_run")
    data_dir = save_converted(tiny_data(), root / "data")
    run_dir = root / "run"
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--data",
            str(data_dir),
            "--dataset",
            "synthetic",
            "--run-dir",
            str(run_dir),
            "--seeds",
            "5",
            *TINY_CLI,
        ]
    )
    assert rc == 0
    return run_dir, Path(data_dir)


def test_version(capsys):
    rc, out, _ = run_cli(capsys, "--version")
    assert rc == 0 and out.strip() == gsit.__version__


def test_no_command_prints_help_and_exits_2(capsys):
    rc, out, _ = run_cli(capsys)
    assert rc == 2 and "train" in out


def test_profile_gsit_mosi_json(capsys):
    rc, out, _ = run_cli(capsys, "profile", "--model", "gsit", "--dataset", "mosi", "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["model"] == "gsit" and r["dataset"] == "mosi"
    assert r["params"]["paper_convention"] == 1_694_848
    assert r["params"]["fusion"] == 1_187_328
    assert r["params"]["front_end"] == 507_520 and r["params"]["head"] == 98_561
    assert r["flops_per_sample"]["total"] == pytest.approx(11.17e9, rel=0.01)


def test_profile_mult_mosi_json(capsys):
    rc, out, _ = run_cli(capsys, "profile", "--model", "mult", "--dataset", "mosi", "--json")
    assert rc == 0
    r = json.loads(out)
    assert r["params"]["total_without_text_encoder"] == 2_571_551
    assert r["params"]["paper_convention"] == 2_571_551


def test_metrics_json_and_constant_prediction(tmp_path, capsys):
    rng = np.random.default_rng(0)
    true = np.round(rng.uniform(-3, 3, 50), 1).astype(np.float32)
    pred = (true + rng.normal(0, 0.5, 50)).astype(np.float32)
    np.save(tmp_path / "p.npy", pred)
    np.save(tmp_path / "t.npy", true)
    rc, out, _ = run_cli(
        capsys,
        "metrics",
        "--dataset",
        "mosi",
        "--pred",
        str(tmp_path / "p.npy"),
        "--true",
        str(tmp_path / "t.npy"),
    )
    assert rc == 0
    m = json.loads(out)
    assert set(m) == {
        "Has0_acc_2",
        "Has0_F1_score",
        "Non0_acc_2",
        "Non0_F1_score",
        "Mult_acc_5",
        "Mult_acc_7",
        "MAE",
        "Corr",
    }
    assert m["MAE"] == round(float(np.mean(np.abs(pred - true))), 4)
    assert m["Corr"] == pytest.approx(float(np.corrcoef(pred, true)[0, 1]), abs=1e-4)
    np.save(tmp_path / "c.npy", np.zeros(50, dtype=np.float32))
    rc, out, err = run_cli(
        capsys,
        "metrics",
        "--dataset",
        "mosi",
        "--pred",
        str(tmp_path / "c.npy"),
        "--true",
        str(tmp_path / "t.npy"),
    )
    assert rc == 0, err
    assert '"Corr": NaN' in out
    m = json.loads(out)
    assert math.isnan(m["Corr"]) and m["MAE"] == round(float(np.mean(np.abs(true))), 4)


def test_synth_convert_train_pipeline(tmp_path, capsys):
    pkl = tmp_path / "x.pkl"
    rc, out, err = run_cli(capsys, "synth", "--out", str(pkl))
    assert rc == 0 and pkl.is_file() and "train 600" in out
    rc, _, err = run_cli(capsys, "synth", "--out", str(pkl))  # never overwrites
    assert rc == 2 and "exists" in err
    rc, out, err = run_cli(capsys, "convert", str(pkl), "--out", str(tmp_path / "conv"))
    assert rc == 0, err
    assert (tmp_path / "conv" / "meta.json").is_file()
    rc, out, err = run_cli(
        capsys,
        "train",
        "--quiet",
        "--data",
        str(tmp_path / "conv"),
        "--dataset",
        "synthetic",
        "--out",
        str(tmp_path / "runs"),
        "--seeds",
        "1",
        "model.d_model=16",
        "model.num_layers=1",
        "train.max_epochs=1",
        "train.batch_size=64",
    )
    assert rc == 0, err
    (run_dir,) = list((tmp_path / "runs").iterdir())
    res = json.loads((run_dir / "results.json").read_text())
    assert res["n_seeds"] == 1 and res["per_seed"][0]["epochs"] == 1
    assert json.loads((run_dir / "data.json").read_text())["splits"] == {
        "train": 600,
        "valid": 150,
        "test": 150,
    }
    assert "MAE" in out and str(run_dir) in out


def test_eval_reproduces_results(tiny_run, capsys):
    run_dir, _ = tiny_run
    res = json.loads((run_dir / "results.json").read_text())
    rc, out, err = run_cli(capsys, "eval", str(run_dir))
    assert rc == 0, err
    ev = json.loads(out)
    assert ev["split"] == "test"
    assert ev["mean"] == res["mean"]  # bit-for-bit the same (rounded) metrics
    assert ev["per_seed"][0]["test"] == res["per_seed"][0]["test"]
    rc, out, err = run_cli(capsys, "eval", str(run_dir), "--split", "valid", "--seed", "5")
    assert rc == 0, err
    assert json.loads(out)["mean"]["Loss"] == res["per_seed"][0]["valid_loss"]
    rc, _, err = run_cli(capsys, "eval", str(run_dir), "--seed", "6")
    assert rc == 2 and "seed 6" in err


def test_eval_of_a_control_run_uses_the_zeroed_data(tmp_path, tiny_run, capsys):
    _, data_dir = tiny_run
    run_dir = tmp_path / "control"
    rc, _, err = run_cli(
        capsys,
        "train",
        "--quiet",
        "--data",
        str(data_dir),
        "--dataset",
        "synthetic",
        "--run-dir",
        str(run_dir),
        "--seeds",
        "1",
        *TINY_CLI,
        'data.zero_modalities=["audio","vision"]',
    )
    assert rc == 0, err
    rc, out, err = run_cli(capsys, "eval", str(run_dir))
    assert rc == 0, err
    assert json.loads(out)["mean"] == json.loads((run_dir / "results.json").read_text())["mean"]


def test_predict_writes_ids_and_refuses_to_overwrite(tiny_run, tmp_path, capsys):
    run_dir, data_dir = tiny_run
    out_csv = tmp_path / "preds.csv"
    rc, out, err = run_cli(capsys, "predict", str(run_dir), "--out", str(out_csv))
    assert rc == 0, err
    assert "32 predictions" in out
    with open(out_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    data = tiny_data()
    assert [r["id"] for r in rows] == list(data.splits["test"].ids)
    preds = np.array([float(r["prediction"]) for r in rows])
    labels = np.array([float(r["label"]) for r in rows])
    np.testing.assert_allclose(labels, data.splits["test"].labels, rtol=0, atol=1e-6)
    res = json.loads((run_dir / "results.json").read_text())
    assert round(float(np.mean(np.abs(preds - labels))), 4) == pytest.approx(res["mean"]["MAE"], abs=1e-4)
    before = out_csv.read_bytes()
    rc, _, err = run_cli(capsys, "predict", str(run_dir), "--out", str(out_csv))
    assert rc == 2 and "already exists" in err and str(out_csv) in err
    assert out_csv.read_bytes() == before
    rc, _, err = run_cli(capsys, "predict", str(run_dir), "--out", str(tmp_path / "v.csv"), "--split", "nope")
    assert rc == 2 and "nope" in err


def test_train_prints_summary_and_run_dir(tiny_run):
    run_dir, _ = tiny_run
    assert (run_dir / "command.txt").read_text().startswith("gsit train --quiet --data ")


def test_console_script_exit_codes(tmp_path):
    """The installed entry point and ``python -m gsit.cli``: 0 on success, 2 on a user error with one line."""
    np.save(tmp_path / "p.npy", np.array([0.5, -1.0, 2.0], dtype=np.float32))
    np.save(tmp_path / "t.npy", np.array([1.0, -1.0, 2.5], dtype=np.float32))
    np.save(tmp_path / "t2.npy", np.array([1.0, -1.0], dtype=np.float32))
    exe = shutil.which("gsit", path=str(Path(sys.executable).parent)) or shutil.which("gsit")
    module = [sys.executable, "-m", "gsit.cli"]
    ok = subprocess.run(
        [
            *module,
            "metrics",
            "--dataset",
            "mosi",
            "--pred",
            str(tmp_path / "p.npy"),
            "--true",
            str(tmp_path / "t.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["MAE"] == 0.3333
    bad = subprocess.run(
        [
            *([exe] if exe else module),
            "metrics",
            "--dataset",
            "mosi",
            "--pred",
            str(tmp_path / "p.npy"),
            "--true",
            str(tmp_path / "t2.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert bad.returncode == 2
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gsit: error:") and "3 vs 2" in lines[0]
    usage = subprocess.run(
        [*module, "train", "--no-such-flag"],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert usage.returncode == 2 and "--no-such-flag" in usage.stderr
    version = subprocess.run(
        [sys.executable, "-m", "gsit.cli", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        env=subprocess_env(),
    )
    assert version.returncode == 0 and version.stdout.strip() == gsit.__version__
