"""Fine-tuning learns the synthetic motion classes (issue 4): the mini ViT, trained from scratch on CPU on the easy
preset of the synthetic dataset (still camera, dark world, bright object), ends clearly above chance (1 in 8) on
the held-out val and test splits.

The standard preset (panning/zooming camera, textured world, object-like clutter) stays near chance for this model
at a test's budget; the easy one is learnt in a few hundred steps. Measured with this recipe (4 frames at 64 px,
20 epochs of 24 steps, 30-35 s on 2 cores): final val top-1 73-89% and test top-1 76-87% over training seeds 0-5
and a second dataset seed, above 40% after 7-9 of the 20 epochs; with shuffled training labels the run ends at 16% val
and 9% test. The 40% threshold leaves room for seed and platform variation and still fails when learning breaks.
"""

from __future__ import annotations

import json

import make_synthetic_dataset
from test_finetuning import finetune

NUM_VIDEOS, VIDEO_FRAMES, FRAME_SIZE = 384, 24, 64  # 192 train, 96 val, 96 test clips
EPOCHS = 20
MIN_TOP1 = 40.0  # percent; chance is 12.5


def learning_args(data, out) -> list[str]:
    """From scratch (no --finetune): a full-size initial head, no RandAugment, erasing, mixup or stochastic depth,
    and crops that keep at least half of the frame, so the object stays in view."""
    return [
        "--data_set", "SSV2", "--nb_classes", str(len(make_synthetic_dataset.CLASSES)), "--data_path", str(data),
        "--data_root", str(data / "videos"), "--model", "vit_mini_patch16_224", "--init_scale", "1.0",
        "--input_size", str(FRAME_SIZE), "--short_side_size", str(FRAME_SIZE), "--num_frames", "4",
        "--batch_size", "8", "--num_sample", "1", "--epochs", str(EPOCHS), "--warmup_epochs", "2", "--lr", "0.064",
        "--layer_decay", "1.0", "--weight_decay", "0.05", "--drop_path", "0", "--aa", "", "--reprob", "0",
        "--mixup", "0", "--cutmix", "0", "--smoothing", "0.1", "--crop_scale", "0.5", "1",
        "--test_num_segment", "1", "--test_num_crop", "1", "--device", "cpu", "--precision", "fp32",
        "--num_workers", "1", "--seed", "0", "--no_save_ckpt", "--output_dir", str(out), "--print_freq", "1000",
    ]


def test_mini_vit_from_scratch_learns_the_easy_synthetic_classes(tmp_path):
    data = tmp_path / "data"
    summary = make_synthetic_dataset.make_dataset(data, NUM_VIDEOS, num_frames=VIDEO_FRAMES, width=FRAME_SIZE,
                                                  height=FRAME_SIZE, seed=0, scene="easy")
    out = tmp_path / "finetune"
    result = finetune(learning_args(data, out))
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]

    records = [json.loads(line) for line in (out / "log.txt").read_text().splitlines()]
    results = json.loads((out / "test_results.json").read_text())
    assert [r["epoch"] for r in records] == list(range(EPOCHS))
    assert results["videos"] == summary["split_sizes"]["test"] == 96
    history = [round(r["val_acc1"]) for r in records]
    assert records[-1]["val_acc1"] >= MIN_TOP1, history
    assert results["acc1"] >= MIN_TOP1, (results, history)
    assert records[-1]["train_loss"] < records[0]["train_loss"] - 0.5, [r["train_loss"] for r in records]
