"""The memory-scaling sweep as it was first run (the ``command`` column of ``results/memory_scaling_*.csv``
says ``python benchmarks/bench_memory.py ...``): now a shim for the installed command, same options.

    gsit memory-scaling --device cpu --out benchmarks/results          # what to type after pip install
    PYTHONPATH=src python benchmarks/bench_memory.py --device cpu --out benchmarks/results   # the same

The code lives in :mod:`gsit.analysis.memory_scaling` (sweep, CSV, options),
:mod:`gsit.analysis.memory_measure` (one point) and :mod:`gsit.analysis.memory_plot` (slopes, PNG); a new
CSV's ``command`` column records ``gsit memory-scaling ...`` either way.
"""

from __future__ import annotations

import sys

from gsit.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["memory-scaling", *sys.argv[1:]]))
