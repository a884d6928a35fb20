#!/usr/bin/env bash
# The one command for the GPU machine: the GPU tests, then the fusion benchmark, in under 9 minutes.
#
#   OUT=/some/dir bash benchmarks/run_gpu.sh        # from the repository root (PYTHONPATH=src is set here)
#
# Writes into $OUT (default benchmarks/results): gpu_tests.log, bench.log, <gpu-name>.csv and, when
# matplotlib is importable, <gpu-name>.png; the CSV is also left in benchmarks/results/.  The benchmark
# rewrites its CSV after every row, so a run cut short by the time limit keeps what it measured.
# Env knobs: TOTAL_S (whole-script budget, default 530), TEST_S (test time limit, default 170),
# TESTS (what pytest runs, default tests/), BENCH_ARGS (extra flags for bench_fusion.py, e.g. "--quick").
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-benchmarks/results}
TOTAL_S=${TOTAL_S:-530}
TEST_S=${TEST_S:-170}
TESTS=${TESTS:-tests/}
mkdir -p "$OUT" benchmarks/results
t0=$(date +%s)

python3 -c 'import torch, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "gpu",
torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "python", sys.version.split()[0])'

timeout -k 10 "$TEST_S" python3 -m pytest -m gpu -q -p no:cacheprovider $TESTS 2>&1 | tee "$OUT/gpu_tests.log"
echo "gpu tests exit status: ${PIPESTATUS[0]} (124 = cut by the ${TEST_S} s limit)" | tee -a "$OUT/gpu_tests.log"

used=$(( $(date +%s) - t0 ))
left=$(( TOTAL_S - used ))
budget=$(( left - 45 ))   # the row in flight when the budget runs out still has to finish
if [ "$budget" -lt 30 ]; then budget=30; fi
name=$(python3 -c 'import re, torch; print(re.sub(r"[^A-Za-z0-9_.-]+", "-", torch.cuda.get_device_name(0)).strip("-"))')
csv="benchmarks/results/$name.csv"
echo "bench: budget ${budget} s (hard limit $(( left - 5 )) s) -> $csv"
timeout -k 5 $(( left - 5 )) python3 benchmarks/bench_fusion.py --max-seconds "$budget" --out "$csv" \
    ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
echo "bench exit status: ${PIPESTATUS[0]}" | tee -a "$OUT/bench.log"
if [ "$(cd "$(dirname "$csv")" && pwd)" != "$(cd "$OUT" && pwd)" ]; then cp "$csv" "$OUT/"; fi
python3 benchmarks/plot.py "$csv" --out "$OUT/$name.png" 2>&1 | tail -n 3 || true
echo "total $(( $(date +%s) - t0 )) s"
