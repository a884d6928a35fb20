"""Fusion-block benchmark (GsiT backends x execution modes, and MulT): correctness first, then time.

    PYTHONPATH=src python benchmarks/bench_fusion.py           # full grid -> benchmarks/results/<gpu>.csv
    PYTHONPATH=src python benchmarks/bench_fusion.py --quick   # smoke run (x1, B=32, bf16)
    python benchmarks/bench_fusion.py --quick --device cpu --scale 16 --out /tmp/bench.csv   # CPU smoke

All logic lives in :mod:`gsit.bench` (its docstring says what is timed and how); ``--help`` lists the flags.
"""

from __future__ import annotations

from pathlib import Path

from gsit.bench import main

if __name__ == "__main__":
    raise SystemExit(main(results_dir=Path(__file__).resolve().parent / "results"))
