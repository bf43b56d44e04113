#!/usr/bin/env bash
# The GPU machine check (issues 17, 23) in one device call of at most 8 minutes, on a bare GPU machine
# (16 cores, a CUDA torch in python3, no network): installs the carry (infra/gpu/carry.sh) and the
# project offline into a fresh folder, checks the imports, then runs benchmarks/gpu.py within what is
# left of the time limit. The results (benchmarks/results/gpu.{json,md}) are rewritten after every
# phase, so a failure or the limit still leaves what was measured. docs/gpu.md has the device call.
#
#   bash infra/gpu/bench.sh [--carry DIR] [--site DIR] [--results DIR] [--copy-to DIR] [--limit-s S] [-- GPU.PY ARGS]
#
#   --carry DIR     wheels to install, no network (default .gpu-carry); none: only what python has
#   --site DIR      fresh install target, put first on PYTHONPATH (default /tmp/taid-site; emptied first)
#   --results DIR   where gpu.json / gpu.md go (default benchmarks/results)
#   --copy-to DIR   also copy the results and this script's log there at the end (the device tool's $OUT)
#   --limit-s S     the whole script's time limit, install included (default 470)
#   PY=...          the interpreter (default python3: on the GPU machines the one with CUDA torch)
# Exit status: gpu.py's (0: every phase ran; 1: some failed or were skipped for time), 2: imports
# missing after the install (named), 3: no install folder.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
CARRY=.gpu-carry SITE=/tmp/taid-site RESULTS=benchmarks/results COPY_TO="" LIMIT_S=470
while [ $# -gt 0 ]; do
  case "$1" in
    --carry) CARRY=$2; shift 2 ;;
    --site) SITE=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --copy-to) COPY_TO=$2; shift 2 ;;
    --limit-s) LIMIT_S=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "bench.sh: unknown option $1 (gpu.py's options go after --)" >&2; exit 64 ;;
  esac
done
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 AWS_EC2_METADATA_DISABLED=true
elapsed() { echo $(( $(date +%s) - T0 )); }
log() { printf '[bench.sh %3ss] %s\n' "$(elapsed)" "$*"; }
if [ -n "$COPY_TO" ]; then
  mkdir -p "$COPY_TO"
  exec > >(tee -a "$COPY_TO/bench.log") 2>&1
fi
finish() {
  if [ -n "$COPY_TO" ]; then
    cp -f "$RESULTS"/gpu.json "$RESULTS"/gpu.md "$COPY_TO"/ 2>/dev/null || log "no results to copy"
  fi
}
trap finish EXIT

# ---------------------------------------------------------------- 1. install (no network)
log "1/3 install into $SITE (python: $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])'))"
rm -rf "$SITE" && mkdir -p "$SITE" || { log "FAILED: cannot make $SITE"; exit 3; }
shopt -s nullglob
wheels=("$CARRY"/*.whl)
pipi=("$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --target "$SITE")
if [ ${#wheels[@]} -gt 0 ]; then
  log "carry: ${#wheels[@]} wheels, $(du -sh "$CARRY" | cut -f1) in $CARRY"
  for w in "${wheels[@]}"; do echo "  ${w##*/}"; done
  if ! "${pipi[@]}" "${wheels[@]}"; then  # one by one: the import check below then says what is missing
    log "pip install of the whole carry failed; installing the wheels one by one"
    for w in "${wheels[@]}"; do "${pipi[@]}" --upgrade "$w" || log "FAILED: ${w##*/}"; done
  fi
else
  log "carry: no wheels in $CARRY: everything must come from $PY's own packages"
fi
project=("$CARRY"/taid_archive-*.whl)
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PATH="$SITE/bin:$PATH"
if [ ${#project[@]} -eq 0 ]; then  # the usual case: the project travels as the checkout; built offline
  if ! { "$PY" infra/gpu/carry.py project "$SITE/.project" >/dev/null && "${pipi[@]}" "$SITE"/.project/taid_archive-*.whl; }
  then  # e.g. the machine's setuptools refuses pyproject.toml: the checkout itself still runs
    log "could not build or install the project's wheel: running the checkout itself (PYTHONPATH)"
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH#"$SITE"}"
  fi
  rm -rf "$SITE/.project"
fi
log "installed: $(du -sh "$SITE" | cut -f1)"

# ---------------------------------------------------------------- 2. what this python has now
log "2/3 imports"
# from the install folder, as gpu.py runs below (a script on stdin has the working directory on its path)
(cd "$SITE" && "$PY" -) <<'PY'
import importlib, sys
need = ["torch", "numpy", "PIL", "pyarrow", "fsspec", "pydantic", "pydantic_settings", "ray", "models", "pipeline"]
extra = ["pillow_heif", "s3fs", "prefect"]
missing = []
for name in need + extra:
    try:
        mod = importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - report every one, not only the first
        print(f"  {name:18s} MISSING ({type(exc).__name__}: {exc})" if name in need else f"  {name:18s} not there")
        missing += [name] if name in need else []
        continue
    print(f"  {name:18s} {getattr(mod, '__version__', '')} {getattr(mod, '__file__', '')}")
from PIL import features
import torch
print(f"  AVIF {features.check('avif')}; CUDA {torch.cuda.is_available()}"
      + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
if missing:
    print(f"bench.sh: {sys.executable} lacks {', '.join(missing)} after the install: add them to "
          "infra/gpu/carry-requirements.txt and rebuild the carry (infra/gpu/carry.sh)")
    sys.exit(2)
PY
rc=$?
[ $rc -eq 0 ] || exit 2
nvidia-smi --query-gpu=name,memory.total,driver_version,utilization.gpu --format=csv,noheader 2>/dev/null \
  || log "no nvidia-smi: the busy fraction comes from the model actor's own counters"

# ---------------------------------------------------------------- 3. the check, within the time left
left=$(( LIMIT_S - $(elapsed) ))
budget=$(( left - 30 ))  # margin: Ray's shutdown, the last save
if [ $budget -lt 30 ]; then log "FAILED: only ${left}s left after the install"; exit 1; fi
log "3/3 benchmarks/gpu.py, ${budget}s budget (killed at ${left}s)"
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd) REPO=$PWD
# from the install folder: Ray puts the driver's working directory first on its workers' sys.path, and
# the workers must import the installed project too, not the checkout
(cd "$SITE" && exec timeout --signal=TERM --kill-after=20 "$left" "$PY" "$REPO/benchmarks/gpu.py" --budget-s "$budget" \
  --out "$RESULTS/gpu.json" "$@")
rc=$?
[ $rc -eq 124 ] && log "gpu.py reached the time limit: the results hold the phases done"
log "done, gpu.py exit $rc; results in $RESULTS/gpu.json and gpu.md"
exit $rc
