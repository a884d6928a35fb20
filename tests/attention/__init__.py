"""Tests of gsit.attention: the backend registry, every backend against the reference, kernel specifics."""
