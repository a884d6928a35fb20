"""A code-free on-disk format: a directory with ``data.npz`` + ``meta.json``.

``data.npz`` holds one array per ``{split}/{key}`` (keys: ``audio vision labels ids text text_bert
text_lengths audio_lengths vision_lengths raw_text`` and ``extra/{name}`` for extra labels), written with
``allow_pickle=False`` (strings as unicode ``<U`` arrays) and read back with ``allow_pickle=False``, so
loading it can never run code.  ``meta.json`` holds the format name and version, task, dataset,
num_classes, label_names, source and split sizes.  Writing goes to a temporary sibling directory that is
renamed into place, and never overwrites a non-empty directory.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from gsit.data._util import detail, read_json
from gsit.data.dataset import SPLIT_NAMES, MultimodalData, Split, normalize_dataset_name
from gsit.errors import DataError

__all__ = ["save_converted", "load_converted", "is_converted_dir", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "gsit-multimodal"
FORMAT_VERSION = 1
META_FILE = "meta.json"
DATA_FILE = "data.npz"
_CORE_KEYS = ("audio", "vision", "labels", "ids")
_OPTIONAL_KEYS = ("text", "text_bert", "text_lengths", "audio_lengths", "vision_lengths", "raw_text")


def is_converted_dir(path: str | os.PathLike) -> bool:
    p = Path(path)
    return p.is_dir() and (p / META_FILE).is_file()


def _to_unicode(arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind == "U":
        return arr
    vals = [v.decode("utf-8", errors="replace") if isinstance(v, bytes) else str(v) for v in arr.tolist()]
    return np.array(vals, dtype=str) if vals else np.zeros(0, dtype="<U1")


def _split_arrays(s: Split) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for key in _CORE_KEYS + _OPTIONAL_KEYS:
        arr = getattr(s, key)
        if arr is None:
            continue
        arr = np.asarray(arr)
        if key in ("ids", "raw_text"):
            arr = _to_unicode(arr)
        if arr.dtype.kind == "O":
            raise DataError(
                f"split '{s.name}' key '{key}' has dtype object, which the npz format cannot store."
            )
        out[f"{s.name}/{key}"] = arr
    for name, arr in s.extra_labels.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "O" or "/" in name:
            raise DataError(f"split '{s.name}' extra label '{name}' cannot be stored in the npz format.")
        out[f"{s.name}/extra/{name}"] = arr
    return out


def save_converted(data: MultimodalData, out_dir: str | os.PathLike) -> Path:
    """Write ``data`` to ``out_dir`` and return its path (refused when it exists and is not empty)."""
    out = Path(out_dir)
    if out.exists():
        if not out.is_dir():
            raise DataError(f"{out}: exists and is not a directory, so it will not be overwritten.")
        if any(out.iterdir()):
            raise DataError(f"{out}: the directory exists and is not empty, so it will not be overwritten.")
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    arrays: dict[str, np.ndarray] = {}
    for name in SPLIT_NAMES:
        if name not in data.splits:
            raise DataError(f"{data.source}: split '{name}' is missing, so the data cannot be converted.")
        arrays.update(_split_arrays(data.splits[name]))
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "task": data.task,
        "dataset": data.dataset,
        "num_classes": data.num_classes,
        "label_names": list(data.label_names) if data.label_names is not None else None,
        "source": str(data.source),
        "splits": {name: len(data.splits[name]) for name in SPLIT_NAMES},
    }
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        with open(tmp / DATA_FILE, "wb") as fh:
            # Object arrays were refused above, so nothing here is pickled (numpy 1.x savez has no
            # allow_pickle argument, so it is not passed).
            np.savez(fh, **arrays)
        with open(tmp / META_FILE, "w", encoding="utf-8") as fh:
            json.dump(meta, fh, indent=2, sort_keys=True)
            fh.write("\n")
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's 0o700 -> what a plain mkdir gives
        if out.exists():
            out.rmdir()  # empty (checked above); os.replace onto it would also work on POSIX
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


_META_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "format": ((str,), "a string"),
    "format_version": ((int,), "an integer"),
    "task": ((str,), "a string"),
    "dataset": ((str, type(None)), "a string or null"),
    "num_classes": ((int, type(None)), "an integer or null"),
    "label_names": ((list, type(None)), "a list of strings or null"),
    "source": ((str,), "a string"),
    "splits": ((dict,), "an object of split sizes"),
}


def _read_meta(d: Path) -> dict:
    """``meta.json`` checked against its schema: every known key with its type (nothing nested beyond
    ``label_names`` strings and ``splits`` sizes); unknown keys are refused."""
    meta_path = d / META_FILE
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise DataError(f"{meta_path}: holds a {type(meta).__name__}, but a JSON object is expected.")
    if meta.get("format") != FORMAT_NAME:
        raise DataError(
            f"{meta_path}: key 'format' is {meta.get('format')!r}, but {FORMAT_NAME!r} is expected."
        )
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise DataError(
            f"{meta_path}: key 'format_version' is {version!r}, but this gsit reads version {FORMAT_VERSION}."
        )
    unknown = sorted(set(meta) - set(_META_TYPES))
    if unknown:
        raise DataError(f"{meta_path}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_META_TYPES))}).")
    for key, (types, what) in _META_TYPES.items():
        if key in ("dataset", "num_classes", "label_names", "splits", "source") and key not in meta:
            continue
        value = meta.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise DataError(f"{meta_path}: key '{key}' is {_short(value)}, but {what} is expected.")
    if meta.get("task") not in ("regression", "classification"):
        raise DataError(
            f"{meta_path}: key 'task' is {meta.get('task')!r}; expected 'regression' or 'classification'."
        )
    k = meta.get("num_classes")
    if k is not None and not 2 <= k <= 100_000:
        raise DataError(f"{meta_path}: key 'num_classes' is {k}, but 2 to 100000 classes are expected.")
    names = meta.get("label_names")
    if names is not None:
        bad = [i for i, n in enumerate(names) if not isinstance(n, str)]
        if bad:
            raise DataError(
                f"{meta_path}: key 'label_names' holds {_short(names[bad[0]])} at index {bad[0]}, "
                "but strings are expected."
            )
        if len(set(names)) != len(names):
            dup = next(n for i, n in enumerate(names) if n in names[:i])
            raise DataError(f"{meta_path}: key 'label_names' names {dup!r} twice.")
    if meta.get("dataset") is not None:
        try:
            normalize_dataset_name(meta["dataset"])
        except DataError as exc:
            raise DataError(f"{meta_path}: key 'dataset': {exc}") from None
    for split, size in (meta.get("splits") or {}).items():
        if split not in SPLIT_NAMES or not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise DataError(
                f"{meta_path}: key 'splits' has {split!r}: {_short(size)}, but sizes >= 0 of "
                f"{', '.join(SPLIT_NAMES)} are expected."
            )
    return meta


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, (dict, list)) else type(value).__name__
    text = {"dict": "an object", "list": "a list"}.get(text, text)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_npz_members(npz_path: Path) -> None:
    """Refuse, before numpy allocates anything, a member whose ``.npy`` header declares more (or less) data
    than the member holds: numpy would otherwise allocate ``prod(shape) * itemsize`` bytes first (a
    60-byte member can declare terabytes).  The zip's own sizes are checked against the archive too."""
    try:
        archive_size = npz_path.stat().st_size
        with zipfile.ZipFile(npz_path) as zf:
            for info in zf.infolist():
                name = info.filename
                key = name[:-4] if name.endswith(".npy") else name
                if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
                    raise DataError(
                        f"{npz_path}: member '{key}' claims {info.file_size} bytes but stores "
                        f"{info.compress_size}."
                    )
                # deflate cannot expand more than ~1032:1; a larger claim is a lie
                if (
                    info.file_size > 1100 * info.compress_size + 4096
                    or info.header_offset + info.compress_size > archive_size
                ):
                    raise DataError(
                        f"{npz_path}: member '{key}' claims {info.file_size} bytes, which the archive "
                        f"({archive_size} bytes) cannot hold."
                    )
                with zf.open(info) as fh:
                    try:
                        version = np.lib.format.read_magic(fh)
                        if version == (1, 0):
                            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(fh)
                        elif version in ((2, 0), (3, 0)):
                            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(fh)
                        else:
                            raise ValueError(f"unsupported .npy format version {version}")
                    except ValueError as exc:
                        raise DataError(
                            f"{npz_path}: member '{key}' has no readable .npy header ({detail(exc)})."
                        ) from None
                    header_len = fh.tell()
                if dtype.hasobject:
                    raise DataError(
                        f"{npz_path}: member '{key}' holds an object array, which is never unpickled."
                    )
                count = 1
                for dim in shape:
                    count *= int(dim)
                declared = count * dtype.itemsize
                if declared != info.file_size - header_len:
                    raise DataError(
                        f"{npz_path}: member '{key}' declares shape {tuple(int(x) for x in shape)} "
                        f"of {dtype} "
                        f"({declared} bytes), but holds {info.file_size - header_len} bytes of data."
                    )
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise DataError(f"{npz_path}: is not a readable npz archive ({detail(exc)}).") from None
    except OSError as exc:
        raise DataError(f"{npz_path}: cannot be read ({detail(exc)}).") from None


def load_converted(path: str | os.PathLike) -> MultimodalData:
    """Read a directory written by :func:`save_converted` (``allow_pickle=False``; not yet validated)."""
    d = Path(path)
    if not d.is_dir():
        raise DataError(f"{d}: not a directory with {META_FILE} and {DATA_FILE}.")
    meta = _read_meta(d)
    npz_path = d / DATA_FILE
    if not npz_path.is_file():
        raise DataError(f"{npz_path}: file not found.")
    _check_npz_members(npz_path)
    fields: dict[str, dict[str, np.ndarray]] = {name: {} for name in SPLIT_NAMES}
    extras: dict[str, dict[str, np.ndarray]] = {name: {} for name in SPLIT_NAMES}
    try:
        with np.load(npz_path, allow_pickle=False) as npz:
            for key in npz.files:
                parts = key.split("/")
                if parts[0] not in fields or len(parts) < 2:
                    raise DataError(f"{npz_path}: unexpected array '{key}' (expected '<split>/<key>').")
                split = parts[0]
                if parts[1] == "extra" and len(parts) == 3:
                    extras[split][parts[2]] = npz[key]
                elif len(parts) == 2 and parts[1] in _CORE_KEYS + _OPTIONAL_KEYS:
                    fields[split][parts[1]] = npz[key]
                else:
                    raise DataError(f"{npz_path}: unexpected array '{key}' in split '{split}'.")
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{npz_path}: is not a readable npz archive ({detail(exc)}).") from None
    except MemoryError:
        raise DataError(f"{npz_path}: needs more memory than is available to load.") from None
    except ValueError as exc:  # e.g. object arrays refused by allow_pickle=False
        raise DataError(f"{npz_path}: holds an array that cannot be read safely ({detail(exc)}).") from None
    except OSError as exc:
        raise DataError(f"{npz_path}: cannot be read ({detail(exc)}).") from None
    splits: dict[str, Split] = {}
    for name in SPLIT_NAMES:
        f = fields[name]
        for key in _CORE_KEYS:
            if key not in f:
                raise DataError(f"{npz_path}: split '{name}' is missing the required key '{key}'.")
        splits[name] = Split(name=name, extra_labels=extras[name], **f)
        declared = (meta.get("splits") or {}).get(name)
        if declared is not None and f["labels"].ndim >= 1 and declared != f["labels"].shape[0]:
            raise DataError(
                f"{d / META_FILE}: key 'splits' gives split '{name}' {declared} samples, but {npz_path} "
                f"holds {f['labels'].shape[0]}."
            )
    label_names = meta.get("label_names")
    return MultimodalData(
        splits=splits,
        source=str(d),
        task=meta["task"],
        num_classes=meta.get("num_classes"),
        label_names=list(label_names) if label_names is not None else None,
        dataset=meta.get("dataset"),
    )
