#!/usr/bin/env bash
# Trains candidate x2/x4 pairs side by side on one GPU, each within a wall-clock budget, then
# exports their weights. This is how the shipped taid-x2 / taid-x4 were made (see README, "Model zoo").
#   DATA=../shared/data/train OUT=runs MINUTES=7.5 bash infra/gpu/train_zoo.sh
set -u
DATA=${DATA:-../shared/data/train}
OUT=${OUT:-runs}
MINUTES=${MINUTES:-7.5}
PY=${PY:-python3}
LOGS=${LOGS:-$OUT}
mkdir -p "$OUT" "$LOGS"
run() {
  name=$1; shift
  $PY -m flows.cli train --data "$DATA/T91" "$DATA/BSD200" --out "$OUT/$name" --minutes "$MINUTES" \
      --steps 200000 --val-every 2000 --ckpt-every 2000 --fresh "$@" > "$LOGS/$name.log" 2>&1 &
}
run x2-g010 --scale 2 --guidance-weight 0.010 --patch 128 --batch 32
run x2-g030 --scale 2 --guidance-weight 0.030 --patch 128 --batch 32
run x4-g010 --scale 4 --guidance-weight 0.010 --patch 192 --batch 32
run x4-g030 --scale 4 --guidance-weight 0.030 --patch 192 --batch 32
wait
for log in "$LOGS"/*.log; do echo "== $log"; tr '\r' '\n' < "$log" | grep -v '^taid' | tail -n 5; tail -n 3 "$OUT/$(basename "${log%.log}")/history.jsonl"; done
