#!/usr/bin/env bash
# End-to-end demo on the synthetic dataset, on CPU: generate videos, extract motion boxes (TV-L1 and DIS flow,
# motion boundaries vs plain flow magnitude), draw one video's boxes, print the box-quality table, pretrain tiny
# models with tube and motion-focused masking, and fine-tune them with the plain and the MOFO head.
# Usage: bash scripts/demo.sh [OUTPUT_DIR]   (run through `make demo`, which provides the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_output}
NUM_VIDEOS=${NUM_VIDEOS:-24}
NUM_FRAMES=${NUM_FRAMES:-24}
WORKERS=${WORKERS:-2}
DATA=$OUT/data

echo "== 1. synthetic dataset: $NUM_VIDEOS videos of $NUM_FRAMES frames -> $DATA"
python scripts/make_synthetic_dataset.py --out "$DATA" --num_videos "$NUM_VIDEOS" --num_frames "$NUM_FRAMES"
cat "$DATA"/train.csv "$DATA"/val.csv "$DATA"/test.csv > "$DATA"/all.csv

echo "== 2. motion boxes"
python -m motion_detection.extract_boxes --video_list "$DATA"/all.csv --video_root "$DATA"/videos \
    --output_dir "$OUT"/boxes_tvl1 --flow tvl1 --num_workers "$WORKERS"
python -m motion_detection.extract_boxes --video_list "$DATA"/all.csv --video_root "$DATA"/videos \
    --output_dir "$OUT"/boxes_dis --flow dis --num_workers "$WORKERS"
python -m motion_detection.extract_boxes --video_list "$DATA"/all.csv --video_root "$DATA"/videos \
    --output_dir "$OUT"/boxes_dis_magnitude --flow dis --motion_map magnitude --num_workers "$WORKERS"

echo "== 3. visual check: $OUT/boxes_000000.gif (green: frame box, yellow: union, cyan: ground truth)"
python -m motion_detection.visualize "$DATA"/videos/000000.mp4 "$OUT"/boxes_tvl1/000000.json \
    --gt "$DATA"/gt_boxes/000000.json --show_map --out "$OUT"/boxes_000000.gif

echo "== 4. box quality against the synthetic ground truth"
python -m motion_detection.evaluate --gt_dir "$DATA"/gt_boxes \
    --pred_dir "$OUT"/boxes_tvl1 "$OUT"/boxes_dis "$OUT"/boxes_dis_magnitude \
    --names "tvl1 + motion boundaries" "dis + motion boundaries" "dis + flow magnitude"

echo "== 5. tiny pretraining on CPU: VideoMAE tube masking vs MOFO motion-focused masking (same budget)"
PRETRAIN_ARGS=(--data_path "$DATA"/train.csv --data_root "$DATA"/videos --model pretrain_videomae_mini_patch16_224
    --decoder_depth 1 --input_size 112 --num_frames 8 --sampling_rate 2 --batch_size 4 --epochs "${EPOCHS:-20}"
    --warmup_epochs 2 --lr 0.1 --opt_betas 0.9 0.95 --mask_ratio 0.9 --device cpu --precision fp32
    --num_workers "$WORKERS" --save_ckpt_freq 10 --print_freq 100)
python run_mofo_pretraining.py "${PRETRAIN_ARGS[@]}" --mask_type tube --output_dir "$OUT"/pretrain_tube \
    --log_dir "$OUT"/pretrain_tube/tb > "$OUT"/pretrain_tube.log
python run_mofo_pretraining.py "${PRETRAIN_ARGS[@]}" --mask_type motion --motion_mask_ratio 0.75 \
    --box_dir "$OUT"/boxes_tvl1 --output_dir "$OUT"/pretrain_motion --log_dir "$OUT"/pretrain_motion/tb \
    > "$OUT"/pretrain_motion.log
python scripts/loss_curves.py "$OUT"/pretrain_tube "$OUT"/pretrain_motion --png "$OUT"/pretrain_loss.png

echo "== 6. fine-tuning on the synthetic classes: the paper's rows in miniature (top-1 on the test split)"
FINETUNE_ARGS=(--data_set SSV2 --nb_classes 8 --data_path "$DATA" --data_root "$DATA"/videos
    --box_dir "$OUT"/boxes_tvl1 --input_size 112 --short_side_size 112 --num_frames 8 --batch_size 4 --num_sample 1
    --epochs "${FT_EPOCHS:-10}" --warmup_epochs 1 --lr 0.05 --layer_decay 0.9 --mixup 0 --cutmix 0
    --test_num_segment 2 --test_num_crop 3 --device cpu --precision fp32 --num_workers "$WORKERS" --print_freq 100
    --no_save_ckpt)
for row in "videomae tube vit_mini_patch16_224" "mofo_star motion vit_mini_patch16_224" \
           "mofo_2star tube vit_mini_patch16_224_mofo" "mofo_dagger motion vit_mini_patch16_224_mofo"; do
    read -r name masking model <<< "$row"
    python run_mofo_finetuning.py "${FINETUNE_ARGS[@]}" --model "$model" \
        --finetune "$OUT"/pretrain_"$masking"/checkpoint-$(( ${EPOCHS:-20} - 1 )).pth \
        --output_dir "$OUT"/finetune_"$name" > "$OUT"/finetune_"$name".log
done
python scripts/results_table.py "$OUT"/finetune_videomae "$OUT"/finetune_mofo_star "$OUT"/finetune_mofo_2star \
    "$OUT"/finetune_mofo_dagger --names "VideoMAE (tube, plain head)" "MOFO* (motion, plain head)" \
    "MOFO** (tube, MCA head)" "MOFO+ (motion, MCA head)"
