"""Small helpers shared by the data readers (and the run-directory readers: :func:`read_json`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gsit.errors import DataError, GsitError

__all__ = ["detail", "read_json"]


def detail(exc: BaseException, limit: int = 200) -> str:
    """An exception's text as one short line without a trailing period (for one-sentence DataErrors).

    ``OSError`` gives its ``strerror`` ("Permission denied"), never a raw ``[Errno N]`` prefix."""
    if isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.rstrip(".")


def read_json(
    path: str | os.PathLike, *, error: type[GsitError] = DataError, max_bytes: int = 64 << 20
) -> Any:
    """Parse the JSON file at ``path``; every failure is one ``error`` naming the file (missing, a directory,
    unreadable, too large, not UTF-8, invalid JSON with line and column, or nested too deeply)."""
    p = Path(path)
    try:
        size = p.stat().st_size
        if p.is_dir():
            raise error(f"{p}: is a directory, but a JSON file was expected.")
        if size > max_bytes:
            raise error(f"{p}: is {size} bytes, more than the {max_bytes} a JSON file here may have.")
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{p}: file not found.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"{p}: cannot be read ({detail(exc)}).") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{p}: is not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno}).") from None
    except RecursionError:
        raise error(f"{p}: is not valid JSON here (it nests arrays or objects too deeply).") from None
