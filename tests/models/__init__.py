"""Tests of gsit.models: GsiT, Vanilla, MulT, checkpoint key names, parity with the original code."""
