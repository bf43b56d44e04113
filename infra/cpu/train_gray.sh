#!/usr/bin/env bash
# Trains the colour-aware grayscale pair taid-gray (issue 24) and its colorization baseline
# taid-gray-luma (the same TAU on plain BT.601 luma, no TAD) on CPU, one thread each, side by side,
# with the same steps, batches and data, then exports both into the zoo. This is how the shipped
# weights were made (docs/models.md); on the shared 2-core VM it took about 70 minutes.
#   DATA=../shared/data/train OUT=runs/gray STEPS=7000 bash infra/cpu/train_gray.sh
set -u
DATA=${DATA:-../shared/data/train}
OUT=${OUT:-runs/gray}
STEPS=${STEPS:-7000}
PY=${PY:-python3}
mkdir -p "$OUT"
common=(--data "$DATA/T91" "$DATA/BSD200" --channels 32 --down-blocks 3 --up-blocks 6 --patch 64 --batch 16
        --steps "$STEPS" --lr 0.001 --warmup-steps 200 --guidance-weight 1.0 --val-every 250 --ckpt-every 250
        --device cpu)
for task in gray luma; do
  OMP_NUM_THREADS=1 $PY -m flows.cli train --task "$task" --out "$OUT/$task" "${common[@]}" > "$OUT/$task.log" 2>&1 &
done
wait
for task in gray luma; do tail -n 1 "$OUT/$task/history.jsonl"; done
