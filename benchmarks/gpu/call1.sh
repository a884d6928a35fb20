#!/usr/bin/env bash
# GPU session call 1: where the fast epoch's time goes (profile_train.py) + the graphed GPU tests.
set -u
export PYTHONPATH=src
W=/tmp/gw; mkdir -p $W
nvidia-smi --query-gpu=name,memory.total --format=csv > $OUT/gpu.txt 2>&1
P="python benchmarks/profile_train.py --work $W --out $OUT"
timeout 120 $P --encoder none --execution graphed > $OUT/p1.log 2>&1; echo "p1 rc=$?" >> $OUT/rc.txt
timeout 150 $P --encoder bert-base --execution graphed > $OUT/p2.log 2>&1; echo "p2 rc=$?" >> $OUT/rc.txt
timeout 150 $P --encoder bert-base --execution graphed --amp bf16 model.attention_backend=triton > $OUT/p3.log 2>&1; echo "p3 rc=$?" >> $OUT/rc.txt
timeout 150 python -m pytest -p no:logging -p no:cacheprovider -m gpu -q -s tests/train/test_execution_gpu.py -k "graphed and not compiled_graphed and not compiled-clip" > $OUT/t1.log 2>&1; echo "t1 rc=$?" >> $OUT/rc.txt
timeout 120 $P --encoder none --execution compiled_graphed --amp bf16 model.attention_backend=triton > $OUT/p4.log 2>&1; echo "p4 rc=$?" >> $OUT/rc.txt
