"""CLI subcommands of the analysis tools (ablate, robustness, attention-map, tune, report)."""

from __future__ import annotations


def register(sub) -> None:
    """Add the analysis subcommands to the ``gsit`` parser's subparsers."""
