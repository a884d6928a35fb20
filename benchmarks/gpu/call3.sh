#!/usr/bin/env bash
# GPU session call 3: MOSEI-shaped whole-run rows (bench_train.py) + the GPU test file.
set -u
export PYTHONPATH=src
W=/tmp/gw3; mkdir -p $W
CSV=$OUT/train_rows_mosei.csv
B="python benchmarks/bench_train.py --work $W --out $CSV --append --datasets mosei --mosei-train 1024 --encoders bert-base --epochs 3 --timeout 150"
$B --models gsit --paths eager,fast > $OUT/b1.log 2>&1
$B --models gsit --paths fast --amp bf16 --backend triton > $OUT/b2.log 2>&1
$B --models mult --paths graphed,eager > $OUT/b3.log 2>&1
grep -h '^{' $OUT/b*.log
timeout 200 python -m pytest -p no:logging -p no:cacheprovider -m gpu -q -s tests/train/test_execution_gpu.py -k "not mult_fast_path_equals_eager[compiled_graphed]" 2>&1 | grep -E "MAXDIFF|passed|failed|Error|assert" | tail -30
