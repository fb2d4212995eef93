#!/usr/bin/env bash
# Fine-tuning of ViT-B with MOFO's motion-box head on EPIC-KITCHENS-100: verb (97) and noun (300) heads, action =
# both right; action segments trimmed from the long videos by the official csvs (train.csv, val.csv, test.csv:
# copies of EPIC_100_train.csv / EPIC_100_validation.csv), 16 frames (TSN), 2 clips x 3 crops at test (FINETUNE.md).
#   PRETRAINED from MOFO pretraining (scripts/epic/pretrain.sh, the default)   -> row MOFO†  (action 54.5, paper)
#   PRETRAINED from VideoMAE pretraining (VideoMAE's file, or out/epic/pretrain_tube_vitb: pretrain.sh run with
#     MASK_TYPE=tube)                                                           -> row MOFO** (54.5, release README)
# MODEL=vit_base_patch16_224 gives the plain head: scripts/epic/finetune_plain.sh. Pre-trimmed clips:
# EPIC_VIDEO_TEMPLATE="clips/{narration_id}.mp4" (relative to DATA_ROOT), as for boxes.sh and pretrain.sh.
# Recipe: the MOFO release's EPIC fine-tuning script (lr 5e-4, batch 8 per GPU, 100 epochs, and NUM_SAMPLE=2:
# VideoMAE's argparse default, which the release keeps). Its GPU count is not given: TOTAL_BATCH=64 is 8 GPUs' 8
# videos each, kept on fewer GPUs by accumulating gradients over UPDATE_FREQ steps (more than 8 GPUs: raise
# TOTAL_BATCH to a multiple of 8 x GPUs).
#
#   sbatch scripts/epic/finetune_mofo.sh                  # submit from the repository root
#   GPUS=8 PRETRAINED=videomae_epic_vitb.pth bash scripts/epic/finetune_mofo.sh
#
# Writes $OUTPUT_DIR/test_results.json after the last epoch; resubmitted, a job resumes from its last checkpoint.
# Under sbatch, five minutes before its time limit the job requeues itself and then resumes (scripts/launch.sh).
#SBATCH --job-name=mofo-finetune-epic
#SBATCH --nodes=1
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

DATA_PATH=${DATA_PATH:-data/epic}          # train.csv, val.csv, test.csv
DATA_ROOT=${DATA_ROOT:-data/epic/videos}   # holds P01/videos/P01_01.MP4, ...
BOX_DIR=${BOX_DIR:-data/epic/boxes}        # read by the _mofo models only
MODEL=${MODEL:-vit_base_patch16_224_mofo}
PRETRAINED=${PRETRAINED:-out/epic/pretrain_motion_vitb}  # a checkpoint, or a run's folder: its newest one
FROM=${PRETRAINED%/} FROM=${FROM%.pth} FROM=${FROM#/}  # one output folder per source: auto-resume stays in it
OUTPUT_DIR=${OUTPUT_DIR:-out/epic/finetune_${MODEL}_from_${FROM//\//_}}
GPUS=${GPUS:-8} EPOCHS=${EPOCHS:-100} BATCH_SIZE=${BATCH_SIZE:-8} NUM_SAMPLE=${NUM_SAMPLE:-2}
refuse_extra --output_dir=OUTPUT_DIR --finetune=PRETRAINED --model=MODEL --batch_size=BATCH_SIZE \
    --update_freq=UPDATE_FREQ
TOTAL_BATCH=${TOTAL_BATCH:-64}             # videos per optimiser step, over all GPUs (8 GPUs x 8)
UPDATE_FREQ=$(update_freq)                 # the accumulation steps that reach TOTAL_BATCH with these tasks
VIDEOS=(${EPIC_VIDEO_TEMPLATE:+--epic_video_template "$EPIC_VIDEO_TEMPLATE"})  # unset: the long videos
BOXES=()
if [[ $MODEL == *_mofo ]]; then BOXES=(--box_dir "$BOX_DIR"); fi

launch run_mofo_finetuning.py \
    --data_set EPIC-KITCHENS-100 --nb_verbs 97 --nb_nouns 300 --data_path "$DATA_PATH" --data_root "$DATA_ROOT" \
    ${VIDEOS[@]+"${VIDEOS[@]}"} ${BOXES[@]+"${BOXES[@]}"} --model "$MODEL" --finetune "$PRETRAINED" \
    --batch_size "$BATCH_SIZE" --update_freq "$UPDATE_FREQ" --num_sample "$NUM_SAMPLE" --num_frames 16 --input_size 224 --short_side_size 224 \
    --opt adamw --opt_betas 0.9 0.999 --lr 5e-4 --layer_decay 0.75 --weight_decay 0.05 \
    --warmup_epochs 5 --epochs "$EPOCHS" --drop_path 0.1 --save_ckpt_freq 5 \
    --test_num_segment 2 --test_num_crop 3 --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR/tb" ${EXTRA[@]+"${EXTRA[@]}"}
