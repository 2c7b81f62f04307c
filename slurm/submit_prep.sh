#!/bin/bash
# slurm/submit_prep.sh: one command submits the whole data prep: an array of PREP_SHARDS
# build_shards tasks (slurm/prep.sbatch) and the finalize job that writes manifest.json once all
# of them succeeded (--dependency=afterok). Prints the finalize job's id on stdout, for chaining:
#
#     PREP=$(slurm/submit_prep.sh --partition=cpu)
#     sbatch --dependency=afterok:$PREP slurm/pretrain.sbatch
#
# Arguments are sbatch options for both jobs (--partition, --account, --output, ...). Settings
# (CORPUS, TOKENIZER, SEQ_LEN, DATA_DIR, PREP_SHARDS, PREP_ARGS) come from slurm/env.sh or the
# environment; the jobs get them through sbatch's default --export=ALL.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${DISTIL_HOME:=$(dirname "$here")}"
export DISTIL_HOME
# shellcheck source=slurm/env.sh
source "${DISTIL_ENV:-$DISTIL_HOME/slurm/env.sh}"

if ! [ "$PREP_SHARDS" -ge 1 ] 2>/dev/null; then
    echo "submit_prep.sh: PREP_SHARDS=$PREP_SHARDS must be a positive integer" >&2
    exit 2
fi
export PREP_SHARDS
array=$(sbatch --parsable --array="0-$((PREP_SHARDS - 1))" "$@" "$DISTIL_HOME/slurm/prep.sbatch")
array=${array%%;*}
# The finalize job only reads the unit records: one CPU, a short limit. If a task fails it is
# cancelled (--kill-on-invalid-dep) rather than left pending forever.
final=$(sbatch --parsable --dependency="afterok:$array" --kill-on-invalid-dep=yes \
    --job-name=distil-prep-finalize --output=%x-%j.out --cpus-per-task=1 --time=01:00:00 \
    "$@" "$DISTIL_HOME/slurm/prep.sbatch" --finalize)
final=${final%%;*}
echo "submitted data prep of $DATA_DIR: array job $array ($PREP_SHARDS tasks)," \
    "finalize job $final" >&2
echo "$final"
