#!/usr/bin/env bash
# Fine-tuning of ViT-B with VideoMAE's plain head on EPIC-KITCHENS-100 (verb and noun heads):
#   PRETRAINED from VideoMAE pretraining (VideoMAE's file, or out/epic/pretrain_tube_vitb: pretrain.sh run with
#     MASK_TYPE=tube)                                                          -> row VideoMAE, the baseline
#   PRETRAINED from MOFO pretraining (scripts/epic/pretrain.sh, the default)  -> row MOFO*
# Same settings and variables as scripts/epic/finetune_mofo.sh, which it runs with MODEL=vit_base_patch16_224.
#
#   sbatch scripts/epic/finetune_plain.sh                 # submit from the repository root
#   GPUS=8 PRETRAINED=videomae_epic_vitb.pth bash scripts/epic/finetune_plain.sh
# Under sbatch, five minutes before its time limit the job requeues itself and then resumes (scripts/launch.sh).
#SBATCH --job-name=mofo-finetune-epic-plain
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
MODEL=${MODEL:-vit_base_patch16_224} exec bash scripts/epic/finetune_mofo.sh
