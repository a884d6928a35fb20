"""Checkpoints and result files: safetensors + JSON, written atomically (temp file + rename), loaded without
pickle.  A training-state checkpoint holds the model, the optimizer's tensors, the RNG states and a JSON
sidecar with everything else, so ``--resume`` continues bit-identically on CPU."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

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
    """JSON-safe plain values (numpy scalars and tensors to Python); NaN stays NaN (Python's json writes it)."""
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


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Save ``tensors`` as safetensors at ``path`` atomically (temp sibling + fsync + rename)."""
    path = Path(path)
    tmp = None
    try:
        tmp = _temp_sibling(path)
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
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
        raise DataError(f"checkpoint {str(path)!r} does not fit the model: missing {missing[:5]}, "
                        f"unexpected {unexpected[:5]}")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise DataError(f"checkpoint {str(path)!r} does not fit the model: tensor {k!r} has shape "
                            f"{tuple(tensors[k].shape)} but the model's has {tuple(v.shape)} (was the run "
                            f"trained with other settings or data?)")


def load_model_weights(path: Path, model: torch.nn.Module) -> None:
    tensors = load_tensors(path)
    _check_fit(path, tensors, model)
    model.load_state_dict(tensors, strict=True)


# ----------------------------------------------------------------------------- training state
def save_training_state(path: Path, *, model, optimizer, scheduler, state: dict[str, Any]) -> None:
    """Model + optimizer tensors in ``path`` (safetensors), everything else in ``path.with_suffix('.json')``.
    The JSON is written last: a state is complete only when its JSON names the tensor file's epoch."""
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
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    np_state = np.random.get_state()
    tensors["rng.numpy"] = torch.from_numpy(np_state[1].astype(np.int64))
    meta = {
        "state": state,
        "optimizer": opt_meta,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "rng": {"numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])],
                "python": _python_rng_to_json(random.getstate())},
    }
    path = Path(path)
    atomic_save_tensors(path, tensors)
    atomic_write_json(path.with_suffix(".json"), meta)


def load_training_state(path: Path, *, model, optimizer, scheduler) -> dict[str, Any]:
    path = Path(path)
    meta_path = path.with_suffix(".json")
    if not meta_path.is_file():
        raise DataError(f"resume state {str(meta_path)!r} is missing")
    meta = json.loads(meta_path.read_text())
    tensors = load_tensors(path)
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
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
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["optimizer"]["param_groups"]})
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
    return meta["state"]


def _python_rng_to_json(state):
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_rng_from_json(obj):
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)
