#!/usr/bin/env bash
# Fine-tuning of ViT-B with VideoMAE's plain head (mean of all tokens, linear classifier) on Something-Something V2:
#   PRETRAINED from VideoMAE pretraining (VideoMAE's file, or out/ssv2/pretrain_tube_vitb: pretrain.sh run with
#     MASK_TYPE=tube) -> row VideoMAE, the baseline (70.8 in the paper: VideoMAE's 2400-epoch figure; VideoMAE
#     reports 69.6 for the 800-epoch recipe these scripts run)
#   PRETRAINED from MOFO pretraining (scripts/ssv2/pretrain.sh, the default)  -> row MOFO* (72.7, release README)
# Same settings and variables as scripts/ssv2/finetune_mofo.sh, which it runs with MODEL=vit_base_patch16_224.
#
#   sbatch scripts/ssv2/finetune_plain.sh                 # submit from the repository root
#   GPUS=8 PRETRAINED=videomae_ssv2_vitb.pth bash scripts/ssv2/finetune_plain.sh
# Under sbatch, five minutes before its time limit the job requeues itself and then resumes (scripts/launch.sh).
#SBATCH --job-name=mofo-finetune-ssv2-plain
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
MODEL=${MODEL:-vit_base_patch16_224} exec bash scripts/ssv2/finetune_mofo.sh
