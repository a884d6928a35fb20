"""The restricted unpickler: malicious pickles never run code; broken files give one-line DataErrors."""

from __future__ import annotations

import collections
import os
import pickle
import subprocess
import zipfile

import numpy as np
import pytest

from gsit.data import load_dataset, load_mmsa, load_pickle, make_synthetic, save_converted, write_mmsa_pickle
from gsit.data.convert import load_converted
from gsit.data.safe_pickle import loads_pickle
from gsit.errors import DataError, UnsafePickleError

# ---------------------------------------------------------------------------------------------------------
# malicious payloads


class _OsSystem:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


class _Eval:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (eval, (f"open({self.target!r}, 'w').close()",))


class _Popen:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.target],))


class _Exec:
    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (exec, (f"open({self.target!r}, 'w').close()",))


def _mmsa_layout(payload) -> dict:
    """An otherwise valid-looking MMSA dict with ``payload`` hidden inside one split."""
    data = make_synthetic(n_train=4, n_valid=3, n_test=3, text_len=4, audio_len=5, vision_len=5)
    out = {}
    for name, s in data.splits.items():
        out[name] = {
            "id": s.ids.astype(object),
            "text": s.text,
            "audio": s.audio,
            "vision": s.vision,
            "regression_labels": s.labels,
        }
    out["valid"]["raw_text"] = payload
    return out


PAYLOADS = {
    "os.system": (_OsSystem, "system"),
    "builtins.eval": (_Eval, "builtin"),
    "subprocess.Popen": (_Popen, ".Popen"),  # protocols 0-2 spell it commands.Popen
    "builtins.exec": (_Exec, "builtin"),
}


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_pickle_top_level_is_refused_without_side_effect(tmp_path, kind, protocol):
    cls, needle = PAYLOADS[kind]
    target = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(cls(target), protocol=protocol))
    with pytest.raises(UnsafePickleError) as err:
        load_pickle(path)
    msg = str(err.value)
    assert needle in msg and str(path) in msg
    assert kind.split(".")[1] in msg  # the forbidden global's name (os.system is posix.system on Linux)
    assert not target.exists()


@pytest.mark.parametrize("kind", sorted(PAYLOADS))
def test_malicious_object_hidden_in_mmsa_layout(tmp_path, kind):
    cls, needle = PAYLOADS[kind]
    target = tmp_path / "pwned"
    path = tmp_path / "unaligned_50.pkl"
    path.write_bytes(pickle.dumps(_mmsa_layout(cls(target)), protocol=4))
    with pytest.raises(UnsafePickleError) as err:
        load_dataset(path, dataset="mosi")
    assert needle in str(err.value) and str(path) in str(err.value)
    assert not target.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_numpy_object_array_holding_payload(tmp_path, protocol):
    target = tmp_path / "pwned"
    arr = np.empty(3, dtype=object)
    arr[0], arr[1], arr[2] = "fine", _OsSystem(target), "also fine"
    path = tmp_path / "objarr.pkl"
    path.write_bytes(pickle.dumps({"train": {"raw_text": arr}}, protocol=protocol))
    with pytest.raises(UnsafePickleError) as err:
        load_mmsa(path)
    assert "system" in str(err.value) and str(path) in str(err.value)
    assert not target.exists()


def test_hand_written_global_opcode_is_refused(tmp_path):
    target = tmp_path / "pwned"
    # protocol-0 program: GLOBAL os.system, then call it with one string argument.
    program = f"cos\nsystem\n(S'touch {target}'\ntR.".encode()
    path = tmp_path / "raw.pkl"
    path.write_bytes(program)
    with pytest.raises(UnsafePickleError, match=r"os\.system"):
        load_pickle(path)
    assert not target.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("numpy", "load"),
        ("numpy.lib.npyio", "load"),
        ("copyreg", "_reconstructor"),
        ("torch", "load"),
        ("collections", "namedtuple"),
    ],
)
def test_other_globals_are_refused(module, name):
    program = f"c{module}\n{name}\n.".encode()
    with pytest.raises(UnsafePickleError) as err:
        loads_pickle(program, source="mem.pkl")
    assert f"{module}.{name}" in str(err.value) and "mem.pkl" in str(err.value)


def test_persistent_ids_are_refused():
    program = b"Pabc\n."
    with pytest.raises(UnsafePickleError, match="persistent"):
        loads_pickle(program, source="mem.pkl")


class _Forge:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _numpy_internals():
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


def test_forged_object_array_from_raw_bytes_is_refused():
    """_frombuffer / scalar with an object dtype would turn raw bytes into object pointers."""
    multiarray, numeric = _numpy_internals()
    forged = _Forge(numeric._frombuffer, (b"\x01" * 16, np.dtype("O"), (2,), "C"))
    with pytest.raises(UnsafePickleError, match="object-dtype"):
        loads_pickle(pickle.dumps(forged, protocol=2), source="mem.pkl")
    forged = _Forge(multiarray.scalar, (np.dtype("O"), b"\x01" * 8))
    with pytest.raises(UnsafePickleError, match="object-dtype"):
        loads_pickle(pickle.dumps(forged, protocol=2), source="mem.pkl")
    forged = _Forge(multiarray.scalar, (np.dtype([("a", "O"), ("b", "f4")]), b"\x01" * 12))
    with pytest.raises(UnsafePickleError, match="'V12' is not a plain"):
        loads_pickle(pickle.dumps(forged, protocol=2), source="mem.pkl")


def test_reconstruct_refuses_non_ndarray_subtype():
    multiarray, _ = _numpy_internals()
    forged = _Forge(multiarray._reconstruct, (collections.OrderedDict, (0,), b"b"))
    with pytest.raises(UnsafePickleError, match="ndarray"):
        loads_pickle(pickle.dumps(forged, protocol=2), source="mem.pkl")


# ---------------------------------------------------------------------------------------------------------
# legitimate content round-trips


@pytest.mark.parametrize("protocol", list(range(0, pickle.HIGHEST_PROTOCOL + 1)))
def test_legitimate_content_round_trips(protocol):
    obj = {
        "floats": np.arange(12, dtype=np.float32).reshape(3, 4),
        "f64": np.linspace(-1, 1, 5),
        "ints": np.arange(4, dtype=np.int64),
        "strings": np.array(["a", "bc", "déf"]),
        "objects": np.array(["x$_$1", "y$_$2"], dtype=object),
        "scalar": np.float32(1.5),
        "iscalar": np.int64(-3),
        "py": [1, 2.5, "s", b"bytes", True, None, (1, 2), {3, 4}, frozenset({5}), 1 + 2j, bytearray(b"ab")],
        "ordered": collections.OrderedDict([("a", 1), ("b", [np.zeros(2)])]),
        "empty": np.zeros((0, 3), dtype=np.float32),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
        "bool": np.array([True, False]),
    }
    got = loads_pickle(pickle.dumps(obj, protocol=protocol), source="mem.pkl")
    assert got.keys() == obj.keys()
    for key in ("floats", "f64", "ints", "strings", "objects", "empty", "fortran", "bool"):
        assert got[key].dtype == obj[key].dtype
        np.testing.assert_array_equal(got[key], obj[key])
    assert got["scalar"] == np.float32(1.5) and got["iscalar"] == -3
    assert got["py"] == obj["py"]
    assert isinstance(got["ordered"], collections.OrderedDict)


# ---------------------------------------------------------------------------------------------------------
# broken files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pkl"
    with pytest.raises(DataError, match="file not found") as err:
        load_pickle(path)
    assert str(path) in str(err.value)


def test_directory_instead_of_file(tmp_path):
    path = tmp_path / "dir.pkl"
    path.mkdir()
    with pytest.raises(DataError, match="is a directory") as err:
        load_pickle(path)
    assert str(path) in str(err.value)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pkl"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="empty") as err:
        load_pickle(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.95])
def test_truncated_file(tmp_path, keep):
    data = make_synthetic(n_train=3, n_valid=2, n_test=2, text_len=4, audio_len=4, vision_len=4)
    full = tmp_path / "full.pkl"
    write_mmsa_pickle(data, full)
    raw = full.read_bytes()
    path = tmp_path / "cut.pkl"
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(DataError) as err:
        load_pickle(path)
    assert str(path) in str(err.value)
    assert not isinstance(err.value, UnsafePickleError)


def test_garbage_file(tmp_path):
    path = tmp_path / "garbage.pkl"
    path.write_bytes(b"this is not a pickle at all\n")
    with pytest.raises(DataError, match="not a readable pickle") as err:
        load_pickle(path)
    assert str(path) in str(err.value)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read any file")
def test_unreadable_file_permissions(tmp_path):
    path = tmp_path / "secret.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    path.chmod(0)
    try:
        with pytest.raises(DataError, match="permission denied") as err:
            load_pickle(path)
        assert str(path) in str(err.value)
    finally:
        path.chmod(0o600)


def test_permission_error_is_reported(tmp_path, monkeypatch):
    import gsit.data.safe_pickle as sp

    path = tmp_path / "secret.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))

    def deny(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(sp, "open", deny, raising=False)
    with pytest.raises(DataError, match="permission denied") as err:
        load_pickle(path)
    assert str(path) in str(err.value)


def test_error_messages_are_one_sentence(tmp_path):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(_OsSystem(tmp_path / "x")))
    with pytest.raises(DataError) as err:
        load_pickle(path)
    msg = str(err.value)
    assert "\n" not in msg and msg.endswith(".")


# ---------------------------------------------------------------------------------------------------------
# the converted format never unpickles; writers never overwrite


def test_converted_npz_with_object_array_is_refused_without_side_effect(tmp_path):
    data = make_synthetic(n_train=4, n_valid=3, n_test=3, text_len=4, audio_len=4, vision_len=4)
    out = save_converted(data, tmp_path / "conv")
    target = tmp_path / "pwned"
    arrays = {}
    with np.load(out / "data.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    bad = np.empty(4, dtype=object)
    bad[:] = [_OsSystem(target)] * 4
    arrays["train/ids"] = bad
    (out / "data.npz").unlink()
    np.savez(out / "data.npz", **arrays)  # numpy pickles the object array here
    with pytest.raises(DataError) as err:
        load_converted(out)
    assert "data.npz" in str(err.value)
    assert not target.exists()


def test_converted_corrupt_npz(tmp_path):
    data = make_synthetic(n_train=4, n_valid=3, n_test=3, text_len=4, audio_len=4, vision_len=4)
    out = save_converted(data, tmp_path / "conv")
    (out / "data.npz").write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(DataError, match="data.npz"):
        load_dataset(out)
    assert not zipfile.is_zipfile(out / "data.npz")


def test_save_converted_never_overwrites(tmp_path):
    data = make_synthetic(n_train=4, n_valid=3, n_test=3, text_len=4, audio_len=4, vision_len=4)
    out = tmp_path / "conv"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="not empty") as err:
        save_converted(data, out)
    assert str(out) in str(err.value)
    assert (out / "keep.txt").read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv"]  # no temp dir left behind


def test_write_mmsa_pickle_never_overwrites(tmp_path):
    data = make_synthetic(n_train=4, n_valid=3, n_test=3, text_len=4, audio_len=4, vision_len=4)
    path = tmp_path / "x.pkl"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        write_mmsa_pickle(data, path)
    assert path.read_bytes() == b"precious"


def test_no_plain_pickle_load_in_data_package():
    """Guard: the data package never calls pickle.load/loads directly."""
    import pathlib

    import gsit.data

    root = pathlib.Path(gsit.data.__file__).parent
    plain_calls = [
        "pickle." + name + "(" for name in ("load", "loads")
    ]  # spelled so this file does not match
    for f in root.glob("*.py"):
        text = f.read_text()
        assert not any(call in text for call in plain_calls), f
        assert "allow_pickle=True" not in text, f
