#!/usr/bin/env bash
# A jaxnorm study on one machine with several GPUs: one process per GPU, each training one
# shard (CUDA_VISIBLE_DEVICES=k for shard k+1 of N), then the report of all shards.
#
#   experiments/cluster/local_gpus.sh STUDY [study flags...]
#
# N = NUM_GPUS (default: the GPUs nvidia-smi lists). Shard K's output goes to
# LOG_DIR/STUDY-shard-K-of-N.log (LOG_DIR default: the current folder). If a shard fails, the others still finish, the
# script reports which failed and exits 1 without the report: rerun the same command
# (finished runs are skipped). Ctrl-C stops every shard (they resume on the next call).
set -euo pipefail
if [ "$#" -lt 1 ]; then
    echo "usage: $0 STUDY [study flags...]" >&2
    exit 2
fi
study=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
n=${NUM_GPUS:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
if ! [ "$n" -ge 1 ] 2>/dev/null; then
    echo "$0: no GPU found (nvidia-smi); set NUM_GPUS" >&2
    exit 2
fi
log_dir=${LOG_DIR:-.}
mkdir -p "$log_dir"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait; exit 130' INT TERM
for k in $(seq 0 $((n - 1))); do
    CUDA_VISIBLE_DEVICES=$k "$here/run_shard.sh" $((k + 1)) "$n" "$study" "$@" \
        > "$log_dir/$study-shard-$((k + 1))-of-$n.log" 2>&1 &
    pids+=($!)
done
failed=()
for k in "${!pids[@]}"; do
    wait "${pids[$k]}" || failed+=($((k + 1)))
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "$0: shard(s) ${failed[*]} of $n failed; see $log_dir/$study-shard-*-of-$n.log, then rerun the same command" >&2
    exit 1
fi
echo "all $n shards of $study finished; writing the report"
exec "${PYTHON:-python}" -m "experiments.$study" "$@" --plot-only
