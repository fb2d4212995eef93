#!/usr/bin/env bash
# MOFO pretraining of ViT-B on Something-Something V2, the paper's recipe: motion-focused tube masking (90% of the
# tubes, 75% of those inside the motion box always masked), decoder depth 4, 16 frames every 2nd frame, 32 clips
# per GPU, AdamW (0.9, 0.95), base lr 1.5e-4 x total batch / 256, 40 warmup epochs, 800 epochs (PRETRAIN.md).
# 8 nodes x 8 GPUs: total batch 2048. MASK_TYPE=tube: VideoMAE's pretraining (for the VideoMAE and MOFO** rows).
#
#   sbatch scripts/ssv2/pretrain.sh                       # submit from the repository root
#   GPUS=8 bash scripts/ssv2/pretrain.sh                  # one node, torchrun
#   sbatch --nodes=4 scripts/ssv2/pretrain.sh             # other sizes: the lr follows the total batch
#
# Needs the box files of scripts/ssv2/boxes.sh (MASK_TYPE=tube and motion_guided do not; motion_guided with
# EXTRA_ARGS="--guided_base box --box_dir DIR" does). Resubmitted with the same OUTPUT_DIR, a
# job resumes from its newest checkpoint. EXTRA_ARGS is appended to the command (e.g. "--precision fp16" on V100s).
# The default OUTPUT_DIR is named after MASK_TYPE and MODEL only: give an ablation in EXTRA_ARGS (--guided_base,
# --motion_mask_ratio, --target, ...) an OUTPUT_DIR of its own, or it resumes the other run's checkpoints.
# Under sbatch, five minutes before its time limit the job requeues itself and then resumes (scripts/launch.sh).
#SBATCH --job-name=mofo-pretrain-ssv2
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

DATA_PATH=${DATA_PATH:-data/ssv2}          # pretrains on $DATA_PATH/train.csv
DATA_ROOT=${DATA_ROOT:-data/ssv2/videos}
BOX_DIR=${BOX_DIR:-data/ssv2/boxes}
MASK_TYPE=${MASK_TYPE:-motion}             # motion (MOFO), tube (VideoMAE) or motion_guided (MGMAE)
MODEL=${MODEL:-pretrain_videomae_base_patch16_224}
OUTPUT_DIR=${OUTPUT_DIR:-out/ssv2/pretrain_${MASK_TYPE}_$(model_tag "$MODEL")}  # an ablation in EXTRA_ARGS: set it
GPUS=${GPUS:-8} EPOCHS=${EPOCHS:-800} BATCH_SIZE=${BATCH_SIZE:-32}
refuse_extra --output_dir=OUTPUT_DIR --mask_type=MASK_TYPE --model=MODEL

BOXES=(--box_dir "$BOX_DIR")
if [[ $MASK_TYPE != motion ]]; then BOXES=(); fi  # tube, motion_guided (random base) read no box file

launch run_mofo_pretraining.py \
    --data_path "$DATA_PATH/train.csv" --data_root "$DATA_ROOT" ${BOXES[@]+"${BOXES[@]}"} \
    --mask_type "$MASK_TYPE" --mask_ratio 0.9 --motion_mask_ratio 0.75 \
    --model "$MODEL" --decoder_depth 4 --batch_size "$BATCH_SIZE" --num_frames 16 --sampling_rate 2 \
    --opt adamw --opt_betas 0.9 0.95 --lr 1.5e-4 --warmup_epochs 40 --epochs "$EPOCHS" \
    --save_ckpt_freq 20 --output_dir "$OUTPUT_DIR" --log_dir "$OUTPUT_DIR/tb" ${EXTRA[@]+"${EXTRA[@]}"}
