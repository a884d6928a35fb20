"""Hostile and clumsy inputs, one generator per class (issue 13): forged numpy pickles, npz members with
lying headers, meta.json/config.json/last.json of the wrong shape, MIntRec TSVs with quotes and a BOM,
duplicate ids, nonsense settings, paths with TOML escapes, unexpected exceptions, file modes.  A case is
good when gsit exits 2 with one line naming the file, key or value, and leaves nothing behind."""

from __future__ import annotations

import io
import json
import os
import stat
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from gsit import cli, commands
from gsit.data import load_dataset, make_synthetic, save_converted, write_mmsa_pickle
from gsit.data.safe_pickle import loads_pickle
from gsit.errors import DataError

# ---------------------------------------------------------------------------------------------------------
# a tiny pickle assembler: hostile pickles are written opcode by opcode (pickle.dumps cannot make them)


class P:
    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x04")

    def op(self, code: bytes) -> P:
        self.out += code
        return self

    def glob(self, module: str, name: str) -> P:
        return self.op(b"c" + f"{module}\n{name}\n".encode())

    def val(self, v) -> P:
        if v is None:
            return self.op(b"N")
        if v is True or v is False:
            return self.op(b"\x88" if v else b"\x89")
        if isinstance(v, int):
            return self.op(b"\x8a" + bytes([8]) + v.to_bytes(8, "little", signed=True))
        if isinstance(v, str):
            b = v.encode()
            return self.op(b"X" + struct.pack("<I", len(b)) + b)
        if isinstance(v, bytes):
            return self.op(b"B" + struct.pack("<I", len(v)) + v)
        if isinstance(v, tuple):
            self.op(b"(")
            for x in v:
                self.val(x)
            return self.op(b"t")
        if isinstance(v, dict):
            self.op(b"}(")
            for k, x in v.items():
                self.val(k).val(x)
            return self.op(b"u")
        if isinstance(v, Raw):
            return self.op(v.code)
        raise TypeError(v)

    def done(self) -> bytes:
        return bytes(self.out + b".")


class Raw:
    def __init__(self, code: bytes) -> None:
        self.code = code


CORE = "numpy.core"
PLAIN_F8 = (3, "<", None, None, None, -1, -1, 0)


def dtype_ops(code: str, state: tuple) -> bytes:
    """numpy.dtype(code, False, True) followed by BUILD(state) -- the route that trusted pickled flags."""
    p = P()
    p.out = bytearray()
    p.glob("numpy", "dtype").val((code, False, True)).op(b"R").val(state).op(b"b")
    return bytes(p.out)


def array_ops(dtype: bytes, shape: tuple, raw, *, version: int = 1) -> bytes:
    p = P()
    p.out = bytearray()
    p.glob(f"{CORE}.multiarray", "_reconstruct").op(b"(").glob("numpy", "ndarray")
    p.val((0,)).val(b"b").op(b"tR")
    p.op(b"(").val(version).val(shape).op(dtype).val(False)
    p.val(raw) if not isinstance(raw, Raw) else p.op(raw.code)
    return bytes(p.out + b"tb")


def mmsa_with(key: str, value_ops: bytes) -> bytes:
    """{'train': {key: <value>}} -- enough for the unpickler (it fails before the layout is checked)."""
    p = P()
    p.op(b"}").val("train").op(b"}").op(b"(").val(key).op(value_ops).op(b"u").op(b"s")
    return p.done()


HOSTILE_PICKLES = {
    # an object dtype whose flags claim no objects: raw bytes would become object pointers (was SIGSEGV)
    "object_dtype_lying_flags": array_ops(
        dtype_ops("O8", (3, "|", None, None, None, -1, -1, 0)), (2,), b"\x41" * 16
    ),
    # a structured dtype whose field lies outside the item size (was: heap bytes copied into the ids)
    "field_outside_itemsize": array_ops(
        dtype_ops("V8", (3, "|", None, ("a",), {"a": (Raw(dtype_ops("i8", PLAIN_F8)), 4096)}, 8, 1, 16)),
        (2,),
        b"\x00" * 16,
    ),
    "plain_code_with_fields": array_ops(
        dtype_ops("f8", (3, "<", None, ("a",), {"a": (Raw(dtype_ops("O8", PLAIN_F8)), 0)}, -1, -1, 0)),
        (2,),
        b"\x00" * 16,
    ),
    "itemsize_lie": array_ops(dtype_ops("f8", (3, "<", None, None, None, 4096, 8, 0)), (2,), b"\x00" * 16),
    "unicode_odd_itemsize": array_ops(
        dtype_ops("U2", (3, "<", None, None, None, 7, 4, 8)), (1,), b"\x00" * 7
    ),
    "subarray": array_ops(dtype_ops("f8", (3, "<", ("x",), None, None, -1, -1, 0)), (1,), b"\x00" * 8),
    "short_raw_bytes": array_ops(dtype_ops("f8", PLAIN_F8), (1000,), b"\x00" * 16),
    "huge_shape": array_ops(dtype_ops("f8", PLAIN_F8), (1 << 40, 1 << 20), b"\x00" * 64),
    "negative_shape": array_ops(dtype_ops("f8", PLAIN_F8), (-4,), b""),
    "object_array_raw_bytes": array_ops(
        dtype_ops("O8", (3, "|", None, None, None, -1, -1, 63)), (2,), b"\x41" * 16
    ),
    "datetime_dtype": array_ops(dtype_ops("M8", PLAIN_F8), (1,), b"\x00" * 8),
    "ndarray_called_with_strides": bytes(
        P()
        .glob("numpy", "ndarray")
        .op(b"(")
        .val((4,))
        .op(dtype_ops("f8", PLAIN_F8))
        .val(b"\x00" * 8)
        .val(0)
        .val((1 << 30,))
        .op(b"tR")
        .out[2:]
    ),
    "build_on_dict": bytes(P().op(b"}").op(b"}").op(b"b").out[2:]),
    "bare_dtype": dtype_ops("f8", PLAIN_F8),
    "scalar_wrong_size": bytes(
        P()
        .glob(f"{CORE}.multiarray", "scalar")
        .op(b"(")
        .op(dtype_ops("f8", PLAIN_F8))
        .val(b"\x00" * 3)
        .op(b"tR")
        .out[2:]
    ),
    "frombuffer_wrong_size": bytes(
        P()
        .glob(f"{CORE}.numeric", "_frombuffer")
        .op(b"(")
        .val(b"\x00" * 8)
        .op(dtype_ops("f8", PLAIN_F8))
        .val((1 << 20,))
        .val("C")
        .op(b"tR")
        .out[2:]
    ),
    "bytes_of_length": bytes(P().glob("builtins", "bytes").op(b"(").val(1 << 40).op(b"tR").out[2:]),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_PICKLES))
def test_hostile_pickle_is_one_data_error_naming_file_and_key(name):
    blob = mmsa_with("id", HOSTILE_PICKLES[name])
    with pytest.raises(DataError) as err:
        loads_pickle(blob, source="evil.pkl")
    msg = str(err.value)
    assert msg.startswith("evil.pkl: ") and "\n" not in msg
    if name not in ("bare_dtype",):
        assert "'train' -> 'id'" in msg, msg


def test_well_formed_equivalents_still_load():
    """The assembler is right: the same opcodes with honest values load."""
    blob = mmsa_with("id", array_ops(dtype_ops("f8", PLAIN_F8), (2,), np.array([1.5, -2.0]).tobytes()))
    got = loads_pickle(blob)["train"]["id"]
    assert got.dtype == np.float64 and got.tolist() == [1.5, -2.0]
    big = dtype_ops("f8", (3, ">", None, None, None, -1, -1, 0))
    got = loads_pickle(mmsa_with("x", array_ops(big, (1,), np.array([3.0], ">f8").tobytes())))["train"]["x"]
    assert got.tolist() == [3.0]
    uni = dtype_ops("U2", (3, "<", None, None, None, 8, 4, 8))
    got = loads_pickle(mmsa_with("x", array_ops(uni, (1,), "ab".encode("utf-32-le"))))["train"]["x"]
    assert got.tolist() == ["ab"]


def _mmsa_pickle_with_lying_ids(path: Path) -> Path:
    """A complete MMSA layout whose train 'id' is the object-dtype-with-lying-flags array."""
    data = make_synthetic(n_train=8, n_valid=4, n_test=4, text_len=4, audio_len=4, vision_len=4, seed=0)
    good = tmp = path.with_suffix(".good.pkl")
    write_mmsa_pickle(data, tmp)
    raw = good.read_bytes()
    from gsit.data.safe_pickle import load_pickle

    obj = load_pickle(good)
    import pickle

    obj["train"]["id"] = "__ID__"
    blob = pickle.dumps(obj, protocol=2)  # no frames: a value can be swapped for other opcodes
    marker = b"X\x06\x00\x00\x00__ID__"  # BINUNICODE '__ID__'
    blob = blob.replace(marker + b"q", marker + b"q", 1)
    assert blob.count(marker) == 1 and raw
    path.write_bytes(blob.replace(marker, HOSTILE_PICKLES["object_dtype_lying_flags"]))
    good.unlink()
    return path


def test_lying_dtype_through_the_cli_exits_2_not_a_segfault(tmp_path):
    evil = _mmsa_pickle_with_lying_ids(tmp_path / "evil.pkl")
    out = tmp_path / "converted"
    r = subprocess.run(
        [sys.executable, "-m", "gsit.cli", "convert", str(evil), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and str(evil) in lines[0] and "'id'" in lines[0]
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["evil.pkl"]


# ---------------------------------------------------------------------------------------------------------
# npz members with lying headers; meta.json schema


def _converted(tmp_path: Path) -> Path:
    data = make_synthetic(n_train=8, n_valid=4, n_test=4, text_len=4, audio_len=4, vision_len=4, seed=0)
    return save_converted(data, tmp_path / "conv")


def _replace_member(npz: Path, member: str, payload: bytes) -> None:
    with zipfile.ZipFile(npz) as zf:
        items = [(i.filename, zf.read(i.filename)) for i in zf.infolist()]
    with zipfile.ZipFile(npz, "w") as zf:
        for name, blob in items:
            zf.writestr(name, payload if name == member else blob)


@pytest.mark.parametrize("shape", [(1 << 42, 1 << 10), (7 << 28,), (3,)])
def test_npz_member_declaring_more_than_it_holds_is_refused_before_allocation(tmp_path, shape):
    d = _converted(tmp_path)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    _replace_member(d / "data.npz", "train/audio.npy", _with_magic(header.getvalue()) + b"\x00" * 64)
    with pytest.raises(DataError) as err:
        load_dataset(d)
    msg = str(err.value)
    assert "data.npz" in msg and "'train/audio'" in msg and "declares shape" in msg, msg


def _with_magic(header: bytes) -> bytes:
    return header if header.startswith(b"\x93NUMPY") else np.lib.format.magic(1, 0) + header


def test_npz_zip_size_claim_beyond_the_archive_is_refused(tmp_path):
    d = _converted(tmp_path)
    npz = d / "data.npz"
    blob = bytearray(npz.read_bytes())
    # patch the central directory's uncompressed size of the first member to 7 GiB
    cd = blob.rfind(b"PK\x01\x02")
    first_cd = blob.find(b"PK\x01\x02")
    assert cd > 0
    struct.pack_into("<I", blob, first_cd + 24, 0xFFFFFFF0)
    npz.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="data.npz"):
        load_dataset(d)


META_CASES = {
    "deep": lambda m: "[" * 100_000 + "]" * 100_000,
    "task_list": lambda m: json.dumps({**m, "task": ["regression"]}),
    "num_classes_str": lambda m: json.dumps({**m, "num_classes": "20"}),
    "label_names_nested": lambda m: json.dumps({**m, "label_names": [["a"], "b"]}),
    "splits_bad": lambda m: json.dumps({**m, "splits": {"train": "many"}}),
    "unknown_key": lambda m: json.dumps({**m, "extra": {"x": {"y": 1}}}),
    "bad_json": lambda m: json.dumps(m)[:-5],
    "dataset_unknown": lambda m: json.dumps({**m, "dataset": "imagenet"}),
}


@pytest.mark.parametrize("case", sorted(META_CASES))
def test_meta_json_schema(tmp_path, case, capsys):
    d = _converted(tmp_path)
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(META_CASES[case](meta))
    rc = cli.main(["convert", str(d), "--out", str(tmp_path / "again")])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "meta.json" in err
    if case not in ("deep", "bad_json"):
        key = {
            "task_list": "task",
            "num_classes_str": "num_classes",
            "label_names_nested": "label_names",
            "splits_bad": "splits",
            "unknown_key": "extra",
            "dataset_unknown": "dataset",
        }[case]
        assert f"'{key}'" in err, err
    assert not (tmp_path / "again").exists()


# ---------------------------------------------------------------------------------------------------------
# MIntRec TSV: quotes are characters, a BOM is dropped; duplicate ids


def _mintrec_dir(root: Path, rows: list[str], *, bom: bool = False) -> Path:
    from gsit.data.mintrec import INTENT_LABELS

    root.mkdir()
    head = "season\tepisode\tclip\ttext\tlabel\n"
    for name in ("train", "dev", "test"):
        body = "".join(
            f"S01\tE01\t{name}{i}\t{text}\t{INTENT_LABELS[i % 20]}\n" for i, text in enumerate(rows)
        )
        (root / f"{name}.tsv").write_text(("\ufeff" if bom else "") + head + body, encoding="utf-8")
    return root


QUOTED = ['"she said', "nothing", 'no" way', '"fully quoted"', 'a "b" c', '"', "it's", 'end"']


def test_mintrec_quotes_do_not_merge_rows(tmp_path):
    from gsit.data.mintrec import _read_tsv

    root = _mintrec_dir(tmp_path / "m", QUOTED)
    rows = _read_tsv(root / "train.tsv")
    assert len(rows) == 8 == len((root / "train.tsv").read_text().splitlines()) - 1
    assert [r["text"] for r in rows] == QUOTED


def test_mintrec_bom_is_dropped(tmp_path):
    from gsit.data.mintrec import _read_tsv

    root = _mintrec_dir(tmp_path / "m", ["hello", "world"], bom=True)
    rows = _read_tsv(root / "train.tsv")
    assert [r["season"] for r in rows] == ["S01", "S01"]


def test_mintrec_row_with_extra_tab_is_refused(tmp_path):
    from gsit.data.mintrec import _read_tsv

    root = _mintrec_dir(tmp_path / "m", ["one", "two\tthree"])
    with pytest.raises(DataError, match=r"train\.tsv: row 3 has 6 tab-separated columns"):
        _read_tsv(root / "train.tsv")


def test_duplicate_ids_are_refused(tmp_path):
    data = make_synthetic(n_train=8, n_valid=4, n_test=4, text_len=4, audio_len=4, vision_len=4, seed=0)
    data.splits["valid"].ids[3] = data.splits["valid"].ids[1]
    p = write_mmsa_pickle(data, tmp_path / "dup.pkl")
    with pytest.raises(DataError) as err:
        load_dataset(p)
    assert "dup.pkl" in str(err.value) and "'valid'" in str(err.value) and "twice" in str(err.value)


# ---------------------------------------------------------------------------------------------------------
# settings: every bad value is one line naming section.key, before any run directory exists

BAD_SETTINGS = {
    "model.num_layers=0": "model.num_layers",
    "model.num_layers=-2": "model.num_layers",
    "model.d_model=0": "model.d_model",
    "model.d_model=-8": "model.d_model",
    "model.num_heads=0": "model.num_heads",
    "model.embed_dropout=1.5": "model.embed_dropout",
    "model.attn_dropout=-0.1": "model.attn_dropout",
    "model.kernel_sizes={audio=0}": "model.kernel_sizes.audio",
    "model.kernel_sizes={speech=1}": "model.kernel_sizes",
    "train.learning_rate_other=-0.001": "train.learning_rate_other",
    "train.learning_rate_bert=nan": "train.learning_rate_bert",
    "train.learning_rate_other=inf": "train.learning_rate_other",
    "train.weight_decay_other=-1": "train.weight_decay_other",
    "train.modality_dropout=1.01": "train.modality_dropout",
    "train.max_epochs=-1": "train.max_epochs",
    "train.early_stop=0": "train.early_stop",
    "train.batch_size=0": "train.batch_size",
    "train.eval_batch_size=-1": "train.eval_batch_size",
    "train.plateau_factor=2": "train.plateau_factor",
    "train.plateau_factor=0": "train.plateau_factor",
    "train.grad_clip=-1": "train.grad_clip",
    "train.seeds=[1.5]": "train.seeds",
    "train.seeds=[-1]": "train.seeds",
    "train.seeds=[4294967296]": "train.seeds",
    "train.seeds=[1, 1]": "train.seeds",
    'train.seeds=["a"]': "train.seeds",
    "train.update_epochs=100": "train.accumulation_steps",  # MMSA's name, an alias
}


@pytest.mark.parametrize("override", sorted(BAD_SETTINGS))
def test_bad_setting_is_one_line_naming_the_key_and_nothing_is_created(tmp_path, capsys, override):
    out = tmp_path / "runs"
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--out",
            str(out),
            "train.seeds=[1]",
            "model.d_model=8",
            "model.num_heads=2",
            "model.num_layers=1",
            "train.max_epochs=1",
            override,
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("gsit: error:"), err
    assert BAD_SETTINGS[override] in err, err
    assert not out.exists()


def test_accumulation_window_error_names_both_numbers(tmp_path, capsys):
    rc = cli.main(
        [
            "train",
            "--quiet",
            "--out",
            str(tmp_path / "r"),
            "--seeds",
            "1",
            "model.d_model=8",
            "model.num_heads=2",
            "model.num_layers=1",
            "train.batch_size=300",
            "train.update_epochs=5",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "train.accumulation_steps=5" in err and "2 training batch" in err, err


def test_partial_table_override_merges_onto_defaults():
    from gsit.config import build_model_config, load_config

    run = load_config("gsit", "mosi", overrides=["model.kernel_sizes={audio=1}"])
    cfg = build_model_config(run, input_dims={"text": 768, "audio": 5, "vision": 20}, output_dim=1)
    dims = {"text": 768, "audio": 5, "vision": 20}
    preset = build_model_config(load_config("gsit", "mosi"), input_dims=dims, output_dim=1)
    assert cfg.kernel_sizes == {**preset.kernel_sizes, "audio": 1}


@pytest.mark.parametrize("name", ["u\\u0041.pkl", 'q"uote.pkl', "back\\slash.pkl"])
def test_data_and_text_encoder_are_paths_not_toml(tmp_path, name):
    import argparse

    args = argparse.Namespace(
        overrides=[],
        data=str(tmp_path / name),
        text_encoder=str(tmp_path / name),
        seeds=None,
        model="gsit",
        config=None,
    )
    run = commands._load_run(args, "mosi")
    assert run.data.path == str(tmp_path / name) and run.data.text_encoder == str(tmp_path / name)


def test_resume_with_run_dir_is_refused(tmp_path, capsys):
    rc = cli.main(["train", "--resume", str(tmp_path / "a"), "--run-dir", str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert rc == 2 and "--resume" in err and "--run-dir" in err
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------------------
# the last-resort handler; file modes


def test_unexpected_exception_is_one_line_exit_1(monkeypatch, capsys):
    def boom(args):
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr(cli, "cmd_convert", boom)
    rc = cli.main(["convert", "x", "--out", "y"])
    err = capsys.readouterr().err
    assert rc == 1
    assert err.strip().splitlines() == [
        "gsit: error: running gsit convert: RuntimeError: kaput second line "
        "(run with --debug for the traceback)"
    ]
    rc = cli.main(["--debug", "convert", "x", "--out", "y"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" in err and err.strip().endswith("kaput second line")


def test_os_errors_have_no_errno_or_temp_names(tmp_path, monkeypatch):
    from gsit.checkpoint import atomic_write_bytes
    from gsit.errors import GsitError

    d = tmp_path / "ro"
    d.mkdir()
    real_replace = os.replace

    def full(src, dst):
        raise OSError(28, "No space left on device", src)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(GsitError) as err:
        atomic_write_bytes(d / "p.csv", b"x")
    monkeypatch.setattr(os, "replace", real_replace)
    msg = str(err.value)
    assert msg == f"{d / 'p.csv'}: cannot be written (No space left on device)"
    assert list(d.iterdir()) == []


def test_files_honour_the_umask(tmp_path):
    import torch

    from gsit.checkpoint import atomic_save_tensors, atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        atomic_save_tensors(tmp_path / "b.safetensors", {"x": torch.zeros(2)})
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "c.json", b"{}")
    finally:
        os.umask(old)
    mode = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert mode == {"a.json": 0o644, "b.safetensors": 0o644, "c.json": 0o600}


def test_unknown_key_in_a_run_config_json(tmp_path, capsys):
    from gsit.config import load_config
    from gsit.errors import ConfigError
    from gsit.runs import load_run_config

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = load_config("gsit", "synthetic").to_dict()
    for mutate, key in (
        (lambda c: c["train"].update(bogus=1), "bogus"),
        (lambda c: c.update(extra=1), "extra"),
        (lambda c: c["train"].update(seeds="1"), "train.seeds"),
        (lambda c: c["model"].update(d_model=-1), "model.d_model"),
    ):
        c = json.loads(json.dumps(cfg))
        mutate(c)
        (run_dir / "config.json").write_text(json.dumps(c))
        with pytest.raises(ConfigError) as err:
            load_run_config(run_dir)
        assert "config.json" in str(err.value) and key in str(err.value), str(err.value)
    (run_dir / "config.json").write_text("{")
    rc = cli.main(["eval", str(run_dir)])
    err = capsys.readouterr().err
    assert rc == 2 and "config.json" in err and "not valid JSON" in err
