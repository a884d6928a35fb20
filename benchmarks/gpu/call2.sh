#!/usr/bin/env bash
# GPU session call 2: MOSI-shaped whole-run rows (bench_train.py), BERT-base-sized encoder fine-tuned.
set -u
export PYTHONPATH=src
W=/tmp/gw2; mkdir -p $W
CSV=$OUT/train_rows.csv
B="python benchmarks/bench_train.py --work $W --out $CSV --append --datasets mosi --encoders bert-base --epochs 3 --timeout 200"
$B --models gsit --paths fast > $OUT/b1.log 2>&1
$B --models gsit --paths fast --amp bf16 --backend triton > $OUT/b2.log 2>&1
$B --models mult --paths graphed,eager > $OUT/b3.log 2>&1
$B --models gsit --paths fast --amp bf16 --backend triton train.compile_text_encoder=true > $OUT/b4.log 2>&1
cat $OUT/b*.log | grep '^{'
