"""Test-only ports of official code, used as parity references (never imported by ``gsit``)."""
