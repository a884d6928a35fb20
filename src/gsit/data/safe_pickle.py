"""A restricted unpickler for MMSA-style data pickles.

A pickle can name any importable callable and make the loader call it (``os.system``, ``eval``, ...), so
data files are never read with plain :func:`pickle.load`.  :class:`SafeUnpickler` only resolves the globals
that pickles of plain containers and numpy arrays need:

* builtins: ``dict list tuple set frozenset str bytes bytearray int float complex bool``;
* ``collections.OrderedDict``;
* ``_codecs.encode`` (protocol-2 pickles written by Python 3 store ``bytes`` through it);
* numpy array / dtype / scalar reconstruction, under both the numpy 1 (``numpy.core``) and numpy 2
  (``numpy._core``) module names: ``_reconstruct``, ``ndarray``, ``dtype``, ``scalar`` and ``_frombuffer``.

Every other global raises :class:`~gsit.errors.UnsafePickleError` before anything is called.  The numpy
helpers are wrapped so that they also refuse object dtypes built from raw bytes (numpy refuses these
itself; the wrappers are a second line).  Object arrays whose elements arrive as a pickled list are fine:
each element goes through this same ``find_class``.
"""

from __future__ import annotations

import _codecs
import builtins
import collections
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from gsit.data._util import detail
from gsit.errors import DataError, UnsafePickleError

__all__ = ["SafeUnpickler", "load_pickle", "loads_pickle", "ALLOWED_GLOBALS"]

_BUILTIN_NAMES = (
    "dict",
    "list",
    "tuple",
    "set",
    "frozenset",
    "str",
    "bytes",
    "bytearray",
    "int",
    "float",
    "complex",
    "bool",
)


def _numpy_core():
    """numpy's ``multiarray`` and ``numeric`` modules (``numpy._core`` on numpy 2, else ``numpy.core``)."""
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


_multiarray, _numeric = _numpy_core()


def _checked_dtype(dtype: Any, what: str) -> np.dtype:
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError(f"{what} was given {type(dtype).__name__!r} instead of a numpy dtype")
    if dtype.hasobject:
        raise UnsafePickleError(f"{what} was asked to build an object-dtype value from raw bytes")
    return dtype


def _safe_scalar(dtype, *args):
    _checked_dtype(dtype, "numpy scalar reconstruction")
    return _multiarray.scalar(dtype, *args)


def _safe_frombuffer(buf, dtype, shape, order):
    _checked_dtype(dtype, "numpy _frombuffer")
    return _numeric._frombuffer(buf, dtype, shape, order)


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not np.ndarray:
        raise UnsafePickleError("numpy _reconstruct was asked for a type other than numpy.ndarray")
    return _multiarray._reconstruct(subtype, shape, dtype)


def _build_allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for name in _BUILTIN_NAMES:
        allowed[("builtins", name)] = getattr(builtins, name)
        allowed[("__builtin__", name)] = getattr(builtins, name)  # Python 2 pickles
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("_codecs", "encode")] = _codecs.encode
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _safe_reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = _safe_scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _safe_frombuffer
    allowed[("numpy", "ndarray")] = np.ndarray
    allowed[("numpy", "dtype")] = np.dtype
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _build_allowed()


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` resolves only :data:`ALLOWED_GLOBALS` (no imports)."""

    def __init__(self, file, *, source: str = "<bytes>"):
        # latin1 lets numpy arrays written by Python 2 load; Python 3 pickles are unaffected.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self._source}: the pickle refers to the global {module}.{name}, "
                "which gsit refuses to load "
                "(only containers and numpy arrays are allowed, so no code from a data file ever runs)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self._source}: the pickle uses persistent ids, which gsit refuses to load."
        )


def _load_from(fh, source: str) -> Any:
    try:
        return SafeUnpickler(fh, source=source).load()
    except UnsafePickleError as exc:
        msg = str(exc)
        if not msg.startswith(source):
            msg = f"{source}: {msg}."
        raise UnsafePickleError(msg) from None
    except DataError:
        raise
    except EOFError:
        raise DataError(f"{source}: the pickle is truncated (unexpected end of file).") from None
    except MemoryError:
        raise DataError(f"{source}: the pickle needs more memory than is available to load.") from None
    except Exception as exc:  # UnpicklingError, ValueError, TypeError, ... from corrupt data
        raise DataError(f"{source}: not a readable pickle ({type(exc).__name__}: {detail(exc)}).") from None


def loads_pickle(data: bytes, *, source: str = "<bytes>") -> Any:
    """Safely unpickle ``data`` (bytes) with :class:`SafeUnpickler`."""
    if not data:
        raise DataError(f"{source}: the pickle is empty (0 bytes).")
    return _load_from(io.BytesIO(data), source)


def load_pickle(path: str | os.PathLike) -> Any:
    """Safely load the pickle at ``path``; only containers, scalars and numpy arrays are reconstructed.

    Raises :class:`~gsit.errors.DataError` (naming the file) when it is missing, a directory, empty,
    unreadable, truncated or corrupt, and :class:`~gsit.errors.UnsafePickleError` when it names any other
    global (the forbidden ``module.name`` is in the message; nothing it names is called).
    """
    p = Path(path)
    source = str(p)
    if not p.exists():
        raise DataError(f"{source}: file not found.")
    if p.is_dir():
        raise DataError(f"{source}: is a directory, but a pickle file was expected.")
    try:
        fh = open(p, "rb")
    except PermissionError:
        raise DataError(f"{source}: permission denied when opening the file for reading.") from None
    except OSError as exc:
        raise DataError(f"{source}: cannot be opened ({exc.strerror or detail(exc)}).") from None
    with fh:
        try:
            first = fh.peek(1)[:1] if hasattr(fh, "peek") else fh.read(1)
        except OSError as exc:
            raise DataError(f"{source}: cannot be read ({exc.strerror or detail(exc)}).") from None
        if not first:
            raise DataError(f"{source}: the file is empty (0 bytes), so it is not a pickle.")
        if not hasattr(fh, "peek"):  # pragma: no cover - open(..., 'rb') is always buffered
            fh.seek(0)
        return _load_from(fh, source)
