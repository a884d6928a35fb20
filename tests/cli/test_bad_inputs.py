"""Bad inputs through the CLI: every case exits with code 2 and prints ONE stderr line ``gsit: error: ...``
that names the file / split / key / shape / value at fault, and no run directory is created."""

from __future__ import annotations

import copy
import os
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from gsit import cli
from gsit.data import make_synthetic, write_mmsa_pickle
from gsit.data.safe_pickle import load_pickle

QUICK = [
    "--seeds",
    "1",
    "model.d_model=8",
    "model.num_heads=2",
    "model.num_layers=1",
    "train.max_epochs=1",
    "train.batch_size=32",
]


def tiny(**kw):
    args = dict(n_train=8, n_valid=6, n_test=6, text_len=8, audio_len=9, vision_len=9, seed=0)
    args.update(kw)
    return make_synthetic(**args)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """The MMSA dict of a tiny synthetic dataset (features text)."""
    p = write_mmsa_pickle(tiny(), tmp_path_factory.mktemp("bad_base") / "base.pkl")
    return load_pickle(p)  # read back through the same safe loader users get


@pytest.fixture(scope="module")
def bert_base(tmp_path_factory) -> dict:
    """The MMSA dict of a tiny synthetic dataset with text_bert rows (vocabulary 2048)."""
    p = write_mmsa_pickle(tiny(text_kind="bert"), tmp_path_factory.mktemp("bad_bert") / "bert.pkl")
    return load_pickle(p)


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory) -> Path:
    from transformers import BertConfig, BertModel

    d = tmp_path_factory.mktemp("tiny_bert") / "bert"
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=2048, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
        )
    ).save_pretrained(str(d))
    return d


def dump(obj, path: Path) -> Path:
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=4)
    return path


def mutate(base: dict, path: Path, fn: Callable[[dict], None]) -> Path:
    d = copy.deepcopy(base)
    fn(d)
    return dump(d, path)


def expect_error(capsys, tmp_path, argv: list[str], *needles: str) -> str:
    out_root = tmp_path / "runs"
    if (
        argv
        and argv[0] == "train"
        and "--out" not in argv
        and "--run-dir" not in argv
        and "--resume" not in argv
    ):
        argv = [*argv, "--out", str(out_root)]
    torch.set_num_threads(1)
    rc = cli.main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit code {rc}; stderr: {err!r}"
    assert len(lines) == 1, f"expected one stderr line, got {lines!r}"
    assert lines[0].startswith("gsit: error: ")
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"
    # a failed start never leaves a run directory behind
    assert not out_root.exists() or not any(out_root.iterdir())
    return lines[0]


def train_pkl(path: Path, dataset: str = "synthetic", *extra: str) -> list[str]:
    return ["train", "--quiet", "--data", str(path), "--dataset", dataset, *QUICK, *extra]


# ----------------------------------------------------------------------------- data files (MMSA pickles)


def _set(split: str, key: str, value_fn):
    def fn(d):
        d[split][key] = value_fn(d[split][key])

    return fn


def _del(split: str, key: str):
    def fn(d):
        del d[split][key]

    return fn


def _nan_at(idx):
    def f(a):
        a = np.array(a, copy=True)
        a[idx] = np.nan
        return a

    return f


def _lengths_with(i: int, value: int):
    def f(a):
        a = list(a)
        a[i] = value
        return a

    return f


PICKLE_CASES = {
    "missing_split": (lambda d: d.pop("test"), ["split 'test' is missing", "{pkl}"]),
    "missing_key_audio": (_del("train", "audio"), ["split 'train'", "'audio'", "{pkl}"]),
    "missing_key_labels": (_del("valid", "regression_labels"), ["split 'valid'", "'regression_labels'"]),
    "missing_text": (lambda d: d["test"].pop("text"), ["split 'test'", "text"]),
    "wrong_rank_audio": (
        _set("train", "audio", lambda a: a[:, :, 0]),
        ["split 'train'", "'audio'", "(8, 9)"],
    ),
    "wrong_rank_labels": (
        _set("test", "regression_labels", lambda a: np.stack([a, a], 1)),
        ["split 'test'", "labels", "(6, 2)"],
    ),
    "dims_differ_between_splits": (
        _set("valid", "vision", lambda a: a[:, :, :19]),
        ["split 'valid'", "'vision'", "(9, 19)", "(9, 20)"],
    ),
    "seq_len_differs_between_splits": (
        lambda d: d["test"].update(
            audio=d["test"]["audio"][:, :8],
            audio_lengths=[min(int(v), 8) for v in d["test"]["audio_lengths"]],
        ),
        ["split 'test'", "'audio'", "(8, 5)", "(9, 5)"],
    ),
    "rows_differ_between_keys": (
        _set("train", "vision", lambda a: a[:7]),
        ["split 'train'", "'vision'", "7"],
    ),
    "audio_lengths_beyond_sequence": (
        _set("train", "audio_lengths", _lengths_with(3, 10)),
        ["split 'train'", "'audio_lengths'", "10", "row 3"],
    ),
    "vision_lengths_negative": (
        _set("valid", "vision_lengths", _lengths_with(2, -1)),
        ["split 'valid'", "'vision_lengths'", "-1"],
    ),
    "nan_in_text": (
        _set("train", "text", _nan_at((2, 1, 0))),
        ["split 'train'", "'text'", "nan", "(2, 1, 0)"],
    ),
    "inf_in_vision": (
        _set(
            "test",
            "vision",
            lambda a: np.where(np.arange(a.shape[0])[:, None, None] == 4, np.float32(np.inf), a).astype(
                np.float32
            ),
        ),
        ["split 'test'", "'vision'", "inf"],
    ),
    "nan_label": (
        _set("valid", "regression_labels", _nan_at(1)),
        ["split 'valid'", "labels", "nan", "row 1"],
    ),
    "empty_split": (
        lambda d: d.update(
            valid={k: (v[:0] if hasattr(v, "shape") else v[:0]) for k, v in d["valid"].items()}
        ),
        ["split 'valid'", "empty"],
    ),
    "zero_length_sequence": (
        lambda d: [
            d[s].update(audio=d[s]["audio"][:, :0], audio_lengths=[0] * len(d[s]["audio_lengths"])) for s in d
        ],
        ["'audio'", "zero-length"],
    ),
    "not_a_dict": (lambda d: d.update(train=[1, 2, 3]), ["split 'train'", "list"]),
    "string_features": (
        _set("train", "audio", lambda a: np.full(a.shape[:2], "x", dtype=object)),
        ["split 'train'", "'audio'"],
    ),
}


@pytest.mark.parametrize("case", sorted(PICKLE_CASES))
def test_bad_pickle(case, base, tmp_path, capsys):
    fn, needles = PICKLE_CASES[case]
    pkl = mutate(base, tmp_path / f"{case}.pkl", fn)
    expect_error(capsys, tmp_path, train_pkl(pkl), *[n.format(pkl=pkl) for n in needles])


def test_mosi_label_out_of_range(base, tmp_path, capsys):
    def fn(d):
        d["train"]["regression_labels"][5] = 5.0

    pkl = mutate(base, tmp_path / "mosi.pkl", fn)
    expect_error(capsys, tmp_path, train_pkl(pkl, "mosi"), "split 'train'", "labels", "5", "row 5", "mosi")


def test_text_bert_ids_outside_the_encoders_vocabulary(bert_base, tiny_bert_dir, tmp_path, capsys):
    def fn(d):
        d["test"]["text_bert"][3, 0, 2] = 5000.0

    pkl = mutate(bert_base, tmp_path / "vocab.pkl", fn)
    expect_error(
        capsys,
        tmp_path,
        train_pkl(pkl, "synthetic", "--text-encoder", str(tiny_bert_dir)),
        "split 'test'",
        "text_bert",
        "5000",
        "(3, 2)",
        "2048",
    )


def test_text_bert_negative_id(bert_base, tmp_path, capsys):
    def fn(d):
        d["valid"]["text_bert"][1, 0, 1] = -4.0

    pkl = mutate(bert_base, tmp_path / "neg.pkl", fn)
    expect_error(capsys, tmp_path, train_pkl(pkl), "split 'valid'", "text_bert", "-4")


def test_text_bert_bad_attention_mask(bert_base, tmp_path, capsys):
    def fn(d):
        d["train"]["text_bert"][0, 1, 1] = 2.0

    pkl = mutate(bert_base, tmp_path / "mask.pkl", fn)
    expect_error(capsys, tmp_path, train_pkl(pkl), "split 'train'", "text_bert", "mask")


def test_text_bert_without_text_encoder(bert_base, tmp_path, capsys):
    pkl = dump(bert_base, tmp_path / "bert.pkl")
    expect_error(capsys, tmp_path, train_pkl(pkl), "text_bert", "--text-encoder", str(pkl))


def test_text_encoder_that_is_not_a_model_directory(bert_base, tmp_path, capsys):
    pkl = dump(bert_base, tmp_path / "bert.pkl")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_error(
        capsys,
        tmp_path,
        train_pkl(pkl, "synthetic", "--text-encoder", str(empty)),
        str(empty),
        "not a model directory",
    )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    expect_error(capsys, tmp_path, train_pkl(pkl, "synthetic", "--text-encoder", str(broken)), str(broken))


# ----------------------------------------------------------------------------- unreadable or unsafe files


def test_truncated_pickle(base, tmp_path, capsys):
    good = dump(base, tmp_path / "good.pkl")
    bad = tmp_path / "truncated.pkl"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    expect_error(capsys, tmp_path, train_pkl(bad), str(bad))


def test_empty_file(tmp_path, capsys):
    bad = tmp_path / "empty.pkl"
    bad.write_bytes(b"")
    expect_error(capsys, tmp_path, train_pkl(bad), str(bad))


def test_directory_instead_of_file(tmp_path, capsys):
    d = tmp_path / "folder.pkl"
    d.mkdir()
    expect_error(capsys, tmp_path, train_pkl(d), str(d))


def test_missing_data_path(tmp_path, capsys):
    expect_error(capsys, tmp_path, train_pkl(tmp_path / "nope.pkl"), str(tmp_path / "nope.pkl"))


def test_unknown_data_format(tmp_path, capsys):
    p = tmp_path / "data.txt"
    p.write_text("hello")
    expect_error(capsys, tmp_path, train_pkl(p), str(p), "unknown data format")


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(base, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    d = copy.deepcopy(base)
    d["train"]["audio"] = _Evil(marker)
    pkl = dump(d, tmp_path / "evil.pkl")
    line = expect_error(capsys, tmp_path, train_pkl(pkl), str(pkl))
    assert "system" in line
    assert not marker.exists()
    pkl2 = dump(_Evil(marker), tmp_path / "evil2.pkl")  # the whole file is the payload
    expect_error(capsys, tmp_path, train_pkl(pkl2), str(pkl2))
    assert not marker.exists()


# ----------------------------------------------------------------------------- configuration


@pytest.fixture
def good_pkl(base, tmp_path) -> Path:
    return dump(base, tmp_path / "good.pkl")


def test_config_file_with_unknown_key(good_pkl, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train]\nbatch_sise = 8\n")
    expect_error(
        capsys, tmp_path, train_pkl(good_pkl, "synthetic", "--config", str(cfg)), "batch_sise", "[train]"
    )


def test_config_file_with_wrong_type(good_pkl, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[train]\nearly_stop = "eight"\n')
    expect_error(
        capsys,
        tmp_path,
        train_pkl(good_pkl, "synthetic", "--config", str(cfg)),
        "train.early_stop",
        "integer",
        "eight",
    )


def test_config_file_not_toml(good_pkl, tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[train\nbatch_size = 8\n")
    expect_error(capsys, tmp_path, train_pkl(good_pkl, "synthetic", "--config", str(cfg)), str(cfg), "TOML")


def test_config_file_missing(good_pkl, tmp_path, capsys):
    expect_error(
        capsys,
        tmp_path,
        train_pkl(good_pkl, "synthetic", "--config", str(tmp_path / "no.toml")),
        str(tmp_path / "no.toml"),
    )


@pytest.mark.parametrize(
    "override, needles",
    [
        ("train.batch_size=abc", ["train.batch_size", "integer", "abc"]),
        ("train.learning_rate_other=true", ["train.learning_rate_other", "number"]),
        ("model.d_mdoel=16", ["d_mdoel", "[model]"]),
        ("nosection.key=1", ["nosection", "unknown config sections"]),
        ("model.d_model", ["model.d_model", "section.key=value"]),
        ("d_model=16", ["d_model=16", "section"]),
        ("train.batch_size=0", ["batch_size", "0"]),
        ('train.protocol="sgd"', ["train.protocol", "sgd", "gsit"]),
        ("model.structure=nope", ["nope", "structure"]),
        ("model.d_model=9", ["9", "divisible"]),
        ('data.zero_modalities=["smell"]', ["smell", "zero_modalities"]),
        ("model.kernel_sizes={text=5,audio=12,vision=5}", ["kernel", "audio", "12", "9"]),
    ],
)
def test_bad_override(override, needles, good_pkl, tmp_path, capsys):
    expect_error(capsys, tmp_path, train_pkl(good_pkl, "synthetic", override), *needles)


def test_unknown_attention_backend_fails_at_startup_listing_backends(good_pkl, tmp_path, capsys, monkeypatch):
    import gsit.build as build_mod
    import gsit.train as train_mod

    monkeypatch.setattr(train_mod, "train_seed", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(build_mod, "load_text_encoder", lambda *a, **k: pytest.fail("data/model were built"))
    line = expect_error(
        capsys,
        tmp_path,
        train_pkl(good_pkl, "synthetic", "model.attention_backend=nope"),
        "model.attention_backend",
        "'nope'",
        "known backends",
    )
    for name in ("pairs", "reference"):
        assert name in line


def test_unknown_model_and_dataset(good_pkl, tmp_path, capsys):
    expect_error(
        capsys,
        tmp_path,
        ["train", "--quiet", "--model", "gpt", "--data", str(good_pkl), "--dataset", "synthetic"],
        "'gpt'",
        "gsit",
    )
    expect_error(
        capsys, tmp_path, ["train", "--quiet", "--data", str(good_pkl), "--dataset", "imdb"], "'imdb'", "mosi"
    )
    expect_error(capsys, tmp_path, ["train", "--quiet", "--data", str(good_pkl)], "--dataset")


def test_seeds_not_integers_or_empty(good_pkl, tmp_path, capsys):
    argv = train_pkl(good_pkl)
    argv[argv.index("--seeds") + 1] = "abc"
    expect_error(capsys, tmp_path, argv, "--seeds", "'abc'")
    argv = [a for a in train_pkl(good_pkl) if a not in ("--seeds", "1")]
    expect_error(capsys, tmp_path, [*argv, "train.seeds=[]"], "train.seeds", "empty")


def test_resume_of_a_non_run_dir(good_pkl, tmp_path, capsys):
    d = tmp_path / "not_a_run"
    d.mkdir()
    (d / "x.txt").write_text("x")
    expect_error(capsys, tmp_path, [*train_pkl(good_pkl), "--resume", str(d)], str(d), "not a run directory")
    assert sorted(p.name for p in d.iterdir()) == ["x.txt"]
    expect_error(
        capsys,
        tmp_path,
        [*train_pkl(good_pkl), "--resume", str(tmp_path / "missing")],
        str(tmp_path / "missing"),
    )


# ----------------------------------------------------------------------------- other subcommands


def test_metrics_with_mismatched_lengths(tmp_path, capsys):
    np.save(tmp_path / "p.npy", np.zeros(5, dtype=np.float32))
    np.save(tmp_path / "t.npy", np.zeros(4, dtype=np.float32))
    expect_error(
        capsys,
        tmp_path,
        [
            "metrics",
            "--dataset",
            "mosi",
            "--pred",
            str(tmp_path / "p.npy"),
            "--true",
            str(tmp_path / "t.npy"),
        ],
        "5 vs 4",
    )


def test_metrics_with_unreadable_inputs(tmp_path, capsys):
    (tmp_path / "p.npy").write_text("not numpy")
    np.save(tmp_path / "t.npy", np.zeros(4, dtype=np.float32))
    expect_error(
        capsys,
        tmp_path,
        [
            "metrics",
            "--dataset",
            "mosi",
            "--pred",
            str(tmp_path / "p.npy"),
            "--true",
            str(tmp_path / "t.npy"),
        ],
        str(tmp_path / "p.npy"),
        "not a .npy file",
    )
    expect_error(
        capsys,
        tmp_path,
        [
            "metrics",
            "--dataset",
            "mosi",
            "--pred",
            str(tmp_path / "none.npy"),
            "--true",
            str(tmp_path / "t.npy"),
        ],
        str(tmp_path / "none.npy"),
    )
    np.save(tmp_path / "n.npy", np.array([0.0, np.nan, 1.0, 2.0], dtype=np.float32))
    expect_error(
        capsys,
        tmp_path,
        [
            "metrics",
            "--dataset",
            "mosi",
            "--pred",
            str(tmp_path / "n.npy"),
            "--true",
            str(tmp_path / "t.npy"),
        ],
        "pred",
    )
    expect_error(
        capsys,
        tmp_path,
        [
            "metrics",
            "--dataset",
            "nope",
            "--pred",
            str(tmp_path / "t.npy"),
            "--true",
            str(tmp_path / "t.npy"),
        ],
        "nope",
    )


def test_eval_and_predict_of_a_non_run_dir(tmp_path, capsys):
    d = tmp_path / "plain"
    d.mkdir()
    expect_error(capsys, tmp_path, ["eval", str(d)], str(d), "not a run directory")
    expect_error(
        capsys, tmp_path, ["predict", str(d), "--out", str(tmp_path / "p.csv")], str(d), "not a run directory"
    )
    assert not (tmp_path / "p.csv").exists()
