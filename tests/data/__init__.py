"""Tests of gsit.data: one file per loader (MMSA pickle, npz, MIntRec, MOSI CSV, synthetic) and more."""
