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
names resolve to stand-ins, never to numpy's own constructors:

* ``numpy.dtype`` accepts only plain type codes (bool, int, uint, float, complex, ``U``/``S`` strings,
  object) and builds the dtype itself from the BUILD state (byte order and string width only):
  numpy's ``dtype.__setstate__``, which trusts pickled flags, fields and item sizes, is never called, so
  no structured, subarray or lying dtype can exist;
* ``numpy.ndarray`` cannot be called (no array view on a raw buffer with chosen strides or offset);
  ``_reconstruct`` makes an empty placeholder whose BUILD state must give a shape, a dtype built as
  above and exactly ``prod(shape) * itemsize`` bytes (object arrays: exactly ``prod(shape)`` items as a
  list, each unpickled by these same rules);
* ``scalar`` and ``_frombuffer`` refuse object dtypes and any byte count that does not match.

BUILD on anything but these dtypes and arrays is refused.  A bad pickle raises one DataError naming
the file; nothing in it is ever executed and no memory outside what it supplied is read.
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


_SIZED_KINDS = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8, 16), "c": (8, 16, 32)}
_MAX_NDIM = 32  # numpy's own limit (64 on numpy 2); deeper shapes are refused before numpy sees them


class _DtypeSpec:
    """What the pickle's ``numpy.dtype(...)`` call asked for.  The real dtype is built from scratch only
    from a plain type code and a validated BUILD state; numpy's ``dtype.__setstate__`` is never called,
    because it trusts the pickled flags, fields and itemsize (a dtype claiming ``hasobject == False``
    while storing object pointers, or a field outside the itemsize, reads arbitrary memory)."""

    __slots__ = ("code", "dtype")

    def __repr__(self) -> str:
        return f"numpy dtype {self.code!r}"

    def __init__(self, code: str) -> None:
        self.code = code
        self.dtype: np.dtype | None = None

    def build(self, state: Any) -> None:
        if self.dtype is not None:
            raise UnsafePickleError(f"the numpy dtype {self.code!r} is given a state twice")
        if not isinstance(state, tuple) or len(state) not in (8, 9) or state[0] not in (3, 4):
            raise UnsafePickleError(f"the numpy dtype {self.code!r} has an unsupported pickled state")
        endian, subdescr, names, fields, elsize = state[1:6]
        metadata = state[8] if len(state) == 9 else None
        if subdescr is not None or names is not None or fields is not None:
            raise UnsafePickleError(
                f"the numpy dtype {self.code!r} is a structured or subarray dtype, which gsit refuses "
                "(data pickles hold only plain numeric, bool, string and object arrays)"
            )
        if metadata:
            raise UnsafePickleError(f"the numpy dtype {self.code!r} carries metadata, which gsit refuses")
        if endian not in ("<", ">", "|", "="):
            raise UnsafePickleError(f"the numpy dtype {self.code!r} has the byte order {endian!r}")
        if isinstance(elsize, bool) or not isinstance(elsize, int):
            raise UnsafePickleError(f"the numpy dtype {self.code!r} has a non-integer item size")
        kind = self.code[0]
        if kind in "US":
            width = 4 if kind == "U" else 1
            if elsize < 0 or elsize % width or elsize > (1 << 31):
                raise UnsafePickleError(f"the numpy dtype {self.code!r} has the item size {elsize}")
            dt = np.dtype(f"{kind}{elsize // width}")
        else:
            dt = np.dtype(self.code)
            if elsize not in (-1, dt.itemsize):
                raise UnsafePickleError(
                    f"the numpy dtype {self.code!r} claims the item size {elsize}, but it is {dt.itemsize}"
                )
        if endian in "<>" and dt.itemsize > 1 and kind != "O":
            dt = dt.newbyteorder(endian)
        self.dtype = dt


def _new_dtype(code: Any, align: Any = False, copy: Any = False) -> _DtypeSpec:
    """Stands in for ``numpy.dtype`` in a pickle: accepts only plain type codes (see :class:`_DtypeSpec`)."""
    if isinstance(code, bytes):
        code = code.decode("latin1")
    if not isinstance(code, str) or not isinstance(align, bool) or not isinstance(copy, bool):
        raise UnsafePickleError(
            f"numpy dtype reconstruction was given {code!r}, which is not a plain type code"
        )
    kind, size = code[:1], code[1:]
    ok = False
    if kind in _SIZED_KINDS:
        ok = size.isdigit() and int(size) in _SIZED_KINDS[kind]
    elif kind in "US":
        ok = size == "" or (size.isdigit() and len(size) <= 10)
    elif kind == "O":
        ok = size in ("", "4", "8")
    if not ok:
        raise UnsafePickleError(
            f"the numpy dtype {code!r} is not a plain numeric, bool, string or object dtype, "
            "which gsit refuses"
        )
    return _DtypeSpec(code)


def _resolve_dtype(dtype: Any, what: str) -> np.dtype:
    if isinstance(dtype, _DtypeSpec):
        if dtype.dtype is None:
            # numpy always pickles a dtype with its state; a bare type code is still plain and safe
            dtype.build((3, "|", None, None, None, -1, -1, 0))
        return dtype.dtype
    if isinstance(dtype, np.dtype):  # only _DtypeSpec builds dtypes here, but accept what it built
        return dtype
    raise UnsafePickleError(f"{what} was given {type(dtype).__name__!r} instead of a numpy dtype")


def _checked_dtype(dtype: Any, what: str) -> np.dtype:
    dt = _resolve_dtype(dtype, what)
    if dt.hasobject:
        raise UnsafePickleError(f"{what} was asked to build an object-dtype value from raw bytes")
    return dt


def _shape(shape: Any, what: str) -> tuple[int, ...]:
    if (
        not isinstance(shape, tuple)
        or len(shape) > _MAX_NDIM
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise UnsafePickleError(f"{what} was given the shape {shape!r}, which is not a tuple of sizes >= 0")
    return shape


def _count(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _safe_scalar(dtype, obj=None):
    dt = _checked_dtype(dtype, "numpy scalar reconstruction")
    if isinstance(obj, str):  # Python 2 pickles
        obj = obj.encode("latin1")
    if not isinstance(obj, bytes) or len(obj) != dt.itemsize:
        raise UnsafePickleError(
            f"numpy scalar reconstruction of {dt} was given {type(obj).__name__} data "
            f"instead of {dt.itemsize} bytes"
        )
    return _multiarray.scalar(dt, obj)


def _safe_frombuffer(buf, dtype, shape, order):
    dt = _checked_dtype(dtype, "numpy _frombuffer")
    shape = _shape(shape, "numpy _frombuffer")
    if isinstance(buf, pickle.PickleBuffer):
        buf = buf.raw()
    if not isinstance(buf, (bytes, bytearray, memoryview)) or order not in ("C", "F"):
        raise UnsafePickleError(
            "numpy _frombuffer was given something other than a byte buffer and C/F order"
        )
    size = memoryview(buf).nbytes
    if size != _count(shape) * dt.itemsize:
        raise UnsafePickleError(
            f"numpy _frombuffer was given {size} bytes for shape {shape} of {dt} "
            f"({_count(shape) * dt.itemsize} bytes expected)"
        )
    return np.frombuffer(buf, dtype=dt).reshape(shape, order=order)


def _safe_reconstruct(subtype, shape, dtype):
    if subtype is not _NDARRAY:
        raise UnsafePickleError("numpy _reconstruct was asked for a type other than numpy.ndarray")
    if dtype not in (b"b", "b"):
        raise UnsafePickleError(f"numpy _reconstruct was given the placeholder dtype {dtype!r}")
    _shape(shape, "numpy _reconstruct")
    return np.ndarray((0,), dtype=np.uint8)  # a placeholder; the BUILD state sets shape, dtype and data


class _NdarrayType:
    """Stands in for ``numpy.ndarray`` in a pickle: only ``_reconstruct`` accepts it; calling it (an array
    view on a raw buffer with arbitrary strides and offset) is refused."""

    def __call__(self, *args, **kwargs):
        raise UnsafePickleError("the pickle calls numpy.ndarray directly, which gsit refuses")

    def __repr__(self) -> str:
        return "numpy.ndarray"


_NDARRAY = _NdarrayType()


def _build_array(arr: np.ndarray, state: Any) -> None:
    """Apply a pickled ndarray state after checking it (numpy's ``__setstate__`` gets only a dtype built
    here, a validated shape, and exactly as many bytes -- or list items for object arrays -- as it needs)."""
    what = "a numpy array"
    if not isinstance(state, tuple) or len(state) not in (4, 5):
        raise UnsafePickleError(f"{what} has an unsupported pickled state")
    if len(state) == 5:
        if state[0] != 1:
            raise UnsafePickleError(f"{what} has the unsupported pickle version {state[0]!r}")
        state = state[1:]
    shape, dtype, fortran, raw = state
    shape = _shape(shape, what)
    dt = _resolve_dtype(dtype, what)
    if not isinstance(fortran, (bool, int)) or fortran not in (0, 1):
        raise UnsafePickleError(f"{what} has the order flag {fortran!r}")
    n = _count(shape)
    if dt.hasobject:
        if not isinstance(raw, list) or len(raw) != n:
            raise UnsafePickleError(
                f"an object array of shape {shape} must be given its {n} items as a list, not raw data"
            )
    else:
        if isinstance(raw, str):  # Python 2 pickles store the raw bytes as a latin-1 str
            raw = raw.encode("latin1")
        if not isinstance(raw, (bytes, bytearray)):
            raise UnsafePickleError(f"{what} of {dt} was given {type(raw).__name__} instead of raw bytes")
        if len(raw) != n * dt.itemsize:
            raise UnsafePickleError(
                f"{what} of shape {shape} and {dt} was given {len(raw)} bytes ({n * dt.itemsize} expected)"
            )
    arr.__setstate__((1, shape, dt, bool(fortran), raw))


def _safe_bytes(*args):
    if args and isinstance(args[0], int):
        raise UnsafePickleError("the pickle asks for bytes of a given length, which gsit refuses")
    return bytes(*args)


def _safe_bytearray(*args):
    if args and isinstance(args[0], int):
        raise UnsafePickleError("the pickle asks for a bytearray of a given length, which gsit refuses")
    return bytearray(*args)


def _build_allowed() -> dict[tuple[str, str], Any]:
    allowed: dict[tuple[str, str], Any] = {}
    for name in _BUILTIN_NAMES:
        obj = {"bytes": _safe_bytes, "bytearray": _safe_bytearray}.get(name, getattr(builtins, name))
        allowed[("builtins", name)] = obj
        allowed[("__builtin__", name)] = obj  # Python 2 pickles
    allowed[("collections", "OrderedDict")] = collections.OrderedDict
    allowed[("_codecs", "encode")] = _codecs.encode
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = _safe_reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = _safe_scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = _safe_frombuffer
    allowed[("numpy", "ndarray")] = _NDARRAY
    allowed[("numpy", "dtype")] = _new_dtype
    return allowed


ALLOWED_GLOBALS: dict[tuple[str, str], Any] = _build_allowed()


class SafeUnpickler(pickle._Unpickler):
    """A pure-Python unpickler whose ``find_class`` resolves only :data:`ALLOWED_GLOBALS` (no imports)
    and whose BUILD opcode only completes numpy dtypes and arrays after checking their state (no
    ``__setstate__`` of any other object, and never numpy's ``dtype.__setstate__``).  The pure-Python
    unpickler is used because the C one offers no hook for BUILD; data pickles are a few large byte
    strings, so it costs little."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, *, source: str = "<bytes>"):
        # latin1 lets numpy arrays written by Python 2 load; Python 3 pickles are unaffected.
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:  # noqa: D401 - pickle API
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except (KeyError, TypeError):
            raise UnsafePickleError(
                f"{self._source}: the pickle refers to the global {module}.{name}, "
                "which gsit refuses to load "
                "(only containers and numpy arrays are allowed, so no code from a data file ever runs)."
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(
            f"{self._source}: the pickle uses persistent ids, which gsit refuses to load."
        )

    def where(self) -> str:
        """``"at key 'train' -> 'id': "`` -- the dict keys whose values were being read, best effort: a
        frame opened by MARK right after an empty dict holds alternating keys and values (SETITEMS), and
        a dict followed by a key in one frame is a SETITEM under way."""
        try:
            frames = [*self.metastack, self.stack]
        except AttributeError:  # load() not started
            return ""
        keys = []

        def add(key) -> None:
            if isinstance(key, (str, int)) and not isinstance(key, bool):
                keys.append(repr(key))

        for i, frame in enumerate(frames):
            if i > 0 and frames[i - 1] and isinstance(frames[i - 1][-1], dict) and frame:
                add(frame[(len(frame) - 1) // 2 * 2])
            for j in range(len(frame) - 2):
                if isinstance(frame[j], dict) and isinstance(frame[j + 1], str):
                    add(frame[j + 1])
        return f"at key {' -> '.join(keys)}: " if keys else ""

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, _DtypeSpec):
            inst.build(state)
        elif type(inst) is np.ndarray:
            _build_array(inst, state)
        else:
            raise UnsafePickleError(
                f"the pickle sets the state of a {type(inst).__name__}, which gsit refuses "
                "(only numpy dtypes and arrays are given a state)"
            )

    dispatch[pickle.BUILD[0]] = load_build


def _walk(obj: Any, source: str) -> None:
    """Refuse a stand-in left in the result: a bare dtype or the ndarray type (only arrays use them)."""
    stack = [obj]
    seen: set[int] = set()
    while stack:
        o = stack.pop()
        if id(o) in seen:
            continue
        seen.add(id(o))
        if isinstance(o, (_DtypeSpec, _NdarrayType)):
            raise UnsafePickleError(f"{source}: the pickle holds a bare {o!r}, which gsit refuses.")
        if isinstance(o, dict):
            stack.extend(o.keys())
            stack.extend(o.values())
        elif isinstance(o, (list, tuple, set, frozenset)):
            stack.extend(o)
        elif isinstance(o, np.ndarray) and o.dtype.hasobject:
            stack.extend(o.ravel().tolist())


def _load_from(fh, source: str) -> Any:
    unpickler = SafeUnpickler(fh, source=source)
    try:
        obj = unpickler.load()
        _walk(obj, source)
        return obj
    except UnsafePickleError as exc:
        msg = str(exc)
        if msg.startswith(source + ": "):
            msg = msg[len(source) + 2 :]
        raise UnsafePickleError(f"{source}: {unpickler.where()}{msg.rstrip('.')}.") from None
    except DataError:
        raise
    except EOFError:
        raise DataError(f"{source}: the pickle is truncated (unexpected end of file).") from None
    except MemoryError:
        raise DataError(f"{source}: the pickle needs more memory than is available to load.") from None
    except RecursionError:
        raise DataError(f"{source}: the pickle nests containers too deeply to be read.") from None
    except Exception as exc:  # UnpicklingError, ValueError, TypeError, ... from corrupt data
        raise DataError(
            f"{source}: {unpickler.where()}not a readable pickle ({type(exc).__name__}: {detail(exc)})."
        ) from None


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
