#!/usr/bin/env bash
# Motion boxes of the EPIC-KITCHENS-100 videos (DATASET.md), on CPUs: by default the long videos
# <participant>/videos/<video>.MP4 named by train.csv, val.csv and test.csv (the official csvs, copied), one box
# per frame; with EPIC_VIDEO_TEMPLATE (e.g. clips/{narration_id}.mp4), the pre-trimmed clips it names; or the
# videos of VIDEO_LIST (a VideoMAE-style list).
#
#   sbatch scripts/epic/boxes.sh        # submit from the repository root: 64 array tasks, one shard each
#   sbatch --array=17,40 scripts/epic/boxes.sh              # rerun some of the shards (e.g. timed out)
#   NUM_SHARDS=16 sbatch --array=0-15 scripts/epic/boxes.sh  # other shard counts: --array=0-(NUM_SHARDS-1)
#   bash scripts/epic/boxes.sh          # or all videos on this machine
#
# Array task N does shard N of NUM_SHARDS (64, as --array=0-63 below) and uses all its CPUs (one video per process).
# One video is one process's job: with TV-L1 (~1 frame pair per second per core) the longest videos take days,
# over several jobs: a requeued job goes on within each unfinished video from its last saved pairs (every five
# minutes, --partial_every), and FLOW=dis (~100x faster) or trimmed clips take far less. Resumable; bad videos go
# to $BOX_DIR/failed*.tsv (exit status 1).
# Under sbatch, five minutes before its time limit the job requeues itself and then resumes (scripts/launch.sh).
#SBATCH --job-name=mofo-boxes-epic
#SBATCH --array=0-63
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --cpus-per-task=16
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
cd "$(dirname "$0")/../.." && [[ -f scripts/launch.sh ]] || cd "${SLURM_SUBMIT_DIR:?}"  # sbatch runs a copy
source scripts/launch.sh

DATA_PATH=${DATA_PATH:-data/epic}          # train.csv, val.csv, test.csv (EPIC_100_*.csv)
DATA_ROOT=${DATA_ROOT:-data/epic/videos}   # holds P01/videos/P01_01.MP4, ...
BOX_DIR=${BOX_DIR:-data/epic/boxes}        # P01/videos/P01_01.MP4 -> $BOX_DIR/P01/videos/P01_01.json
FLOW=${FLOW:-tvl1}                         # tvl1 (the paper's), dis, or tvl1_torch: on a GPU (sbatch
                                           # --gres=gpu:1), one process batching each video's pairs
# The shard is the array task's id, out of NUM_SHARDS: not out of SLURM_ARRAY_TASK_COUNT, which is that of the
# submitted array (1 for a resubmitted `--array=17`).
SHARD=()
if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
    SHARD=(--num_shards "${NUM_SHARDS:-64}" --shard_id "$SLURM_ARRAY_TASK_ID")
fi
if [[ -z ${VIDEO_LIST:-} ]]; then
    VIDEO_LIST=$(mktemp)
    trap 'rm -f "$VIDEO_LIST"' EXIT
    epic_videos "$DATA_PATH"/{train,val,test}.csv > "$VIDEO_LIST"   # a video once per segment: repeats are skipped
fi

requeueable python -m motion_detection.extract_boxes --video_list "$VIDEO_LIST" \
    --video_root "$DATA_ROOT" --output_dir "$BOX_DIR" --flow "$FLOW" ${SHARD[@]+"${SHARD[@]}"} ${EXTRA[@]+"${EXTRA[@]}"}
