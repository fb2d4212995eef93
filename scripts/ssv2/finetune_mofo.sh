#!/usr/bin/env bash
# Fine-tuning of ViT-B with MOFO's motion-box head (multi-cross-attention between the tokens inside and outside
# the motion box) on Something-Something V2: 174 classes, 16 frames (TSN), 2 clips x 3 crops at test (FINETUNE.md).
#   PRETRAINED from MOFO pretraining (scripts/ssv2/pretrain.sh, the default)   -> row MOFO†  (75.5 in the paper)
#   PRETRAINED from VideoMAE pretraining (VideoMAE's file, or out/ssv2/pretrain_tube_vitb: pretrain.sh run with
#     MASK_TYPE=tube)                                                            -> row MOFO** (74.7, release README)
# MODEL=vit_base_patch16_224 gives the plain head: scripts/ssv2/finetune_plain.sh.
# Recipe: VideoMAE's for its 800-epoch SSV2 checkpoint (lr 5e-4, 50 epochs, no repeated augmentation, total batch
# 512 = 8 clips x 64 GPUs: on fewer GPUs by accumulating gradients over UPDATE_FREQ steps); for its 2400-epoch
# recipe set EPOCHS=30 NUM_SAMPLE=2 BATCH_SIZE=6 TOTAL_BATCH=384.
#
#   sbatch scripts/ssv2/finetune_mofo.sh                  # submit from the repository root
#   GPUS=8 PRETRAINED=videomae_ssv2_vitb.pth bash scripts/ssv2/finetune_mofo.sh
#
# Writes $OUTPUT_DIR/test_results.json after the last epoch; resubmitted, a job resumes from its last checkpoint.
# Under sbatch, five minutes before its time limit the job requeues itself and then resumes (scripts/launch.sh).
#SBATCH --job-name=mofo-finetune-ssv2
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

DATA_PATH=${DATA_PATH:-data/ssv2}          # train.csv, val.csv, test.csv
DATA_ROOT=${DATA_ROOT:-data/ssv2/videos}
BOX_DIR=${BOX_DIR:-data/ssv2/boxes}        # read by the _mofo models only
MODEL=${MODEL:-vit_base_patch16_224_mofo}
PRETRAINED=${PRETRAINED:-out/ssv2/pretrain_motion_vitb}  # a checkpoint, or a run's folder: its newest one
FROM=${PRETRAINED%/} FROM=${FROM%.pth} FROM=${FROM#/}  # one output folder per source: auto-resume stays in it
OUTPUT_DIR=${OUTPUT_DIR:-out/ssv2/finetune_${MODEL}_from_${FROM//\//_}}
GPUS=${GPUS:-8} EPOCHS=${EPOCHS:-50} BATCH_SIZE=${BATCH_SIZE:-8} NUM_SAMPLE=${NUM_SAMPLE:-1}
refuse_extra --output_dir=OUTPUT_DIR --finetune=PRETRAINED --model=MODEL --batch_size=BATCH_SIZE \
    --update_freq=UPDATE_FREQ
TOTAL_BATCH=${TOTAL_BATCH:-512}            # videos per optimiser step, over all GPUs
UPDATE_FREQ=$(update_freq)                 # the accumulation steps that reach TOTAL_BATCH with these tasks
BOXES=()
if [[ $MODEL == *_mofo ]]; then BOXES=(--box_dir "$BOX_DIR"); fi

launch run_mofo_finetuning.py \
    --data_set SSV2 --nb_classes 174 --data_path "$DATA_PATH" --data_root "$DATA_ROOT" ${BOXES[@]+"${BOXES[@]}"} \
    --model "$MODEL" --finetune "$PRETRAINED" \
    --batch_size "$BATCH_SIZE" --update_freq "$UPDATE_FREQ" --num_sample "$NUM_SAMPLE" \
    --num_frames 16 --input_size 224 --short_side_size 224 \
    --opt adamw --opt_betas 0.9 0.999 --lr 5e-4 --layer_decay 0.75 --weight_decay 0.05 \
    --warmup_epochs 5 --epochs "$EPOCHS" --drop_path 0.1 --save_ckpt_freq 5 \
    --test_num_segment 2 --test_num_crop 3 --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR/tb" ${EXTRA[@]+"${EXTRA[@]}"}
