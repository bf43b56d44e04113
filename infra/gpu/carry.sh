#!/usr/bin/env bash
# Builds the GPU check's carry (issue 23): the wheels a bare GPU machine (CPython 3.12, manylinux
# x86_64, no network) lacks, at most 60 MiB, in DIR (default .gpu-carry/, ignored by git). Run it on a
# CPU machine that reaches the package registry; it prints the list, the total and whether the call
# (working tree + carry) fits the 64 MiB a device call may send. Then, on the GPU machine:
#   bash infra/gpu/bench.sh .gpu-carry          (the device call: docs/gpu.md)
#
#   bash infra/gpu/carry.sh [--python-version 3.12] [--with-project] [DIR]
#   bash infra/gpu/carry.sh check [DIR]          # list, size and dependency check of a built carry
#
# What goes in: infra/gpu/carry-requirements.txt (pinned, each line says why), checked against
# infra/gpu/machine-packages.txt; ray is repacked (infra/gpu/carry.py: no jars, dashboard web build
# or rllib, symbol tables stripped, LZMA). The project itself travels as the checkout; --with-project
# adds its wheel too (13 MiB of weights, twice: over the call's 64 MiB with this repository).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "${1:-}" = check ]; then
  shift
  exec "$PY" infra/gpu/carry.py check "$@"
fi
exec "$PY" infra/gpu/carry.py build "$@"
