"""Tests of the scripts in benchmarks/ (CPU smoke runs: plumbing, not speed)."""
