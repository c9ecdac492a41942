#!/usr/bin/env bash
# Submits a jaxnorm study as a SLURM job array of N shards, and its report as a job that
# starts once every shard succeeded (--dependency=afterok).
#
#   experiments/cluster/submit_slurm.sh N STUDY [study flags...]
#   e.g. experiments/cluster/submit_slurm.sh 10 ablation --config cifar10_3c3d --results /shared/results
#
# Prints the two job ids. The report is `python -m experiments.STUDY [flags] --plot-only`:
# plots and summary.md from the stored files of all shards. Extra sbatch options for
# both jobs: SBATCH_OPTS (e.g. SBATCH_OPTS="--partition=gpu --account=me").
set -euo pipefail
if [ "$#" -lt 2 ]; then
    echo "usage: $0 N STUDY [study flags...]" >&2
    exit 2
fi
n=$1 study=$2
shift 2
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck disable=SC2086
array=$(sbatch --parsable ${SBATCH_OPTS:-} --array="1-$n" "$here/slurm_study.sbatch" "$study" "$@")
array=${array%%;*}  # --parsable prints "id" or "id;cluster"
report=$(printf '%q ' "${PYTHON:-python}" -m "experiments.$study" "$@" --plot-only)
# shellcheck disable=SC2086
done_job=$(sbatch --parsable ${SBATCH_OPTS:-} --dependency="afterok:$array" --job-name=jaxnorm-report \
    --output="slurm-%x-%j.out" --wrap "$report")
echo "array job $array ($n shards of $study); report job ${done_job%%;*} after it"
