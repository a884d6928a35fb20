"""Synthetic multimodal data whose label can only be predicted by combining modalities.

Every sample draws a text cue ``s_t`` in {-1, +1}, an audio cue ``s_a`` in {-1, +1} and a magnitude
``m`` in [0.5, 2].  The text cue is planted over a window of consecutive valid steps (``cue_fraction`` of
the length, random start) (a fixed direction added to the text features, or, for ``text_kind="bert"``, one
of two cue token ids), the audio cue likewise in audio, and the magnitude as ``m`` times a fixed direction
at one random valid vision step.  The label is

    y = clip(1.5 * s_t * s_a * m + noise, -3, 3)

so text alone and audio alone are statistically independent of ``y`` (``s_a`` is a fair coin), vision
alone only knows ``|y|``, and only the cross-modal product recovers the label.  Valid lengths vary per
sample; padding is zero at the end.  :data:`PRESET_SHAPES` gives the MMSA datasets' shapes and sizes.

That ``sign`` task (the default) can also be solved without cross-modal attention: the model's head sees a
summary of every modality and can multiply them.  ``task="recall"`` (associative recall) cannot: K fixed
random code directions exist per modality (orthonormal, together with one audio *value* direction, when
the width allows).  The text plants the code of one query key ``c`` over a window (``cue_fraction`` of its
valid steps); the audio is cut into K contiguous segments of ``w = len // K`` steps (at least the conv
kernel, 5: the audio is at least ``5 K`` long), at a random offset and in a random key order, segment k
holding ``cue_strength * (code_k + v_k * value_direction)`` with ``v_k ~ U(-1, 1)``; vision is noise.  The
label is

    y = clip(3 * v_c + noise, -3, 3)

so text alone knows only which key is asked (uncorrelated with y), audio alone only the K values (their mean
explains ~1/K of the variance), and a model must let the text query the audio (GsiT's backward encoder:
text attends to audio) or the audio segment recognise the text's code (forward: audio attends to text).
A Self-Only model has to squeeze all K (key, value) pairs into the audio block's last step.
"""

from __future__ import annotations

import math
import os
import pickle
from pathlib import Path

import numpy as np

from gsit.data.dataset import SPLIT_NAMES, MultimodalData, Split
from gsit.data.spec import DATASETS

__all__ = [
    "make_synthetic",
    "write_mmsa_pickle",
    "PRESET_SHAPES",
    "SYNTHETIC_VOCAB_SIZE",
    "CUE_TOKEN_POS",
    "CUE_TOKEN_NEG",
]


def _preset_shapes(spec) -> dict[str, int]:
    """make_synthetic's keyword view of a dataset's MMSA shapes and split sizes (gsit.data.spec)."""
    out = {}
    for m in ("text", "audio", "vision"):
        out[f"{m}_len"], out[f"{m}_dim"] = spec.shapes[m]
    out["n_train"], out["n_valid"], out["n_test"] = spec.split_sizes
    return out


PRESET_SHAPES: dict[str, dict[str, int]] = {
    name: _preset_shapes(spec) for name, spec in DATASETS.items() if spec.synthetic_preset
}
_SMALL_DEFAULTS = dict(
    text_len=20,
    text_dim=32,
    audio_len=40,
    audio_dim=5,
    vision_len=40,
    vision_dim=20,
    n_train=600,
    n_valid=150,
    n_test=150,
)
_RECALL_SMALL_DEFAULTS: dict[str, int] = {}
SYNTHETIC_TASKS = ("sign", "recall")

SYNTHETIC_VOCAB_SIZE = 2048
CLS_TOKEN, SEP_TOKEN = 101, 102
CUE_TOKEN_POS, CUE_TOKEN_NEG = 2000, 2001
_FILLER_TOKENS = (1000, 2000)
RECALL_TOKEN_BASE = 2000  # text_kind="bert" recall: the query token of key c is RECALL_TOKEN_BASE + c
MAX_RECALL_KEYS = SYNTHETIC_VOCAB_SIZE - RECALL_TOKEN_BASE
_MIN_SEGMENT = 5  # the conv front end's kernel: a segment this long has one conv step that sees only it


def _unit(rng: np.random.Generator, d: int) -> np.ndarray:
    v = rng.standard_normal(d)
    return (v / np.linalg.norm(v)).astype(np.float32)


def _lengths(rng: np.random.Generator, n: int, t: int, minimum: int) -> np.ndarray:
    low = min(t, max(minimum, int(math.ceil(0.3 * t))))
    return rng.integers(low, t + 1, size=n).astype(np.int64)


def _features(
    rng: np.random.Generator, n: int, t: int, d: int, lengths: np.ndarray, noise: float
) -> np.ndarray:
    x = rng.standard_normal((n, t, d), dtype=np.float32)
    x *= noise
    x[np.arange(t)[None, :] >= lengths[:, None]] = 0.0
    return x


def _plant(
    rng,
    x: np.ndarray,
    lengths: np.ndarray,
    amplitude: np.ndarray,
    direction: np.ndarray,
    fraction: float = 0.5,
) -> None:
    """Add ``amplitude * direction`` over a window of ``ceil(fraction * length)`` consecutive valid steps
    starting at a random valid step (the cue's timing varies per sample; fraction 0 = a single step)."""
    n, t = x.shape[0], x.shape[1]
    span = np.maximum(1, np.ceil(fraction * lengths)).astype(np.int64)
    start = (rng.random(n) * (lengths - span + 1)).astype(np.int64)
    steps = np.arange(t)[None, :]
    window = (steps >= start[:, None]) & (steps < (start + span)[:, None])  # (n, t)
    x += window[:, :, None] * (amplitude[:, None, None].astype(np.float32) * direction[None, None, :])


def _directions(rng: np.random.Generator, k: int, d: int) -> np.ndarray:
    """(k, d) float32 unit vectors: orthonormal when k <= d, else independent random unit vectors."""
    g = rng.standard_normal((d, k))
    if k <= d:
        q, r = np.linalg.qr(g)
        return (q * np.sign(np.diag(r))[None, :]).T.astype(np.float32)
    return (g / np.linalg.norm(g, axis=0, keepdims=True)).T.astype(np.float32)


def _split(
    name: str,
    audio: np.ndarray,
    vision: np.ndarray,
    y: np.ndarray,
    tl: np.ndarray,
    al: np.ndarray,
    vl: np.ndarray,
) -> Split:
    """A generated split without its text (the caller adds ``text`` or ``text_bert``)."""
    return Split(
        name=name,
        audio=audio,
        vision=vision,
        labels=y.astype(np.float32),
        ids=np.array([f"synthetic_{name}_{i:06d}" for i in range(len(y))]),
        text_lengths=tl,
        audio_lengths=al,
        vision_lengths=vl,
    )


def _bert_rows(rng: np.random.Generator, length: int, tl: np.ndarray, cue_ids: np.ndarray) -> np.ndarray:
    """MMSA ``text_bert`` rows (n, 3, L): ``[CLS] filler... [SEP] 0...`` with ``cue_ids[i]`` at one random
    position strictly between [CLS] and [SEP] of row i (draws: the fillers, then the cue positions)."""
    n = len(tl)
    pos = np.arange(length)[None, :]
    tok = rng.integers(*_FILLER_TOKENS, size=(n, length)).astype(np.int64)
    tok[pos >= tl[:, None]] = 0
    tok[:, 0] = CLS_TOKEN
    tok[np.arange(n), tl - 1] = SEP_TOKEN
    cue_pos = 1 + (rng.random(n) * (tl - 2)).astype(np.int64)
    tok[np.arange(n), cue_pos] = cue_ids
    mask = (pos < tl[:, None]).astype(np.int64)
    return np.stack([tok, mask, np.zeros_like(tok)], axis=1)


def _make_recall(
    cfg: dict,
    *,
    seed: int,
    text_kind: str,
    keys: int,
    cue_strength: float,
    feature_noise: float,
    label_noise: float,
    cue_fraction: float,
    label_scale: float,
):
    """The associative-recall task (``task="recall"``): see :func:`make_synthetic`."""
    shared = np.random.default_rng([seed, 7919, 1])
    text_codes = _directions(shared, keys, cfg["text_dim"])  # (K, D_t)
    audio_dirs = _directions(shared, keys + 1, cfg["audio_dim"])  # (K + 1, D_a): K codes + value
    audio_codes, value_dir = audio_dirs[:keys], audio_dirs[keys]
    splits: dict[str, Split] = {}
    cues: dict[str, dict[str, np.ndarray]] = {}
    for si, name in enumerate(SPLIT_NAMES):
        n = int(cfg[f"n_{name}"])
        rng = np.random.default_rng([seed, si, 1])
        query = rng.integers(0, keys, size=n)  # (n,)
        values = rng.uniform(-1.0, 1.0, size=(n, keys))  # (n, K): value of key k
        order = np.argsort(rng.random((n, keys)), axis=1)  # (n, K): key of segment j
        matched = values[np.arange(n), query]
        y = np.clip(3.0 * matched + label_noise * rng.standard_normal(n), -3.0, 3.0) * label_scale

        tl = _lengths(rng, n, cfg["text_len"], 3 if text_kind == "bert" else 1)
        al = _lengths(rng, n, cfg["audio_len"], min(cfg["audio_len"], _MIN_SEGMENT * keys))
        vl = _lengths(rng, n, cfg["vision_len"], 1)

        # audio: K back-to-back segments (random key order), segment j = code + value * value_dir
        audio = _features(rng, n, cfg["audio_len"], cfg["audio_dim"], al, feature_noise)
        width = al // keys  # (n,) >= 1
        offset = (rng.random(n) * (al - keys * width + 1)).astype(np.int64)
        steps = np.arange(cfg["audio_len"])[None, :]
        seg = (steps - offset[:, None]) // width[:, None]  # (n, T_a) segment index
        inside = (steps >= offset[:, None]) & (seg < keys)
        seg_key = np.take_along_axis(order, np.clip(seg, 0, keys - 1), axis=1)  # (n, T_a)
        seg_val = np.take_along_axis(values, seg_key, axis=1)
        plant = audio_codes[seg_key] + seg_val[:, :, None].astype(np.float32) * value_dir
        audio += (cue_strength * inside)[:, :, None].astype(np.float32) * plant

        vision = _features(rng, n, cfg["vision_len"], cfg["vision_dim"], vl, feature_noise)  # no signal
        split = _split(name, audio, vision, y, tl, al, vl)
        if text_kind == "features":
            text = _features(rng, n, cfg["text_len"], cfg["text_dim"], tl, feature_noise)
            span = np.maximum(1, np.ceil(cue_fraction * tl)).astype(np.int64)
            start = (rng.random(n) * (tl - span + 1)).astype(np.int64)
            tsteps = np.arange(cfg["text_len"])[None, :]
            window = (tsteps >= start[:, None]) & (tsteps < (start + span)[:, None])
            text += (cue_strength * window)[:, :, None].astype(np.float32) * text_codes[query][:, None, :]
            split.text = text
        else:
            split.text_bert = _bert_rows(rng, cfg["text_len"], tl, RECALL_TOKEN_BASE + query)
        splits[name] = split
        cues[name] = {
            "query": query,
            "values": values,
            "order": order,
            "matched": matched,
            "segment_start": offset,
            "segment_width": width,
        }
    return splits, cues


def make_synthetic(
    *,
    n_train: int | None = None,
    n_valid: int | None = None,
    n_test: int | None = None,
    text_len: int | None = None,
    audio_len: int | None = None,
    vision_len: int | None = None,
    text_dim: int | None = None,
    audio_dim: int | None = None,
    vision_dim: int | None = None,
    seed: int = 0,
    text_kind: str = "features",
    preset: str | None = None,
    scale: float = 1.0,
    cue_strength: float = 2.0,
    feature_noise: float = 0.5,
    label_noise: float = 0.1,
    cue_fraction: float = 0.5,
    task: str = "sign",
    recall_keys: int = 8,
    return_cues: bool = False,
):
    """Generate a :class:`MultimodalData` (task regression) with a planted cross-modal label.

    Without ``preset`` the defaults are small (600/150/150 samples, text 20x32, audio 40x5, vision 40x20).
    With ``preset`` in :data:`PRESET_SHAPES` the shapes are MMSA's and the split sizes are the dataset's
    times ``scale`` (at least 2 each); any explicit argument overrides the preset.  ``text_kind="bert"``
    gives ``text_bert`` rows ``[CLS] filler... cue ... [SEP] 0...`` with filler ids in [1000, 2000), cue id
    :data:`CUE_TOKEN_POS`/:data:`CUE_TOKEN_NEG` and vocabulary :data:`SYNTHETIC_VOCAB_SIZE`.
    With ``return_cues=True`` returns ``(data, cues)`` where ``cues[split]`` holds the arrays
    ``text``, ``audio`` (signs) and ``magnitude``.

    ``task="recall"`` generates the associative-recall task of the module docstring with ``recall_keys``
    keys (same shapes and splits; with ``text_kind="bert"`` the query is the token
    ``RECALL_TOKEN_BASE + c``); its ``cues[split]`` hold ``query`` (n,), ``values`` (n, K), ``order``
    (n, K: the key of each segment), ``matched`` (the queried value), ``segment_start`` and
    ``segment_width`` (n,).
    """
    if text_kind not in ("features", "bert"):
        raise ValueError(f"text_kind must be 'features' or 'bert', not {text_kind!r}")
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"task must be one of {', '.join(SYNTHETIC_TASKS)}, not {task!r}")
    if task == "recall" and not 2 <= int(recall_keys) <= MAX_RECALL_KEYS:
        raise ValueError(f"recall_keys must be in [2, {MAX_RECALL_KEYS}], not {recall_keys}")
    if preset is not None and preset not in PRESET_SHAPES:
        raise ValueError(f"unknown preset {preset!r}; expected one of {', '.join(PRESET_SHAPES)}")
    base = dict(PRESET_SHAPES[preset]) if preset else dict(_SMALL_DEFAULTS)
    if task == "recall" and not preset:
        base.update(_RECALL_SMALL_DEFAULTS)
    if preset:
        for k in ("n_train", "n_valid", "n_test"):
            base[k] = max(2, int(round(base[k] * scale)))
    given = dict(
        n_train=n_train,
        n_valid=n_valid,
        n_test=n_test,
        text_len=text_len,
        audio_len=audio_len,
        vision_len=vision_len,
        text_dim=text_dim,
        audio_dim=audio_dim,
        vision_dim=vision_dim,
    )
    cfg = {k: (v if v is not None else base[k]) for k, v in given.items()}
    for k, v in cfg.items():
        if int(v) < 1:
            raise ValueError(f"{k} must be at least 1, not {v}")
    if task == "recall" and cfg["audio_len"] < int(recall_keys):
        raise ValueError(
            f"audio_len ({cfg['audio_len']}) must be at least recall_keys ({recall_keys}): "
            f"every key needs an audio segment"
        )
    if text_kind == "bert" and cfg["text_len"] < 3:
        raise ValueError(
            f"text_len must be at least 3 for text_kind='bert' ([CLS] cue [SEP]), not {cfg['text_len']}"
        )
    # the generator's labels live in [-3, 3]; a preset's labels in its dataset's range (SIMS: [-1, 1])
    label_scale = DATASETS[preset].label_range[1] / 3.0 if preset else 1.0
    if task == "recall":
        splits, cues = _make_recall(
            cfg,
            seed=seed,
            text_kind=text_kind,
            keys=int(recall_keys),
            cue_strength=cue_strength,
            feature_noise=feature_noise,
            label_noise=label_noise,
            cue_fraction=cue_fraction,
            label_scale=label_scale,
        )
        data = MultimodalData(
            splits=splits,
            source=f"synthetic(task=recall, keys={int(recall_keys)}, preset={preset}, seed={seed}, "
            f"text_kind={text_kind})",
            task="regression",
            dataset=preset if preset else "synthetic",
        )
        return (data, cues) if return_cues else data

    shared = np.random.default_rng([seed, 7919])
    u_t = _unit(shared, cfg["text_dim"])
    u_a = _unit(shared, cfg["audio_dim"])
    u_v = _unit(shared, cfg["vision_dim"])

    splits: dict[str, Split] = {}
    cues: dict[str, dict[str, np.ndarray]] = {}
    for si, name in enumerate(SPLIT_NAMES):
        n = int(cfg[f"n_{name}"])
        rng = np.random.default_rng([seed, si])
        s_t = rng.choice(np.array([-1.0, 1.0]), size=n)
        s_a = rng.choice(np.array([-1.0, 1.0]), size=n)
        m = rng.uniform(0.5, 2.0, size=n)
        y = np.clip(1.5 * s_t * s_a * m + label_noise * rng.standard_normal(n), -3.0, 3.0) * label_scale

        tl = _lengths(rng, n, cfg["text_len"], 3 if text_kind == "bert" else 1)
        al = _lengths(rng, n, cfg["audio_len"], 1)
        vl = _lengths(rng, n, cfg["vision_len"], 1)

        audio = _features(rng, n, cfg["audio_len"], cfg["audio_dim"], al, feature_noise)
        _plant(rng, audio, al, cue_strength * s_a, u_a, cue_fraction)
        vision = _features(rng, n, cfg["vision_len"], cfg["vision_dim"], vl, feature_noise)
        _plant(rng, vision, vl, cue_strength * m, u_v, cue_fraction)

        split = _split(name, audio, vision, y, tl, al, vl)
        if text_kind == "features":
            text = _features(rng, n, cfg["text_len"], cfg["text_dim"], tl, feature_noise)
            _plant(rng, text, tl, cue_strength * s_t, u_t, cue_fraction)
            split.text = text
        else:
            cue_ids = np.where(s_t > 0, CUE_TOKEN_POS, CUE_TOKEN_NEG)
            split.text_bert = _bert_rows(rng, cfg["text_len"], tl, cue_ids)
        splits[name] = split
        cues[name] = {"text": s_t, "audio": s_a, "magnitude": m}

    data = MultimodalData(
        splits=splits,
        source=f"synthetic(preset={preset}, seed={seed}, text_kind={text_kind})",
        task="regression",
        dataset=preset if preset else "synthetic",
    )
    return (data, cues) if return_cues else data


def write_mmsa_pickle(data: MultimodalData, path: str | os.PathLike, *, protocol: int = 4) -> Path:
    """Write ``data`` (regression) in the MMSA processed-pickle layout; refuses to overwrite ``path``.

    Per split: ``raw_text, id, text and/or text_bert`` (float32, as MMSA stores it), ``audio, vision,
    audio_lengths, vision_lengths`` (lists of ints), ``regression_labels``, ``classification_labels``
    (0/1/2 = negative/neutral/positive), ``annotations`` and any extra labels under their own keys.
    """
    if data.task != "regression":
        raise ValueError(
            "write_mmsa_pickle writes regression data only (MMSA pickles carry regression_labels)"
        )
    p = Path(path)
    out: dict[str, dict] = {}
    for name in SPLIT_NAMES:
        s = data.splits[name]
        labels = np.asarray(s.labels, dtype=np.float32)
        cls = np.where(labels < 0, 0, np.where(labels > 0, 2, 1)).astype(np.float32)
        d: dict = {
            "raw_text": np.array(list(s.raw_text if s.raw_text is not None else s.ids), dtype=object),
            "id": np.array([str(i) for i in s.ids], dtype=object),
            "audio": np.asarray(s.audio, dtype=np.float32),
            "vision": np.asarray(s.vision, dtype=np.float32),
            "regression_labels": labels,
            "classification_labels": cls,
            "annotations": np.array([("Negative", "Neutral", "Positive")[int(c)] for c in cls], dtype=object),
        }
        if s.text is not None:
            d["text"] = np.asarray(s.text, dtype=np.float32)
        if s.text_bert is not None:
            d["text_bert"] = np.asarray(s.text_bert, dtype=np.float32)
        if s.audio_lengths is not None:
            d["audio_lengths"] = [int(v) for v in s.audio_lengths]
        if s.vision_lengths is not None:
            d["vision_lengths"] = [int(v) for v in s.vision_lengths]
        for key, arr in s.extra_labels.items():
            d[key] = np.asarray(arr)
        out[name] = d
    try:
        fh = open(p, "xb")
    except FileExistsError:
        raise FileExistsError(f"{p}: exists; write_mmsa_pickle never overwrites a file") from None
    try:
        with fh:
            pickle.dump(out, fh, protocol=protocol)
    except BaseException:
        p.unlink(missing_ok=True)
        raise
    return p
