"""Tests of the user surface: the gsit command (cli.py, overrides, errors) and the Python API."""
