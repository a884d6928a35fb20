"""Tests of the training floor: train, evaluate, runs, distributed, spread, execution, progress."""
