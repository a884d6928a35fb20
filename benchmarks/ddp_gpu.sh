#!/usr/bin/env bash
# DDP on GPUs: the same `gsit train` with 1 and with N processes (NCCL), MOSI-sized synthetic data,
# d=128, 4 layers, 3 epochs, one seed.  Writes run directories and a summary under $OUT (default /tmp/ddp).
#
#   OUT=dir NPROC=2 bash benchmarks/ddp_gpu.sh          # from the repository root, on a machine with >= 2 GPUs
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/ddp}
NPROC=${NPROC:-2}
mkdir -p "$OUT"
ARGS=(train --device cuda --dataset synthetic data.synthetic_size="mosi" model.d_model=128 model.num_layers=4
      train.max_epochs=3 train.early_stop=100 --seeds 1111 --quiet)
for n in 1 "$NPROC"; do
  echo "== torchrun --nproc_per_node=$n" | tee -a "$OUT/ddp.log"
  t0=$(date +%s.%N)
  torchrun --standalone --nproc_per_node="$n" -m gsit.cli "${ARGS[@]}" --out "$OUT/runs_np$n" 2>&1 | tail -n 25 | tee -a "$OUT/ddp.log"
  echo "exit ${PIPESTATUS[0]} wall $(python3 -c "import time; print(round(time.time() - $t0, 1))") s" | tee -a "$OUT/ddp.log"
  find "$OUT/runs_np$n" -name epochs.csv -exec sh -c 'echo "$1"; cat "$1"' _ {} \; | tee -a "$OUT/ddp.log"
done
