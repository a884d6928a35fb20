"""Tests of gsit.analysis: efficiency counts, ablation / robustness / attention maps / report, tune."""
