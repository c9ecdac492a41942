#!/usr/bin/env bash
# One shard of a jaxnorm study: python -m experiments.STUDY [flags] --shard I/N --no-progress
#
#   experiments/cluster/run_shard.sh I N STUDY [study flags...]
#
# Called by slurm_study.sbatch (one array task each) and local_gpus.sh (one process per
# GPU). Shard I of N trains every N-th group of runs starting at the I-th (1-based); every
# shard writes into the same results folder, and the report of all of them is
# `python -m experiments.STUDY [the same flags] --plot-only`. A shard whose runs finished
# earlier skips them, and an interrupted one resumes: rerunning a failed task is safe.
# PYTHON (default: python) is the interpreter; JAXNORM_DRY_RUN=1 prints the command only.
set -euo pipefail
if [ "$#" -lt 3 ]; then
    echo "usage: $0 I N STUDY [study flags...]" >&2
    exit 2
fi
i=$1 n=$2 study=$3
shift 3
cmd=("${PYTHON:-python}" -m "experiments.$study" "$@" --shard "$i/$n" --no-progress)
if [ "${JAXNORM_DRY_RUN:-0}" = 1 ]; then
    printf '%s\n' "${cmd[*]}"
    exit 0
fi
exec "${cmd[@]}"
