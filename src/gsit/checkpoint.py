"""Checkpoints and result files: safetensors + JSON, written atomically (temp file + rename), loaded without
pickle.  A training-state checkpoint holds the model, the optimizer's tensors, the RNG states and a JSON
sidecar with everything else, so ``--resume`` continues bit-identically on CPU."""

from __future__ import annotations

import json
import os
import random
import tempfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gsit.data._util import read_json
from gsit.errors import DataError, GsitError


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (else set and restored at once)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_sibling(path: Path) -> str:
    """A temp file next to ``path`` with the mode a plain ``open(path, "w")`` would give (0o666 minus the
    umask; mkstemp's 0o600 would hide results from colleagues on a shared server)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return tmp


def _write_error(path: Path, exc: OSError) -> GsitError:
    """One line naming the file and the reason, never the temp file's name or a raw errno."""
    return GsitError(f"{path}: cannot be written ({exc.strerror or type(exc).__name__})")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp sibling + fsync + rename: a reader sees the old file or the
    new one, never half of one."""
    path = Path(path)
    tmp = None
    try:
        tmp = _temp_sibling(path)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_error(path, exc) from None
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _plain(obj: Any) -> Any:
    """JSON-safe plain values (numpy scalars and tensors to Python); NaN stays NaN (json writes it)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(Path(path), (json.dumps(_plain(obj), indent=2, sort_keys=False) + "\n").encode())


def atomic_save_tensors(
    path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> None:
    """Save ``tensors`` as safetensors at ``path`` atomically (temp sibling + fsync + rename)."""
    path = Path(path)
    tmp = None
    try:
        tmp = _temp_sibling(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, 0o666 & ~_umask())  # save_file re-creates the file with its own mode
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise _write_error(path, exc) from None
    except BaseException:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"checkpoint {str(path)!r} does not exist")
    try:
        return load_file(str(path))
    except Exception as e:
        raise DataError(f"checkpoint {str(path)!r} is not a readable safetensors file: {e}") from e


def model_tensors(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def save_model(path: Path, model: torch.nn.Module) -> None:
    atomic_save_tensors(path, model_tensors(model))


def _check_fit(path: Path, tensors: dict[str, torch.Tensor], model: torch.nn.Module) -> None:
    """Every model tensor present with its shape, nothing unexpected (one DataError naming the tensor)."""
    own = model.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        raise DataError(
            f"checkpoint {str(path)!r} does not fit the model: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise DataError(
                f"checkpoint {str(path)!r} does not fit the model: tensor {k!r} has shape "
                f"{tuple(tensors[k].shape)} but the model's has {tuple(v.shape)} (was the run "
                f"trained with other settings or data?)"
            )


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    tensors = load_tensors(path)
    _check_fit(path, tensors, model)
    model.load_state_dict(tensors, strict=True)


# ----------------------------------------------------------------------------- training state
# One commit point per epoch.  A seed directory's committed state is what ``last.json`` names:
#   1. stage:  ``last.next.safetensors`` (model, optimizer, RNG) and, when the epoch improved,
#              ``best.next.safetensors``, both stamped (safetensors metadata) with the epoch and a fresh
#              state id; ``epochs.csv`` gets the epoch's row (rewriting a row is idempotent);
#   2. commit: ``last.json`` (atomic rename) records the epoch, the state id and the best model's state id;
#   3. settle: the staged files are renamed over ``last.safetensors`` / ``best.safetensors``.
# A kill anywhere leaves either the old commit (staged files are discarded on resume) or the new one (its
# staged files are renamed into place on resume); the stamps are checked on every load, so weights of one
# epoch are never paired with the optimizer/RNG state or the best-model label of another.

LAST, LAST_JSON, BEST = "last.safetensors", "last.json", "best.safetensors"


def _staged(name: str) -> str:
    return name.replace(".safetensors", ".next.safetensors")


def _stamp(path: Path) -> dict[str, str]:
    """The metadata stamp of a safetensors file (empty when unreadable or unstamped)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except Exception:
        return {}


def stage_epoch(
    seed_dir: Path, *, model, optimizer, scheduler, state: dict[str, Any], improved: bool
) -> dict[str, Any]:
    """Step 1: write the staged tensor files for the epoch ``state["epoch"]``; returns the commit record
    (to be passed to :func:`commit_epoch` once the epoch's other files are written)."""
    seed_dir = Path(seed_dir)
    state_id = uuid.uuid4().hex
    epoch = int(state["epoch"])
    meta = _state_meta(model, optimizer, scheduler, state)
    tensors = meta.pop("_tensors")
    stamp = {"epoch": str(epoch), "state_id": state_id}
    atomic_save_tensors(seed_dir / _staged(LAST), tensors, metadata=stamp)
    best_id = state.get("best_state_id")
    if improved:
        atomic_save_tensors(seed_dir / _staged(BEST), model_tensors(model), metadata=stamp)
        best_id = state_id
    state["best_state_id"] = best_id
    meta["state"] = dict(state)
    meta["commit"] = {
        "epoch": epoch,
        "state_id": state_id,
        "best_state_id": best_id,
        "best_epoch": int(state["best_epoch"]),
    }
    return meta


def commit_epoch(seed_dir: Path, meta: dict[str, Any]) -> None:
    """Step 2, the commit point: ``last.json`` names the staged state.  Then step 3 (settle)."""
    atomic_write_json(Path(seed_dir) / LAST_JSON, meta)
    settle_seed_dir(Path(seed_dir), meta)


def settle_seed_dir(seed_dir: Path, meta: dict[str, Any] | None) -> None:
    """Step 3, also run on resume: rename the committed staged files into place, drop uncommitted ones and
    stale temp files."""
    for tmp in seed_dir.glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
    commit = (meta or {}).get("commit") or {}
    for name, wanted in ((LAST, commit.get("state_id")), (BEST, commit.get("best_state_id"))):
        staged = seed_dir / _staged(name)
        if staged.is_file():
            if wanted is not None and _stamp(staged).get("state_id") == wanted:
                os.replace(staged, seed_dir / name)
            else:
                staged.unlink()  # written by an epoch that never committed


def _bad_state(path: Path, problem: str) -> DataError:
    return DataError(
        f"resume state {str(path)!r}: {problem}; the seed cannot be resumed consistently "
        f"(move its directory away to retrain the seed)"
    )


def recover_seed_dir(seed_dir: Path) -> dict[str, Any] | None:
    """On resume (rank 0): settle the seed directory and return its committed ``last.json`` record, or
    None when nothing was ever committed (then the uncommitted files of a first epoch are removed).
    A seed directory with committed files but no readable, consistent ``last.json`` is refused rather
    than silently retrained over."""
    seed_dir = Path(seed_dir)
    meta_path = seed_dir / LAST_JSON
    if not meta_path.is_file():
        committed = [n for n in (LAST, BEST) if (seed_dir / n).exists()]
        if committed:
            raise _bad_state(meta_path, f"is missing although {committed[0]} exists")
        settle_seed_dir(seed_dir, None)
        (seed_dir / "epochs.csv").unlink(missing_ok=True)  # rows of an epoch that never committed
        return None
    meta = read_json(meta_path, error=DataError)
    _check_meta(meta_path, meta)
    settle_seed_dir(seed_dir, meta)
    commit = meta.get("commit")
    if commit is not None:  # runs written before commit records: nothing to cross-check
        for name, key in ((LAST, "state_id"), (BEST, "best_state_id")):
            if commit[key] is None:
                continue
            got = _stamp(seed_dir / name).get("state_id")
            if got != commit[key]:
                epoch = commit["epoch"] if name == LAST else commit["best_epoch"]
                raise _bad_state(
                    seed_dir / name, f"is not the state that {LAST_JSON} committed (epoch {epoch})"
                )
    return meta


def _check_meta(path: Path, meta: Any) -> None:
    """The fields of ``last.json`` that loading reads, with their types (one DataError naming the key)."""

    def need(obj, key, kinds, where):
        kinds = kinds if isinstance(kinds, tuple) else (kinds,)
        if not isinstance(obj, dict) or key not in obj:
            raise _bad_state(path, f"key '{where}{key}' is missing")
        if not isinstance(obj[key], kinds) or (isinstance(obj[key], bool) and bool not in kinds):
            raise _bad_state(path, f"key '{where}{key}' has the wrong type ({type(obj[key]).__name__})")
        return obj[key]

    need(meta, "state", dict, "")
    st = meta["state"]
    need(st, "epoch", int, "state.")
    need(st, "best_epoch", int, "state.")
    need(st, "best_valid", (int, float), "state.")
    need(st, "done", bool, "state.")
    opt = need(meta, "optimizer", dict, "")
    need(opt, "param_groups", list, "optimizer.")
    keys = need(opt, "state_keys", dict, "optimizer.")
    for pid, items in keys.items():
        if not isinstance(items, list) or not all(isinstance(i, list) and len(i) == 3 for i in items):
            raise _bad_state(path, f"key 'optimizer.state_keys.{pid}' is not a list of [name, kind, value]")
    if "scheduler" not in meta:
        raise _bad_state(path, "key 'scheduler' is missing")
    rng = need(meta, "rng", dict, "")
    num = need(rng, "numpy", list, "rng.")
    py = need(rng, "python", list, "rng.")
    if len(num) != 4 or len(py) != 3 or not isinstance(py[1], list):
        raise _bad_state(path, "key 'rng' does not hold numpy and Python RNG states")
    if "commit" in meta:
        c = need(meta, "commit", dict, "")
        need(c, "epoch", int, "commit.")
        need(c, "state_id", str, "commit.")
        if c.get("best_state_id") is not None:
            need(c, "best_state_id", str, "commit.")
        if c["epoch"] != st["epoch"]:
            raise _bad_state(path, f"commit epoch {c['epoch']} differs from state epoch {st['epoch']}")


def _state_meta(model, optimizer, scheduler, state) -> dict[str, Any]:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    opt_meta = {"param_groups": opt["param_groups"], "state_keys": {}}
    for pid, pstate in opt["state"].items():
        keys = []
        for name, val in pstate.items():
            if isinstance(val, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = val if val.dim() else val.reshape(1)
                keys.append([name, "tensor", val.dim()])
            else:
                keys.append([name, "value", val])
        opt_meta["state_keys"][str(pid)] = keys
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    return {
        "_tensors": tensors,
        "state": state,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": _python_rng_to_json(random.getstate()),
        },
    }


def save_training_state(path: Path, *, model, optimizer, scheduler, state: dict[str, Any]) -> None:
    """Model + optimizer tensors in ``path`` and a JSON sidecar, with no commit record (for callers
    outside the epoch loop; training uses :func:`stage_epoch` + :func:`commit_epoch`)."""
    meta = _state_meta(model, optimizer, scheduler, state)
    tensors = meta.pop("_tensors")
    path = Path(path)
    atomic_save_tensors(path, tensors)
    atomic_write_json(path.with_suffix(".json"), meta)


def load_training_state(
    path: Path, *, model, optimizer, scheduler, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Restore model, optimizer, scheduler and RNG states from ``path`` (+ its JSON, or ``meta`` as
    returned by :func:`recover_seed_dir`); returns the loop state."""
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if meta is None:
        if not meta_path.is_file():
            raise DataError(f"resume state {str(meta_path)!r} is missing")
        meta = read_json(meta_path, error=DataError)
        _check_meta(meta_path, meta)
    tensors = load_tensors(path)
    try:
        model_part = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        _check_fit(path, model_part, model)
        model.load_state_dict(model_part)
        opt_state: dict[int, dict[str, Any]] = {}
        for pid, keys in meta["optimizer"]["state_keys"].items():
            entry = {}
            for name, kind, extra in keys:
                if kind == "tensor":
                    t = tensors[f"optim.{pid}.{name}"]
                    entry[name] = t.reshape(()) if extra == 0 else t
                else:
                    entry[name] = extra
            opt_state[int(pid)] = entry
        # ``capturable`` is how this process steps (a CUDA-graphed step sets it), not a property of the
        # state: a checkpoint of a graphed GPU run resumes eagerly on a CPU and vice versa
        groups = [
            {**g, "capturable": cur["capturable"]} if "capturable" in cur else g
            for g, cur in zip(meta["optimizer"]["param_groups"], optimizer.param_groups)
        ]
        optimizer.load_state_dict({"state": opt_state, "param_groups": groups})
        if scheduler is not None and meta["scheduler"] is not None:
            scheduler.load_state_dict(meta["scheduler"])
        torch.set_rng_state(tensors["rng.torch"])
        if torch.cuda.is_available():
            cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
            if cuda_states:
                torch.cuda.set_rng_state_all(cuda_states)
        kind, pos, has_gauss, cached = meta["rng"]["numpy"]
        np.random.set_state((kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
        random.setstate(_python_rng_from_json(meta["rng"]["python"]))
    except DataError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
        raise DataError(
            f"resume state {str(path)!r} does not fit this run ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]})"
        ) from None
    return meta["state"]


def load_best_weights(seed_dir: Path, model, *, best_epoch: int | None = None) -> None:
    """Load ``best.safetensors``; when it carries a stamp, it must be the epoch the loop recorded."""
    path = Path(seed_dir) / BEST
    stamp = _stamp(path)
    if best_epoch is not None and "epoch" in stamp and stamp["epoch"] != str(best_epoch):
        raise DataError(
            f"checkpoint {str(path)!r} holds epoch {stamp['epoch']}, but the best epoch is {best_epoch}"
        )
    load_model_weights(path, model)


def _python_rng_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(obj):
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)
