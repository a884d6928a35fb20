"""In-memory multimodal data: :class:`Split`, :class:`MultimodalData` and :func:`validate`.

Layout (numpy, one row per sample, zero padding at the END of every sequence):

* ``audio`` (N, Ta, Da) float32, ``vision`` (N, Tv, Dv) float32;
* text either as precomputed features ``text`` (N, L, Dt) float32 or as ``text_bert`` (N, 3, L) int64
  (row 0 token ids, row 1 attention mask 0/1, row 2 segment ids), or both;
* ``labels`` (N,) float32 for regression, int64 class ids for classification;
* ``*_lengths`` (N,) int64 valid lengths; ``ids`` (N,) strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gsit.data.spec import DATASETS, canonical_name
from gsit.errors import DataError

__all__ = [
    "Split",
    "MultimodalData",
    "validate",
    "SPLIT_NAMES",
    "DATASET_LABEL_RANGES",
    "normalize_dataset_name",
    "check_token_ids",
]

SPLIT_NAMES = ("train", "valid", "test")

# Dataset facts (label ranges, classes, aliases) live in gsit.data.spec; these two views keep their names.
DATASET_LABEL_RANGES: dict[str, tuple[float, float]] = {
    n: s.label_range for n, s in DATASETS.items() if s.task == "regression"
}
CLASSIFICATION_DATASETS: dict[str, int] = {
    n: s.num_classes for n, s in DATASETS.items() if s.task == "classification"
}


def normalize_dataset_name(dataset: str | None) -> str | None:
    """Lower-case a dataset name and map aliases; unknown names raise DataError."""
    if dataset is None:
        return None
    key = canonical_name(dataset)
    if key is None:
        raise DataError(f"unknown dataset name {dataset!r}; expected one of {', '.join(DATASETS)} (or none).")
    return key


@dataclass
class Split:
    """One split (train / valid / test) of a multimodal dataset."""

    name: str
    audio: np.ndarray
    vision: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    text: np.ndarray | None = None
    text_bert: np.ndarray | None = None
    text_lengths: np.ndarray | None = None
    audio_lengths: np.ndarray | None = None
    vision_lengths: np.ndarray | None = None
    raw_text: np.ndarray | None = None
    extra_labels: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(np.shape(self.labels)[0])

    @property
    def text_kind(self) -> str | None:
        if self.text_bert is not None:
            return "bert"
        if self.text is not None:
            return "features"
        return None

    def fill_lengths(self) -> None:
        """Fill missing length arrays: text from the text_bert mask (else full L), audio/vision full T."""
        n = len(self)
        if self.text_lengths is None:
            if self.text_bert is not None and self.text_bert.ndim == 3 and self.text_bert.shape[1] == 3:
                self.text_lengths = self.text_bert[:, 1, :].sum(axis=1).astype(np.int64)
            elif self.text is not None and self.text.ndim >= 2:
                self.text_lengths = np.full(n, self.text.shape[1], dtype=np.int64)
        if self.audio_lengths is None and self.audio.ndim >= 2:
            self.audio_lengths = np.full(n, self.audio.shape[1], dtype=np.int64)
        if self.vision_lengths is None and self.vision.ndim >= 2:
            self.vision_lengths = np.full(n, self.vision.shape[1], dtype=np.int64)


@dataclass
class MultimodalData:
    """A dataset: its three splits plus the task description."""

    splits: dict[str, Split]
    source: str
    task: str  # "regression" | "classification"
    num_classes: int | None = None
    label_names: list[str] | None = None
    dataset: str | None = None

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    @property
    def _first(self) -> Split:
        if "train" in self.splits:
            return self.splits["train"]
        return next(iter(self.splits.values()))

    @property
    def text_kind(self) -> str:
        """``"bert"`` when token rows (text_bert) are present, else ``"features"``."""
        kind = self._first.text_kind
        if kind is None:
            raise DataError(f"{self.source}: no text modality (neither 'text' nor 'text_bert') is present.")
        return kind

    @property
    def text_dim(self) -> int | None:
        """Dt of precomputed text features, or None when only BERT token rows are present."""
        t = self._first.text
        return None if t is None else int(t.shape[-1])

    @property
    def audio_dim(self) -> int:
        return int(self._first.audio.shape[-1])

    @property
    def vision_dim(self) -> int:
        return int(self._first.vision.shape[-1])

    @property
    def seq_lengths(self) -> dict[str, int]:
        s = self._first
        text_len = s.text_bert.shape[2] if s.text_bert is not None else s.text.shape[1]
        return {"text": int(text_len), "audio": int(s.audio.shape[1]), "vision": int(s.vision.shape[1])}

    def summary(self) -> str:
        sizes = "/".join(str(len(self.splits[k])) for k in SPLIT_NAMES if k in self.splits)
        return (
            f"{self.dataset or 'data'} from {self.source}: {self.task}, splits {sizes}, "
            f"text {self.text_kind} "
            f"{self.seq_lengths['text']}x{self.text_dim or 'ids'}, audio {self.seq_lengths['audio']}x"
            f"{self.audio_dim}, vision {self.seq_lengths['vision']}x{self.vision_dim}"
        )


# ----------------------------------------------------------------------------------------------------------
# validation


def _fail(source: str, split: str, key: str, problem: str) -> DataError:
    return DataError(f"{source}: split '{split}' key '{key}' {problem}.")


def _shape(a: np.ndarray) -> str:
    return "(" + ", ".join(str(int(d)) for d in a.shape) + ")"


def _check_ids(source: str, s: Split) -> None:
    ids = s.ids
    if ids.dtype.kind == "O":
        bad = [i for i, v in enumerate(ids.tolist()) if not isinstance(v, str)]
        if bad:
            raise _fail(source, s.name, "ids", f"holds a non-string value at row {bad[0]}")
    elif ids.dtype.kind != "U":
        raise _fail(source, s.name, "ids", f"has dtype {ids.dtype} but strings are expected")
    # ids key the prediction CSVs: a repeated id would make them impossible to join
    seen: dict[str, int] = {}
    for i, v in enumerate(ids.tolist()):
        if v in seen:
            raise _fail(
                source,
                s.name,
                "ids",
                f"holds the id {v!r} twice (rows {seen[v]} and {i}); sample ids must be unique",
            )
        seen[v] = i


def _first_bad(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.argwhere(mask)[0])


def _first_nonfinite(arr: np.ndarray, chunk_elems: int = 1 << 24) -> tuple[int, ...] | None:
    """Index of the first NaN/inf, checked in row chunks so big splits need no full-size temporary."""
    rows = max(1, chunk_elems // max(1, int(np.prod(arr.shape[1:]))))
    for start in range(0, arr.shape[0], rows):
        part = arr[start : start + rows]
        finite = np.isfinite(part)
        if not finite.all():
            idx = _first_bad(~finite)
            return (idx[0] + start, *idx[1:])
    return None


def _check_split(source: str, s: Split, *, task: str, vocab_size: int | None) -> None:
    name = s.name
    arrays = {"audio": s.audio, "vision": s.vision, "labels": s.labels, "ids": s.ids}
    for opt in ("text", "text_bert", "text_lengths", "audio_lengths", "vision_lengths", "raw_text"):
        if getattr(s, opt) is not None:
            arrays[opt] = getattr(s, opt)
    for k, v in s.extra_labels.items():
        arrays[k] = v
    for key, arr in arrays.items():
        if not isinstance(arr, np.ndarray):
            raise _fail(source, name, key, f"is a {type(arr).__name__}, not a numpy array")

    if s.text is None and s.text_bert is None:
        raise DataError(f"{source}: split '{name}' has no text modality (neither 'text' nor 'text_bert').")

    # ranks
    rank3 = {"audio": "(N, T, D)", "vision": "(N, T, D)", "text": "(N, L, D)", "text_bert": "(N, 3, L)"}
    for key, layout in rank3.items():
        if key in arrays and arrays[key].ndim != 3:
            raise _fail(
                source, name, key, f"has shape {_shape(arrays[key])} but a 3-D array {layout} is expected"
            )
    for key, arr in arrays.items():
        if key not in rank3 and arr.ndim != 1:
            raise _fail(source, name, key, f"has shape {_shape(arr)} but a 1-D array (N,) is expected")
    if s.text_bert is not None and s.text_bert.shape[1] != 3:
        raise _fail(source, name, "text_bert", f"has shape {_shape(s.text_bert)} but (N, 3, L) is expected")

    # N consistency
    n = s.labels.shape[0]
    if n == 0:
        raise DataError(f"{source}: split '{name}' is empty (0 samples).")
    for key, arr in arrays.items():
        if arr.shape[0] != n:
            raise _fail(source, name, key, f"has {arr.shape[0]} rows but 'labels' has {n}")

    # zero-length sequences / feature dims
    seq = {"audio": s.audio.shape[1], "vision": s.vision.shape[1]}
    if s.text is not None:
        seq["text"] = s.text.shape[1]
    if s.text_bert is not None:
        seq["text_bert"] = s.text_bert.shape[2]
    for key, t in seq.items():
        if t == 0:
            raise _fail(
                source, name, key, f"has shape {_shape(arrays[key])} with a zero-length sequence axis"
            )
    for key in ("audio", "vision", "text"):
        if key in arrays and arrays[key].shape[2] == 0:
            raise _fail(source, name, key, f"has shape {_shape(arrays[key])} with zero feature dimensions")
    if s.text is not None and s.text_bert is not None and s.text.shape[1] != s.text_bert.shape[2]:
        raise _fail(
            source,
            name,
            "text",
            f"has length {s.text.shape[1]} but 'text_bert' has length {s.text_bert.shape[2]}",
        )

    # dtypes and finiteness of features
    for key in ("audio", "vision", "text"):
        if key not in arrays:
            continue
        arr = arrays[key]
        if arr.dtype.kind != "f":
            raise _fail(source, name, key, f"has dtype {arr.dtype} but floating-point features are expected")
        idx = _first_nonfinite(arr)
        if idx is not None:
            raise _fail(source, name, key, f"holds a non-finite value {arr[idx]} at index {idx}")

    # text_bert
    if s.text_bert is not None:
        tb = s.text_bert
        if tb.dtype.kind not in "iu":
            raise _fail(
                source, name, "text_bert", f"has dtype {tb.dtype} but integer token rows are expected"
            )
        ids = tb[:, 0, :]
        if (ids < 0).any():
            idx = _first_bad(ids < 0)
            raise _fail(
                source, name, "text_bert", f"holds a negative token id {ids[idx]} at (sample, position) {idx}"
            )
        _check_vocabulary(source, s, vocab_size)
        mask = tb[:, 1, :]
        bad = (mask != 0) & (mask != 1)
        if bad.any():
            idx = _first_bad(bad)
            raise _fail(
                source,
                name,
                "text_bert",
                f"has attention-mask value {mask[idx]} at (sample, position) {idx} (row 1 must be 0 or 1)",
            )

    # lengths
    for key, t in (
        ("text_lengths", s.text_bert.shape[2] if s.text_bert is not None else (s.text.shape[1])),
        ("audio_lengths", s.audio.shape[1]),
        ("vision_lengths", s.vision.shape[1]),
    ):
        arr = arrays.get(key)
        if arr is None:
            continue
        if arr.dtype.kind not in "iu":
            raise _fail(source, name, key, f"has dtype {arr.dtype} but integer lengths are expected")
        bad = (arr < 0) | (arr > t)
        if bad.any():
            i = int(np.argmax(bad))
            raise _fail(source, name, key, f"has length {int(arr[i])} at row {i}, outside [0, {t}]")

    _check_ids(source, s)

    # labels
    labels = s.labels
    if task == "regression":
        if labels.dtype.kind != "f":
            raise _fail(
                source, name, "labels", f"has dtype {labels.dtype} but float regression labels are expected"
            )
    elif labels.dtype.kind not in "iu":
        raise _fail(source, name, "labels", f"has dtype {labels.dtype} but integer class ids are expected")
    for key in ["labels", *s.extra_labels]:
        arr = arrays[key]
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            i = int(np.argmax(~np.isfinite(arr)))
            raise _fail(source, name, key, f"holds a non-finite label {arr[i]} at row {i}")


def _check_vocabulary(source: str, s: Split, vocab_size: int | None, vocabulary: str = "") -> None:
    if not vocab_size or s.text_bert is None:
        return
    ids = s.text_bert[:, 0, :]
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        idx = _first_bad(bad)
        raise _fail(
            source,
            s.name,
            "text_bert",
            f"holds token id {ids[idx]} at (sample, position) {idx}, "
            f"outside the vocabulary of size {vocab_size}{vocabulary}",
        )


def check_token_ids(data: MultimodalData, vocab_size: int | None, *, vocabulary: str = "") -> None:
    """Every split's ``text_bert`` ids lie in [0, vocab_size); else one DataError naming the split, the
    position and the id (``vocabulary`` is appended to it, e.g. " of the text encoder 'dir'").  The one
    vocabulary check: :func:`validate` runs it with a tokenizer's size, model building with the loaded
    encoder's (an MMSA pickle carries no vocabulary)."""
    for s in data.splits.values():
        _check_vocabulary(data.source, s, vocab_size, vocabulary)


def validate(
    data: MultimodalData, *, dataset: str | None = None, vocab_size: int | None = None
) -> MultimodalData:
    """Check ``data`` thoroughly and return it; the first problem raises a one-sentence DataError.

    Checks: the three splits exist (a ``"dev"`` split is renamed to ``"valid"`` in place), no split is
    empty, ranks, N agrees across keys, no zero-length sequence axis, feature dims and sequence lengths
    agree across splits, lengths lie in [0, T], features and labels are finite, labels lie in the
    dataset's range (mosi/mosei [-3, 3], sims/simsv2 [-1, 1], classification 0..num_classes-1), text_bert
    ids are in [0, vocab_size) when ``vocab_size`` is given and its mask row is 0/1.  Missing length
    arrays are filled (text from the mask sum, audio/vision with the full T).
    """
    src = data.source
    ds = normalize_dataset_name(dataset if dataset is not None else data.dataset)
    if ds is not None:
        data.dataset = ds
    if data.task not in ("regression", "classification"):
        raise DataError(f"{src}: unknown task {data.task!r}; expected 'regression' or 'classification'.")
    if "valid" not in data.splits and "dev" in data.splits:
        dev = data.splits.pop("dev")
        dev.name = "valid"
        data.splits["valid"] = dev
    for name in SPLIT_NAMES:
        if name not in data.splits:
            raise DataError(
                f"{src}: split '{name}' is missing (found: {', '.join(sorted(data.splits)) or 'none'})."
            )
    extra = sorted(set(data.splits) - set(SPLIT_NAMES))
    if extra:
        raise DataError(f"{src}: unexpected split '{extra[0]}' (expected train, valid and test).")
    for name, s in data.splits.items():
        if s.name != name:
            s.name = name
        s.fill_lengths()
        _check_split(src, s, task=data.task, vocab_size=vocab_size)

    # consistency across splits
    ref = data.splits["train"]

    def dims(s: Split) -> dict[str, tuple[int, ...]]:
        d = {"audio": s.audio.shape[1:], "vision": s.vision.shape[1:]}
        if s.text is not None:
            d["text"] = s.text.shape[1:]
        if s.text_bert is not None:
            d["text_bert"] = s.text_bert.shape[1:]
        return d

    ref_dims = dims(ref)
    for name in ("valid", "test"):
        s = data.splits[name]
        other = dims(s)
        if set(other) != set(ref_dims):
            missing = sorted(set(ref_dims) ^ set(other))[0]
            raise _fail(
                src,
                name,
                missing,
                f"is present in only some of the splits (train has {', '.join(sorted(ref_dims))})",
            )
        for key, shp in ref_dims.items():
            if other[key] != shp:
                raise _fail(
                    src,
                    name,
                    key,
                    f"has per-sample shape {tuple(int(x) for x in other[key])} but split 'train' has "
                    f"{tuple(int(x) for x in shp)}",
                )
        if set(s.extra_labels) != set(ref.extra_labels):
            key = sorted(set(s.extra_labels) ^ set(ref.extra_labels))[0]
            raise _fail(src, name, key, "is present in only some of the splits")

    # label ranges
    if data.task == "classification":
        k = data.num_classes
        if k is None and ds in CLASSIFICATION_DATASETS:
            k = data.num_classes = CLASSIFICATION_DATASETS[ds]
        if k is None:
            raise DataError(f"{src}: a classification dataset needs num_classes.")
        if data.label_names is not None and len(data.label_names) != k:
            raise DataError(f"{src}: label_names has {len(data.label_names)} names but num_classes is {k}.")
        for name, s in data.splits.items():
            bad = (s.labels < 0) | (s.labels >= k)
            if bad.any():
                i = int(np.argmax(bad))
                raise _fail(
                    src, name, "labels", f"holds class id {int(s.labels[i])} at row {i}, outside 0..{k - 1}"
                )
    elif ds is not None:
        if ds not in DATASET_LABEL_RANGES:
            raise DataError(f"{src}: dataset '{ds}' is a classification dataset but the task is regression.")
        lo, hi = DATASET_LABEL_RANGES[ds]
        tol = 1e-4
        for name, s in data.splits.items():
            for key, arr in [("labels", s.labels), *s.extra_labels.items()]:
                bad = (arr < lo - tol) | (arr > hi + tol)
                if bad.any():
                    i = int(np.argmax(bad))
                    raise _fail(
                        src,
                        name,
                        key,
                        f"holds label {float(arr[i]):g} at row {i}, outside [{lo:g}, {hi:g}] for {ds}",
                    )
    return data
