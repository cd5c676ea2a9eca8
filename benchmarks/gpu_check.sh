#!/usr/bin/env bash
# The GPU check: every CUDA path of kdcompress on a CUDA machine in a few minutes (budget: under 8 minutes on
# one datacentre GPU), one summary table, exit 1 on any failed step.
#
#   bash benchmarks/gpu_check.sh              # on a CUDA machine
#   bash benchmarks/gpu_check.sh --dry-run    # every step on the CPU with tiny sizes (its plumbing; the suite runs it)
#
# Steps (benchmarks/gpu_check.py, all in one Python process): kdcompress doctor (torch sees CUDA, ORT's CUDA
# provider starts); a teacher trained on synthetic CIFAR-shaped data (synthetic:classes=10,size=32,channels=3);
# a distill on it with bf16 autocast + channels_last (what the step engine does on CUDA), without and with
# --compile, exporting the fp16 variant too; the same distill with the teacher-output cache
# (train.teacher_cache=views); throughput.py --device cuda against the fp32 mdistiller-style baseline (goal: kd
# >= 2x) and IC-KD vs KD step time (goal <= 1.10x); select and validate with onnxruntime-gpu's CUDA provider,
# TensorRT where doctor says it starts; fp16 variant parity (validate's parity gate on the fp16 file). The
# goals are checked on the GPU only (a CPU says nothing about them): --dry-run reports them as "info".
# Python: $PYTHON when set, else this checkout's .venv/bin/python (what `make install` creates), else python3 or
# python on PATH; the first that imports kdcompress (this checkout's: its root goes first on PYTHONPATH) and typer
# and finds torch and onnxruntime. `--which-python` prints the one chosen and exits.
# Environment: PYTHON, GPU_CHECK_DIR (work directory; default: a new temporary one).
set -u -o pipefail

WHICH=0
for a in "$@"; do
  case "$a" in
    --dry-run) ;;
    --which-python) WHICH=1 ;;
    -h|--help) sed -n 2,19p "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$a' (use --dry-run or --which-python)" >&2; exit 2 ;;
  esac
done
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # the check exercises the code beside it

usable() {  # fast: imports kdcompress (torch-free) and typer, only looks torch and onnxruntime up
  command -v "$1" >/dev/null 2>&1 && "$1" -c 'import importlib.util as u, kdcompress, typer
assert u.find_spec("torch") and u.find_spec("onnxruntime")' >/dev/null 2>&1
}
if [[ -n "${PYTHON:-}" ]]; then  # named explicitly: used or refused, never silently replaced
  if ! usable "$PYTHON"; then
    echo "gpu_check.sh: PYTHON=$PYTHON cannot import kdcompress, typer, torch and onnxruntime; unset PYTHON to use $ROOT/.venv, or run \`make install\` first (creates .venv)" >&2
    exit 1
  fi
  PY="$PYTHON"
else
  PY=""
  for c in "$ROOT/.venv/bin/python" python3 python; do
    if usable "$c"; then PY="$c"; break; fi
  done
  if [[ -z "$PY" ]]; then
    echo "gpu_check.sh: no Python with kdcompress, typer, torch and onnxruntime ($ROOT/.venv/bin/python, python3, python): run \`make install\` first (creates .venv)" >&2
    exit 1
  fi
fi
if [[ $WHICH == 1 ]]; then echo "$PY"; exit 0; fi
export GPU_CHECK_DIR="${GPU_CHECK_DIR:-$(mktemp -d -t kdcompress-gpu-check.XXXXXX)}"
export KDCOMPRESS_CACHE="$GPU_CHECK_DIR/cache"  # a fresh latency cache and teacher-output cache
if [[ " $* " == *" --dry-run "* ]]; then
  export KDCOMPRESS_COMPILE_BACKEND="${KDCOMPRESS_COMPILE_BACKEND:-aot_eager}"  # no C compiler needed
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
echo "gpu_check.sh: using $PY" >&2
exec "$PY" "$HERE/gpu_check.py" "$@"
