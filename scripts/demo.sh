#!/usr/bin/env bash
# End-to-end demo on the synthetic dataset, on CPU: generate videos, extract motion boxes (TV-L1 and DIS flow,
# motion boundaries vs plain flow magnitude), draw one video's boxes, print the box-quality table, pretrain tiny
# models with tube, motion-focused and motion-guided masking and with trajectory + HOG targets, and fine-tune them with
# the plain and the MOFO head.
# Usage: bash scripts/demo.sh [OUTPUT_DIR]   (run through `make demo`, which provides the venv)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo_output}
NUM_VIDEOS=${NUM_VIDEOS:-24}
NUM_FRAMES=${NUM_FRAMES:-24}
LEARN_VIDEOS=${LEARN_VIDEOS:-384}
EPOCHS=${EPOCHS:-10}
FT_EPOCHS=${FT_EPOCHS:-20}
FT_WARMUP=$(( FT_EPOCHS > 2 ? 2 : 0 ))  # lr warmup epochs: none in a run too short for it
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

echo "== 5. a second synthetic set for learning: $LEARN_VIDEOS easy videos (still camera, dark textured world, bright"
echo "   object), DIS boxes"
LEARN=$OUT/learn
python scripts/make_synthetic_dataset.py --out "$LEARN" --num_videos "$LEARN_VIDEOS" --num_frames 24 --difficulty easy
cat "$LEARN"/train.csv "$LEARN"/val.csv "$LEARN"/test.csv > "$LEARN"/all.csv
python -m motion_detection.extract_boxes --video_list "$LEARN"/all.csv --video_root "$LEARN"/videos \
    --output_dir "$OUT"/learn_boxes --flow dis --num_workers "$WORKERS"

echo "== 6. tiny pretraining on CPU, same budget: VideoMAE tube masking, MOFO motion-focused masking, motion-guided"
echo "   masking (MGMAE/MGM) and pixel + motion-trajectory + HOG targets (M3Video / MME)"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # tiny models: threads only fight the data workers for the cores
PRETRAIN_ARGS=(--data_path "$LEARN"/train.csv --data_root "$LEARN"/videos --model pretrain_videomae_mini_patch16_224
    --decoder_depth 1 --input_size 64 --num_frames 4 --sampling_rate 2 --batch_size 8 --epochs "$EPOCHS"
    --warmup_epochs 1 --lr 0.05 --opt_betas 0.9 0.95 --mask_ratio 0.9 --device cpu --precision fp32
    --num_workers "$WORKERS" --save_ckpt_freq "$EPOCHS" --print_freq 1000)
for row in "tube --mask_type tube" \
           "motion --mask_type motion --motion_mask_ratio 0.75" \
           "guided --mask_type motion_guided" \
           "trajectory --mask_type tube --target pixel+trajectory+hog"; do
    read -r name options <<< "$row"
    read -ra options <<< "$options"
    boxes=()
    if [[ $name == motion ]]; then boxes=(--box_dir "$OUT"/learn_boxes); fi  # the only row that reads them
    rm -rf "${OUT:?}"/pretrain_"$name"  # a rerun trains again: auto-resume would take the last run's checkpoints
    python run_mofo_pretraining.py "${PRETRAIN_ARGS[@]}" ${options[@]+"${options[@]}"} ${boxes[@]+"${boxes[@]}"} \
        --output_dir "$OUT"/pretrain_"$name" --log_dir "$OUT"/pretrain_"$name"/tb > "$OUT"/pretrain_"$name".log
done
python scripts/loss_curves.py "$OUT"/pretrain_tube "$OUT"/pretrain_motion "$OUT"/pretrain_guided \
    "$OUT"/pretrain_trajectory --png "$OUT"/pretrain_loss.png

echo "== 7. fine-tuning on the synthetic classes: the rows of the paper and its release, and the peers, in miniature"
echo "   (top-1, test split; chance 12.5%)"
FINETUNE_ARGS=(--data_set SSV2 --nb_classes 8 --data_path "$LEARN" --data_root "$LEARN"/videos
    --input_size 64 --short_side_size 64 --num_frames 4 --batch_size 8 --num_sample 1
    --epochs "$FT_EPOCHS" --warmup_epochs "$FT_WARMUP" --lr 0.064 --layer_decay 1.0 --weight_decay 0.05 --init_scale 1.0
    --drop_path 0 --aa none --reprob 0 --mixup 0 --cutmix 0 --smoothing 0.1 --crop_scale 0.5 1
    --test_num_segment 2 --test_num_crop 3 --device cpu --precision fp32 --num_workers "$WORKERS" --print_freq 1000
    --no_save_ckpt)
for row in "scratch none vit_mini_patch16_224" \
           "videomae tube vit_mini_patch16_224" "mofo_star motion vit_mini_patch16_224" \
           "mofo_2star tube vit_mini_patch16_224_mofo" "mofo_dagger motion vit_mini_patch16_224_mofo" \
           "guided guided vit_mini_patch16_224" "trajectory trajectory vit_mini_patch16_224"; do
    read -r name pretraining model <<< "$row"
    init=() boxes=()
    if [[ $model == *_mofo ]]; then boxes=(--box_dir "$OUT"/learn_boxes); fi
    if [[ $pretraining != none ]]; then
        init=(--finetune "$OUT/pretrain_$pretraining/checkpoint-$((EPOCHS - 1)).pth")
    fi
    rm -rf "${OUT:?}"/finetune_"$name"
    python run_mofo_finetuning.py "${FINETUNE_ARGS[@]}" --model "$model" ${init[@]+"${init[@]}"} ${boxes[@]+"${boxes[@]}"} \
        --output_dir "$OUT"/finetune_"$name" > "$OUT"/finetune_"$name".log
done
python scripts/results_table.py "$OUT"/finetune_scratch "$OUT"/finetune_videomae "$OUT"/finetune_mofo_star \
    "$OUT"/finetune_mofo_2star "$OUT"/finetune_mofo_dagger "$OUT"/finetune_guided "$OUT"/finetune_trajectory \
    --names "no pretraining (plain head)" "VideoMAE (tube, plain head)" "MOFO* (motion, plain head)" \
    "MOFO** (tube, MCA head)" "MOFO† (motion, MCA head)" "motion-guided mask (plain head)" \
    "pixel+trajectory+HOG targets (plain head)"
