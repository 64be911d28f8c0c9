#!/usr/bin/env bash
# Model-zoo style launch on Ascend servers with a rank table (HCCL), one process per local device:
#   bash scripts/run_distribute_train.sh RANK_TABLE_FILE [CONFIG] [key=value ...]
# msrun (`make train-8p`) is the recommended launcher and needs no rank table; this script keeps
# the model zoo's interface for clusters that still hand out rank tables. Ascend only.
#
# RANK_SIZE is the number of devices in the table; this server runs its own devices (a table of
# several servers needs SERVER_ID=<this server's server_id>, run the script on every server).
# Rank <id> logs to runs/rank-table/rank_<id>/train.log (CANN's plog goes to the same folder).
# Exits 0 only when every rank succeeded; otherwise names the failed ranks and their logs.
# PYTHON=... overrides the interpreter (default: the project's .venv).
set -euo pipefail

usage="usage: bash scripts/run_distribute_train.sh RANK_TABLE_FILE [CONFIG] [key=value ...]"
if [ $# -ge 1 ] && { [ "$1" = -h ] || [ "$1" = --help ]; }; then
  echo "$usage"
  sed -n '4,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
  exit 0
fi
if [ $# -lt 1 ]; then
  echo "$usage" >&2
  echo "error: missing RANK_TABLE_FILE" >&2
  exit 2
fi

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-$root/.venv/bin/python}
if ! command -v "$python" > /dev/null; then
  echo "error: python interpreter not found: $python (run make setup, or set PYTHON=)" >&2
  exit 2
fi
# Paths the user typed are relative to their cwd; resolve them before moving to the project root.
table=$(realpath -m -- "$1")
shift
config=configs/stnet_r50_k400.yaml
if [ $# -ge 1 ] && [[ $1 != *=* ]]; then  # a key=value here is an override, not a CONFIG
  config=$(realpath -m -- "$1")
  shift
fi
cd "$root"
if [ ! -f "$config" ]; then
  echo "error: config not found: $config" >&2
  exit 2
fi
# rank_table.py validates the table and prints RANK_SIZE, then "rank_id device_id" per local device.
layout=$("$python" scripts/rank_table.py "$table") || exit 2
{ read -r rank_size; mapfile -t local_devices; } <<< "$layout"

export RANK_TABLE_FILE=$table
export RANK_SIZE=$rank_size
# HCCL's default 120 s join timeout is shorter than the spread of the ranks' graph compiles
# (trainer/runtime.py sets the same default in-process for msrun; a value given here wins).
export HCCL_CONNECT_TIMEOUT=${HCCL_CONNECT_TIMEOUT:-600}
# Prepend, never replace: CANN's set_env.sh puts its TBE/op-impl Python paths in PYTHONPATH.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

# Every rank runs with cwd = the project root, so the config's relative paths (data.root,
# train.output_dir, ...) mean the same to all ranks, as under MindSpore's msrun, which also runs
# all ranks in one cwd. What must not be shared goes to the rank's own folder: its log and CANN's
# plog (ASCEND_PROCESS_LOG_PATH).
pids=() ranks=() logs=()
stop_ranks() {
  echo "interrupted: stopping ranks ${ranks[*]}" >&2
  kill -TERM "${pids[@]}" 2> /dev/null || true
  wait || true
  exit 130
}
# Background ranks ignore Ctrl-C (no job control in a script): pass it on rather than orphan them.
trap stop_ranks INT TERM
# LOCAL_RANK: the rank's position among this server's devices (0 pulls the node's copy of what
# trainer/cloud.py fetches); DEVICE_ID is the device itself, 4 for the first rank of a job on 4-7.
for local_rank in "${!local_devices[@]}"; do
  read -r rank_id device_id <<< "${local_devices[$local_rank]}"
  rank_dir=runs/rank-table/rank_$rank_id
  rm -rf "$rank_dir"  # this rank's folder only: other servers' ranks may share the filesystem
  mkdir -p "$rank_dir"
  log=$rank_dir/train.log
  echo "rank $rank_id of $RANK_SIZE on device $device_id: $python -m trainer.train" \
    "--config $config device_target=Ascend $*" > "$log"
  DEVICE_ID=$device_id RANK_ID=$rank_id LOCAL_RANK=$local_rank ASCEND_PROCESS_LOG_PATH=$root/$rank_dir \
    "$python" -m trainer.train --config "$config" device_target=Ascend "$@" >> "$log" 2>&1 &
  pids+=("$!") ranks+=("$rank_id") logs+=("$log")
done
echo "started ranks ${ranks[*]} of $RANK_SIZE; logs: runs/rank-table/rank_<id>/train.log" \
  "(rank 0 also writes runs/<name>/train.jsonl)"

failed=() codes=() failed_logs=()
for i in "${!pids[@]}"; do
  code=0
  wait "${pids[$i]}" || code=$?  # `|| code=$?` keeps set -e from exiting on the first failure
  if [ "$code" -ne 0 ]; then
    failed+=("${ranks[$i]}") codes+=("$code") failed_logs+=("${logs[$i]}")
  fi
done
trap - INT TERM
if [ ${#failed[@]} -gt 0 ]; then
  word=$([ ${#failed[@]} -eq 1 ] && echo rank || echo ranks)
  exits=$(IFS=,; echo "${codes[*]}")
  echo "error: $word ${failed[*]} failed (exit ${exits//,/, }); logs: ${failed_logs[*]}" >&2
  exit 1
fi
echo "all ${#pids[@]} ranks finished"
