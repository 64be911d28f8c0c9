#!/usr/bin/env bash
# Model-zoo style launch on one Ascend server with a rank table (HCCL), one process per device:
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE [CONFIG] [key=value ...]
# msrun (`make train-8p`) is the recommended launcher and needs no rank table; this script keeps
# the model zoo's interface for clusters that still hand out rank tables. Ascend only.
set -euo pipefail
if [ $# -lt 1 ] || [ ! -f "$1" ]; then
  echo "usage: bash scripts/run_distribute_train.sh RANK_TABLE_FILE [CONFIG] [key=value ...]" >&2
  echo "error: rank table file not found: ${1:-<missing>}" >&2
  exit 2
fi
root=$(cd "$(dirname "$0")/.." && pwd)
export RANK_TABLE_FILE=$(realpath "$1")
config=${2:-configs/stnet_r50_k400.yaml}
shift $(( $# >= 2 ? 2 : 1 ))
export RANK_SIZE=${RANK_SIZE:-8}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
python=${PYTHON:-$root/.venv/bin/python}
mkdir -p "$root/runs/rank-table-logs"
for ((rank = 0; rank < RANK_SIZE; rank++)); do
  DEVICE_ID=$rank RANK_ID=$rank "$python" -m trainer.train --config "$config" device_target=Ascend "$@" \
    > "$root/runs/rank-table-logs/rank_$rank.log" 2>&1 &
done
echo "started $RANK_SIZE ranks; logs in runs/rank-table-logs/ (rank 0 also writes runs/<name>/train.jsonl)"
wait
