"""Small helpers shared by the data readers."""

from __future__ import annotations

__all__ = ["detail"]


def detail(exc: BaseException, limit: int = 200) -> str:
    """An exception's text as one short line without a trailing period (for one-sentence DataErrors)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.rstrip(".")
