#!/usr/bin/env bash
# MOFO pretraining of ViT-B on EPIC-KITCHENS-100, the paper's recipe as in scripts/ssv2/pretrain.sh (PRETRAIN.md):
# 90% / 75% motion-focused masking, decoder depth 4, 16 frames every 2nd frame, 32 clips per GPU on 8 x 8 GPUs,
# AdamW (0.9, 0.95), base lr 1.5e-4, 40 warmup epochs, 800 epochs. MASK_TYPE=tube: VideoMAE's pretraining.
#
# By default the list holds every action segment of train.csv as a VideoMAE V2 line (its long video, first frame,
# length): an epoch draws one random 32-frame window inside every segment, as the MOFO release's trimmed clips did.
# EPIC_VIDEO_TEMPLATE (e.g. clips/{narration_id}.mp4): the pre-trimmed clips it names, each whole. VIDEO_LIST: a
# list of your own (with its videos' boxes in BOX_DIR).
#
#   sbatch scripts/epic/pretrain.sh                       # submit from the repository root
#   GPUS=8 bash scripts/epic/pretrain.sh                  # one node, torchrun
#
# Needs the box files of scripts/epic/boxes.sh (MASK_TYPE=tube and motion_guided do not; motion_guided with
# EXTRA_ARGS="--guided_base box --box_dir DIR" does). Resubmitted with the same OUTPUT_DIR, a
# job resumes. The default OUTPUT_DIR is named after MASK_TYPE and MODEL only: give an ablation in EXTRA_ARGS
# (--guided_base, --motion_mask_ratio, --target, ...) an OUTPUT_DIR of its own, or it resumes the other run's.
# Under sbatch, five minutes before its time limit the job requeues itself and then resumes (scripts/launch.sh).
#SBATCH --job-name=mofo-pretrain-epic
#SBATCH --nodes=8
#SBATCH --ntasks-per-node=8
#SBATCH --gres=gpu:8
#SBATCH --cpus-per-task=12
#SBATCH --time=72:00:00
#SBATCH --signal=B:USR1@300
#SBATCH --requeue
#SBATCH --open-mode=append
set -euo pipefail
cd "$(dirname "$0")/../.." && [[ -f scripts/launch.sh ]] || cd "${SLURM_SUBMIT_DIR:?}"  # sbatch runs a copy
source scripts/launch.sh

DATA_PATH=${DATA_PATH:-data/epic}          # train.csv (EPIC_100_train.csv)
DATA_ROOT=${DATA_ROOT:-data/epic/videos}
BOX_DIR=${BOX_DIR:-data/epic/boxes}
MASK_TYPE=${MASK_TYPE:-motion}             # motion (MOFO), tube (VideoMAE) or motion_guided (MGMAE)
MODEL=${MODEL:-pretrain_videomae_base_patch16_224}
OUTPUT_DIR=${OUTPUT_DIR:-out/epic/pretrain_${MASK_TYPE}_$(model_tag "$MODEL")}  # an ablation in EXTRA_ARGS: set it
GPUS=${GPUS:-8} EPOCHS=${EPOCHS:-800} BATCH_SIZE=${BATCH_SIZE:-32}
refuse_extra --output_dir=OUTPUT_DIR --mask_type=MASK_TYPE --model=MODEL
if [[ -z ${VIDEO_LIST:-} ]]; then
    mkdir -p "$OUTPUT_DIR"
    VIDEO_LIST=$OUTPUT_DIR/train_videos.csv   # on the shared file system: every node reads it
    epic_videos "$DATA_PATH/train.csv" > "$VIDEO_LIST"
fi

BOXES=(--box_dir "$BOX_DIR")
if [[ $MASK_TYPE != motion ]]; then BOXES=(); fi  # tube, motion_guided (random base) read no box file

launch run_mofo_pretraining.py \
    --data_path "$VIDEO_LIST" --data_root "$DATA_ROOT" ${BOXES[@]+"${BOXES[@]}"} \
    --mask_type "$MASK_TYPE" --mask_ratio 0.9 --motion_mask_ratio 0.75 \
    --model "$MODEL" --decoder_depth 4 --batch_size "$BATCH_SIZE" --num_frames 16 --sampling_rate 2 \
    --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --warmup_epochs 40 --epochs "$EPOCHS" \
    --save_ckpt_freq 20 --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR/tb" ${EXTRA[@]+"${EXTRA[@]}"}
