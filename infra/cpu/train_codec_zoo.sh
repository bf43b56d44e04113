#!/usr/bin/env bash
# Fine-tunes the codec-aware pairs (issue 9) from the lossless zoo pairs, on CPU, side by side
# (one thread each), then exports them into the zoo. This is how the shipped taid-x2-webp,
# taid-x4-webp and taid-x4-jpeg were made (README, "Model zoo"); the quality defaults passed to
# add_codec_model.py were chosen on the held-out training split (see the zoo entries).
#   DATA=../shared/data/train OUT=runs/codec MINUTES=85 bash infra/cpu/train_codec_zoo.sh
set -u
DATA=${DATA:-../shared/data/train}
OUT=${OUT:-runs/codec}
MINUTES=${MINUTES:-85}
PY=${PY:-python3}
mkdir -p "$OUT"
common=(--data "$DATA/T91" "$DATA/BSD200" --channel-gradient proxy --guidance-weight 1.0 --lr 0.0002
        --warmup-steps 100 --val-every 250 --ckpt-every 250 --device cpu --minutes "$MINUTES")
run() {
  name=$1; shift
  OMP_NUM_THREADS=1 $PY -m flows.cli train --out "$OUT/$name" "${common[@]}" "$@" > "$OUT/$name.log" 2>&1 &
}
run x2-webp --scale 2 --init-from taid-x2 --channel webp-lossy --channel-quality 30 90 --patch 128 --batch 8 --steps 2500
run x4-webp --scale 4 --init-from taid-x4 --channel webp-lossy --channel-quality 30 95 --patch 192 --batch 8 --steps 3500
run x4-jpeg --scale 4 --init-from taid-x4 --channel jpeg --channel-quality 30 95 --patch 192 --batch 8 --steps 3500
wait
for name in x2-webp x4-webp x4-jpeg; do tail -n 1 "$OUT/$name/history.jsonl"; done
