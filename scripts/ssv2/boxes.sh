#!/usr/bin/env bash
# Motion boxes of every Something-Something V2 video in train.csv, val.csv and test.csv (DATASET.md), on CPUs.
#
#   sbatch scripts/ssv2/boxes.sh        # submit from the repository root: 64 array tasks, one shard each
#   sbatch --array=17,40 scripts/ssv2/boxes.sh              # rerun some of the shards (e.g. timed out)
#   NUM_SHARDS=16 sbatch --array=0-15 scripts/ssv2/boxes.sh  # other shard counts: --array=0-(NUM_SHARDS-1)
#   bash scripts/ssv2/boxes.sh          # or all videos on this machine
#
# Array task N does shard N of NUM_SHARDS (64, as --array=0-63 below) and uses all its CPUs (one video per process).
# Resumable: resubmit to finish what a timed-out task left; bad videos go to $BOX_DIR/failed*.tsv (exit status 1).
# TV-L1 costs about 52 core-seconds per video on the CI machine's cores (~3,200 core-hours for SSV2; less on
# smaller or smoother frames, DATASET.md); FLOW=dis is ~100x faster.
# Under sbatch, five minutes before its time limit the job requeues itself and then resumes (scripts/launch.sh).
#SBATCH --job-name=mofo-boxes-ssv2
#SBATCH --array=0-63
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=12:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
cd "$(dirname "$0")/../.." && [[ -f scripts/launch.sh ]] || cd "${SLURM_SUBMIT_DIR:?}"  # sbatch runs a copy
source scripts/launch.sh

DATA_PATH=${DATA_PATH:-data/ssv2}          # train.csv, val.csv, test.csv: "<video> <label>" lines
DATA_ROOT=${DATA_ROOT:-data/ssv2/videos}   # the mp4s; list paths are relative to it
BOX_DIR=${BOX_DIR:-data/ssv2/boxes}        # a/b.mp4 -> $BOX_DIR/a/b.json
FLOW=${FLOW:-tvl1}                         # tvl1 (the paper's), dis, or tvl1_torch: on a GPU (sbatch
                                           # --gres=gpu:1), one process batching each video's pairs
# The shard is the array task's id, out of NUM_SHARDS: not out of SLURM_ARRAY_TASK_COUNT, which is that of the
# submitted array (1 for a resubmitted `--array=17`).
SHARD=()
if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    SHARD=(--num_shards "${NUM_SHARDS:-64}" --shard_id "$SLURM_ARRAY_TASK_ID")
fi

for list in "$DATA_PATH"/{train,val,test}.csv; do  # before the job waits in the queue and fails at its start
    if [[ ! -f $list ]]; then
        echo "$0: $list not found (DATA_PATH must hold train.csv, val.csv and test.csv)" >&2
        exit 2
    fi
done
# The three lists read as one (the same in every array task, so the shards split it alike); repeats are skipped.
requeueable python -m motion_detection.extract_boxes --video_list "$DATA_PATH"/{train,val,test}.csv \
    --video_root "$DATA_ROOT" --output_dir "$BOX_DIR" --flow "$FLOW" ${SHARD[@]+"${SHARD[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
