#!/usr/bin/env bash
# StNet inference from a folder made by trainer.infer310.package: the runner writes one logits
# file per clip under work/result/, then the postprocess prints top1_correct=…, tot=…, acc=… .
# Runs from any directory, without the training checkout; needs python3 with
# requirements-310.txt (Ascend: numpy + MindSpore Lite for Ascend) or MindSpore (CPU).
#
#   bash run.sh [Ascend|CPU] [device_id]     default: Ascend 0; PYTHON=... picks the interpreter
set -euo pipefail

usage="usage: bash run.sh [Ascend|CPU] [device_id]"
if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    echo "$usage"
    exit 0
fi
if (( $# > 2 )); then
    echo "error: $usage" >&2
    exit 2
fi
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
device="${1:-Ascend}"
device_id="${2:-0}"
python="${PYTHON:-python3}"
models=("$here"/model/*.mindir)
if (( ${#models[@]} != 1 )) || [[ ! -f "${models[0]}" ]]; then
    echo "error: expected exactly one .mindir in $here/model" >&2
    exit 2
fi

# python -m puts the working directory first on sys.path: run from lib/ so the packaged trainer
# code is imported, not another copy on PYTHONPATH or in the caller's directory.
cd "$here/lib"
"$python" -m trainer.infer310.runner --model "${models[0]}" --work "$here/work" \
    --device "$device" --device-id "$device_id"
"$python" -m trainer.infer310.postprocess --work "$here/work"
