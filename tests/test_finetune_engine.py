"""Fine-tuning pieces checked against hand-computed examples: accuracies, EPIC's action metric, multi-view merging
across ranks, mixup on clips, layer-wise lr decay and checkpoint loading for ``--finetune``."""

import json
import pickle
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest
import timm
import torch
from timm.data.mixup import Mixup

import modeling_finetune  # noqa: F401
import modeling_pretrain
import run_mofo_finetuning
import utils
from engine_for_finetuning import accuracies, merge_views, mixed_targets
from test_pretraining import REPO, OpensAFile, clean_env


def test_top1_top5_single_head():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0, 0.0, 0.0],
                           [0.9, 0.1, 0.8, 0.7, 0.6, 0.5],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    targets = torch.tensor([[1], [5], [0]])
    result = accuracies(logits, targets, [6])
    assert result["acc1"] == pytest.approx(100 / 3)  # only the first
    assert result["acc5"] == pytest.approx(200 / 3)  # the second: class 5 is 5th best; the third: 0 is 6th


def test_epic_action_is_correct_only_when_verb_and_noun_both_are():
    # 3 verbs + 2 nouns; rows: both right, verb right noun wrong, verb wrong noun right.
    logits = torch.tensor([[5.0, 0, 0, 0, 9], [5.0, 0, 0, 9, 0], [0.0, 5, 0, 0, 9]])
    targets = torch.tensor([[0, 1], [0, 1], [0, 1]])
    result = accuracies(logits, targets, [3, 2])
    assert result["verb_acc1"] == pytest.approx(200 / 3)
    assert result["noun_acc1"] == pytest.approx(200 / 3)
    assert result["action_acc1"] == pytest.approx(100 / 3)


def write_views(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_multi_view_merge_averages_softmaxes_per_video_across_ranks(tmp_path):
    # Video 0: view 0 says class 0 strongly, views 1-2 say class 1 mildly -> mean softmax picks class 1.
    strong, mild = [4.0, 0.0], [0.0, 2.0]
    write_views(tmp_path / "r0.jsonl", [
        {"id": 0, "view": 0, "target": [1], "logits": strong},
        {"id": 0, "view": 1, "target": [1], "logits": mild},
        {"id": 1, "view": 0, "target": [0], "logits": [2.0, 0.0]},
    ])
    write_views(tmp_path / "r1.jsonl", [
        {"id": 0, "view": 2, "target": [1], "logits": mild},
        {"id": 1, "view": 1, "target": [0], "logits": [0.0, 0.5]},
        {"id": 0, "view": 0, "target": [1], "logits": strong},  # sampler padding repeats a view
    ])
    p_strong = torch.softmax(torch.tensor(strong), 0)
    p_mild = torch.softmax(torch.tensor(mild), 0)
    assert ((p_strong + 2 * p_mild) / 3).argmax() == 1 and (p_strong + p_mild).argmax() == 0  # the padding matters
    result = merge_views([tmp_path / "r0.jsonl", tmp_path / "r1.jsonl"], [2])
    assert result["videos"] == 2 and result["views"] == 5
    assert result["acc1"] == pytest.approx(100.0)  # video 1: mean of softmax([2,0]) and softmax([0,.5]) -> class 0
    assert "unlabelled" not in result


def test_unlabelled_test_videos_get_no_accuracy(tmp_path):
    """EPIC's test csv has no labels (targets -1): 0% would read as a result; the accuracies are those of the
    labelled videos only, and none without any."""
    write_views(tmp_path / "r0.jsonl", [
        {"id": 0, "view": 0, "target": [1, 0], "logits": [0.0, 3.0, 3.0, 0.0]},
        {"id": 1, "view": 0, "target": [-1, -1], "logits": [3.0, 0.0, 0.0, 3.0]},
    ])
    result = merge_views([tmp_path / "r0.jsonl"], [2, 2])
    assert result["action_acc1"] == pytest.approx(100.0) and result["videos"] == 2 and result["unlabelled"] == 1
    write_views(tmp_path / "r0.jsonl", [{"id": 1, "view": 0, "target": [-1, -1], "logits": [3.0, 0.0, 0.0, 3.0]}])
    assert merge_views([tmp_path / "r0.jsonl"], [2, 2]) == {"videos": 1, "views": 1, "unlabelled": 1}


def test_cutmix_on_clips_cuts_the_same_patch_from_every_frame_and_mixes_both_heads_alike():
    torch.manual_seed(0)
    mixup = Mixup(mixup_alpha=0.0, cutmix_alpha=1.0, prob=1.0, label_smoothing=0.0, num_classes=3)
    videos = torch.stack([torch.zeros(3, 4, 16, 16), torch.ones(3, 4, 16, 16)])
    batch = {"video": videos.clone(), "target": torch.tensor([[0, 1], [2, 0]])}
    mixed, targets = mixed_targets(mixup, batch, [3, 2], torch.device("cpu"))
    changed = mixed[0] != 0
    assert changed.any() and (changed == changed[:1, :1]).all()  # one spatial patch, in every channel and frame
    lam = 1 - changed[0, 0].float().mean().item()
    torch.testing.assert_close(targets[0][0], torch.tensor([lam, 0, 1 - lam]))
    torch.testing.assert_close(targets[1][0], torch.tensor([1 - lam, lam]))


def test_layer_decay_groups():
    """The run script's optimizer: VideoMAE's layer ids and weight-decay groups (a 2-block model: embeddings 0,
    blocks 1 and 2, everything after them 3)."""
    model = timm.create_model("vit_mini_patch16_224_mofo", num_classes=4, img_size=32, all_frames=4)
    args = run_mofo_finetuning.get_args_parser().parse_args(["--layer_decay", "0.5", "--weight_decay", "0.05"])
    optimizer, scales = run_mofo_finetuning.build_optimizer(args, model)
    assert scales == [0.5 ** 3, 0.5 ** 2, 0.5, 1.0]
    group_of = {n: g for g in optimizer.param_groups for n in g["param_names"]}
    assert group_of["patch_embed.proj.weight"]["lr_scale"] == 0.5 ** 3
    assert group_of["blocks.1.attn.qkv.weight"]["lr_scale"] == 0.5
    assert (group_of["head.weight"]["lr_scale"] == group_of["mca.0.inner.attn.qkv.weight"]["lr_scale"]
            == group_of["fuse.weight"]["lr_scale"] == 1.0)
    assert group_of["blocks.0.norm1.weight"]["weight_decay"] == group_of["head.bias"]["weight_decay"] == 0.0
    assert group_of["blocks.0.attn.qkv.weight"]["weight_decay"] == 0.05
    assert {n for g in optimizer.param_groups for n in g["param_names"]} == {n for n, _ in model.named_parameters()}


def test_finetune_from_a_pretraining_checkpoint_takes_the_encoder(tmp_path):
    pretrain = modeling_pretrain.pretrain_videomae_mini_patch16_224(img_size=32, num_frames=4)
    torch.save({"model": pretrain.state_dict()}, tmp_path / "pretrain.pth")
    model = timm.create_model("vit_mini_patch16_224_mofo", num_classes=4, img_size=32, all_frames=4)
    utils.load_finetune_checkpoint(model, tmp_path / "pretrain.pth")
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight, pretrain.encoder.blocks[1].attn.qkv.weight)
    torch.testing.assert_close(model.patch_embed.proj.bias, pretrain.encoder.patch_embed.proj.bias)


def test_finetune_from_a_run_folder_takes_its_newest_checkpoint(tmp_path, capsys):
    """``--finetune RUN_DIR`` (the stage scripts' default): the checkpoint auto-resume would pick, here the rolling
    one after the kept one, with a warning that the run had not ended; a folder without checkpoints is an error."""
    models = [modeling_pretrain.pretrain_videomae_mini_patch16_224(img_size=32, num_frames=4) for _ in range(2)]
    torch.save({"model": models[0].state_dict(), "epoch": 3}, tmp_path / "checkpoint-3.pth")
    torch.save({"model": models[1].state_dict(), "epoch": 5, "args": {"epochs": 10}},
               tmp_path / "checkpoint-last-5.pth")
    model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    utils.load_finetune_checkpoint(model, tmp_path)
    out = capsys.readouterr().out
    assert "newest checkpoint checkpoint-last-5.pth" in out
    assert "checkpoint-last-5.pth is from epoch 5 of a run of 10 epochs, not its last" in out
    assert utils.resolve_checkpoint(tmp_path, report=False) == tmp_path / "checkpoint-last-5.pth"  # the run records it
    assert capsys.readouterr().out == ""  # silently: the load above names it once
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, models[1].encoder.blocks[0].attn.qkv.weight)
    # the file named before (and recorded) is the one read, though the folder's newest is another by now
    utils.load_finetune_checkpoint(model, tmp_path, resolved=tmp_path / "checkpoint-3.pth")
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, models[0].encoder.blocks[0].attn.qkv.weight)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="empty: a folder without checkpoints"):
        utils.load_finetune_checkpoint(model, empty)


def test_model_ema_resumes_from_the_checkpoint(tmp_path):
    """A resumed ``--model_ema`` run takes the saved average, not the model's weights; a checkpoint written without
    one starts the average from the model."""
    from timm.utils import ModelEmaV3

    def make():
        model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
        return model, ModelEmaV3(model, decay=0.5), torch.optim.AdamW(model.parameters())

    model, ema, optimizer = make()
    with torch.no_grad():
        model.head.weight.add_(1.0)
    ema.update(model)
    args = SimpleNamespace(output_dir=str(tmp_path), enable_deepspeed=False, resume="", auto_resume=True, epochs=10)
    utils.save_model(args, 3, model, model, optimizer, None, model_ema=ema)
    resumed_model, resumed_ema, resumed_optimizer = make()
    utils.auto_load_model(args, resumed_model, resumed_model, resumed_optimizer, None, resumed_ema)
    assert args.start_epoch == 4
    torch.testing.assert_close(resumed_model.head.weight, model.head.weight)
    torch.testing.assert_close(resumed_ema.module.head.weight, ema.module.head.weight)
    assert not torch.equal(resumed_ema.module.head.weight, model.head.weight)
    utils.save_model(args, 4, model, model, optimizer, None)
    args.resume = ""
    utils.auto_load_model(args, resumed_model, resumed_model, resumed_optimizer, None, resumed_ema)
    torch.testing.assert_close(resumed_ema.module.head.weight, model.head.weight)


def test_a_resumed_run_goes_on_with_its_own_optimizer_settings(tmp_path):
    """torch's optimizer load puts back the saved group settings: a resumed run keeps this run's --layer_decay scales
    and --opt_betas (the saved moments are still taken), and another --opt is refused, not a KeyError mid-step."""
    def run(*flags):
        torch.manual_seed(0)
        model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
        args = run_mofo_finetuning.get_args_parser().parse_args(["--output_dir", str(tmp_path), *flags])
        return args, model, run_mofo_finetuning.build_optimizer(args, model)[0]

    args, model, optimizer = run("--layer_decay", "0.75")
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    optimizer.step()
    utils.save_model(args, 2, model, model, optimizer, None)
    args, model, resumed = run("--layer_decay", "0.5", "--opt_betas", "0.9", "0.95")
    utils.auto_load_model(args, model, model, resumed, None)
    assert args.start_epoch == 3
    assert sorted({g["lr_scale"] for g in resumed.param_groups}) == [0.5 ** 3, 0.5 ** 2, 0.5, 1.0]
    assert {tuple(g["betas"]) for g in resumed.param_groups} == {(0.9, 0.95)}
    torch.testing.assert_close(resumed.state_dict()["state"], optimizer.state_dict()["state"])
    args, model, lamb = run("--opt", "lamb")  # Lamb counts its steps in the group: that is state, and is loaded
    model(torch.randn(2, 3, 4, 32, 32)).sum().backward()
    lamb.step()
    utils.save_model(args, 7, model, model, lamb, None)
    args, model, resumed = run("--opt", "lamb")
    utils.auto_load_model(args, model, model, resumed, None)
    assert {int(g["step"]) for g in resumed.param_groups} == {1}
    args, model, sgd = run("--opt", "sgd")
    with pytest.raises(ValueError, match=r"checkpoint-7\.pth: cannot resume from it: its run used --opt lamb, "
                                         "this one --opt sgd"):
        utils.auto_load_model(args, model, model, sgd, None)


def test_a_best_checkpoint_of_an_epoch_trained_again_is_set_aside(tmp_path, capsys):
    """A job killed after saving checkpoint-best but before that epoch's checkpoint: the resume trains the epoch
    again, so that best (a file, or a DeepSpeed folder) is moved aside, and one of an earlier epoch is kept."""
    weights = {"w": torch.ones(2)}
    torch.save({"model": weights, "epoch": 5}, tmp_path / "checkpoint-best.pth")
    utils.set_aside_abandoned_best(tmp_path, 6)
    assert {p.name for p in tmp_path.iterdir()} == {"checkpoint-best.pth"} and capsys.readouterr().out == ""
    utils.set_aside_abandoned_best(tmp_path, 5)
    assert {p.name for p in tmp_path.iterdir()} == {"abandoned-best-epoch5.pth"}
    assert (f"warning: checkpoint-best.pth is from epoch 5, which this run trains again: moved to "
            f"{tmp_path / 'abandoned-best-epoch5.pth'}") in capsys.readouterr().out
    (tmp_path / "checkpoint-best").mkdir()
    torch.save({"module": weights, "epoch": 4}, tmp_path / "checkpoint-best" / "mp_rank_00_model_states.pt")
    utils.set_aside_abandoned_best(tmp_path, 3)
    assert (tmp_path / "abandoned-best-epoch4" / "mp_rank_00_model_states.pt").is_file()
    assert not (tmp_path / "checkpoint-best").exists()
    torch.save({"model": weights, "epoch": "best"}, tmp_path / "checkpoint-best.pth")  # VideoMAE's: no epoch to say
    utils.set_aside_abandoned_best(tmp_path, 0)
    assert (tmp_path / "checkpoint-best.pth").exists()


def test_finetune_model_prefix_picks_the_weights_under_it(tmp_path):
    """VideoMAE's ``--model_prefix``: a checkpoint holding several models (a student and a teacher, say) loads the
    one under the prefix; a prefix with no weights is an error naming the file."""
    student, teacher = (timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
                        for _ in range(2))
    state = {**{f"student.{k}": v for k, v in student.state_dict().items()},
             **{f"teacher.{k}": v for k, v in teacher.state_dict().items()}}
    for wrapped in ("", "module.", "encoder."):  # the prefix applies after DDP's / a pretraining model's, as VideoMAE
        torch.save({"model": {wrapped + k: v for k, v in state.items()}}, tmp_path / "both.pth")
        model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
        utils.load_finetune_checkpoint(model, tmp_path / "both.pth", model_prefix="teacher.")
        torch.testing.assert_close(model.blocks[0].attn.qkv.weight, teacher.blocks[0].attn.qkv.weight)
        torch.testing.assert_close(model.head.weight, teacher.head.weight)
    for prefix in ("module.", "encoder."):  # the wrapper's own prefix, as VideoMAE's users give it
        torch.save({"model": {prefix + k: v for k, v in teacher.state_dict().items()}}, tmp_path / "wrapped.pth")
        model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
        utils.load_finetune_checkpoint(model, tmp_path / "wrapped.pth", model_prefix=prefix)
        torch.testing.assert_close(model.blocks[0].attn.qkv.weight, teacher.blocks[0].attn.qkv.weight)
    for prefix in ("ema.", "teacher"):  # none there; without its dot nothing matches the model's keys
        with pytest.raises(ValueError, match=r"both\.pth: no weights of VisionTransformer under --model_prefix"):
            utils.load_finetune_checkpoint(model, tmp_path / "both.pth", model_prefix=prefix)


def test_finetune_from_a_deepspeed_folder_drops_a_head_of_another_size(tmp_path, capsys):
    source = timm.create_model("vit_mini_patch16_224", num_classes=7, img_size=32, all_frames=4)
    tag = tmp_path / "run" / "checkpoint-3"
    tag.mkdir(parents=True)
    torch.save({"module": {f"module.{k}": v for k, v in source.state_dict().items()}},
               tag / "mp_rank_00_model_states.pt")
    (tmp_path / "run" / "latest").write_text("checkpoint-3")
    model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    head_before = model.head.weight.clone()
    utils.load_finetune_checkpoint(model, tmp_path / "run")
    assert "Removing key head.weight" in capsys.readouterr().out
    torch.testing.assert_close(model.blocks[0].mlp.fc1.weight, source.blocks[0].mlp.fc1.weight)
    torch.testing.assert_close(model.head.weight, head_before)


def test_learned_position_tables_are_interpolated_to_a_new_grid():
    table = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 32, 1).expand(1, 32, 3).contiguous()
    resized = utils.interpolate_pos_embed(table, (2, 8, 8))
    assert resized.shape == (1, 128, 3)
    same = utils.interpolate_pos_embed(table, (2, 4, 4))
    torch.testing.assert_close(same, table)
    # Values are kept in order: the first frame's corner stays the smallest, the last frame's corner the largest.
    assert resized[0, 0, 0] == resized.min() and resized[0, -1, 0] == resized.max()
    # Fewer frames at the same resolution: 1568 tokens are read as 8 x 14 x 14 (not 2 x 28 x 28), so a table
    # holding each token's time index comes out constant over every new frame.
    by_time = torch.arange(8.0).repeat_interleave(196).reshape(1, 1568, 1)
    halved = utils.interpolate_pos_embed(by_time, (4, 14, 14)).reshape(4, 196)
    torch.testing.assert_close(halved, torch.tensor([0.5, 2.5, 4.5, 6.5])[:, None].expand(4, 196))
    # Fewer frames and pixels: 1568 tokens also fit 2 x 28^2 and 32 x 7^2, so the saved grid decides (without it,
    # 4 x 10 x 10 is an error; 4 x 7 x 7 would be read as 32 x 7 x 7); each token's row index stays in the
    # original range (0 to 13) on the new 7 x 7 grid.
    by_row = torch.arange(14.0).repeat_interleave(14).repeat(8).reshape(1, 1568, 1)
    with pytest.raises(ValueError, match="fits several grids"):
        utils.interpolate_pos_embed(by_row, (4, 10, 10))
    rows = utils.interpolate_pos_embed(by_row, (4, 7, 7), old_grid=(8, 14, 14)).reshape(4, 7, 7)
    assert (rows[:, 1:] > rows[:, :-1]).all() and 0 < rows.min() < 1 and 12 < rows.max() < 13
    torch.testing.assert_close(rows, rows[:1].expand(4, 7, 7))  # the same in every frame


def test_a_saved_clip_size_gives_the_old_grid_of_a_learned_table(tmp_path, capsys):
    learned = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=64, all_frames=8,
                                use_learnable_pos_emb=True)
    torch.save({"model": learned.state_dict(), "args": {"num_frames": 8, "input_size": 64}}, tmp_path / "big.pth")
    small = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4,
                              use_learnable_pos_emb=True)
    utils.load_finetune_checkpoint(small, tmp_path / "big.pth")  # 64 tokens: 4 x 4^2, 1 x 8^2 or 16 x 2^2
    assert "Interpolating pos_embed (1, 64, 96) -> (1, 8, 96)" in capsys.readouterr().out
    expected = utils.interpolate_pos_embed(learned.pos_embed.detach(), (2, 2, 2), old_grid=(4, 4, 4))
    torch.testing.assert_close(small.pos_embed.detach(), expected)


def test_testing_on_other_clips_than_the_checkpoints_is_named(tmp_path, capsys):
    """--eval (require_all) of a checkpoint trained on another clip size: fixed tables run on any grid, so it is
    tested, with a warning naming both grids; the same grid gives none."""
    trained = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    torch.save({"model": trained.state_dict(), "args": {"num_frames": 8, "input_size": 32}}, tmp_path / "f8.pth")
    torch.save({"model": trained.state_dict(), "args": {"num_frames": 4, "input_size": 32}}, tmp_path / "f4.pth")
    utils.load_finetune_checkpoint(trained, tmp_path / "f8.pth", require_all=True)
    assert "trained on clips of 4 x 2 x 2 tokens (its --num_frames 8 --input_size 32), tested here on 2 x 2 x 2" in (
        capsys.readouterr().out)
    utils.load_finetune_checkpoint(trained, tmp_path / "f4.pth", require_all=True)
    assert "warning" not in capsys.readouterr().out


def test_a_learned_table_for_a_fixed_table_model_is_dropped_with_a_message(tmp_path, capsys):
    learned = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4,
                                use_learnable_pos_emb=True)
    torch.save({"model": learned.state_dict()}, tmp_path / "learned.pth")
    model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    utils.load_finetune_checkpoint(model, tmp_path / "learned.pth")
    assert "Not using the checkpoint's learned pos_embed (1, 8, 96)" in capsys.readouterr().out


def test_a_warmup_longer_than_the_run_is_a_clear_error():
    with pytest.raises(ValueError, match="--warmup_epochs"):
        utils.cosine_scheduler(1.0, 0.0, epochs=3, niter_per_ep=2, warmup_epochs=5)


def test_mofo_pooling_sums_in_fp32():
    tokens = torch.full((1, 1568, 4), 300.0, dtype=torch.float16)  # an fp16 sum of 1568 x 300 overflows
    selected = torch.zeros(1, 1568, dtype=torch.bool)
    selected[0, :1000] = True
    pooled = modeling_finetune.masked_mean(tokens, selected)
    assert pooled.dtype == torch.float16 and torch.isfinite(pooled).all() and pooled[0, 0] == 300


def test_a_finetune_checkpoint_with_pickled_code_is_refused_before_it_runs(tmp_path):
    """``--finetune`` reads outside checkpoints with weights_only=True: a file carrying a pickled call is refused
    and the call never runs."""
    pretrain = modeling_pretrain.pretrain_videomae_mini_patch16_224(img_size=32, num_frames=4)
    torch.save({"model": pretrain.state_dict(), "payload": OpensAFile(tmp_path / "ran")}, tmp_path / "evil.pth")
    model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    with pytest.raises(Exception, match=r"evil.pth: refused by torch.load\(weights_only=True\)"):
        utils.load_finetune_checkpoint(model, tmp_path / "evil.pth")
    assert not (tmp_path / "ran").exists()


def test_unreadable_and_unfitting_checkpoints_are_named(tmp_path):
    """A truncated, empty or foreign file, a checkpoint of another model size and one with none of the model's
    weights each stop the load with an error naming the file, instead of a traceback or a silent random start."""
    pretrain = modeling_pretrain.pretrain_videomae_mini_patch16_224(img_size=32, num_frames=4)
    torch.save({"model": pretrain.state_dict()}, tmp_path / "good.pth")
    data = (tmp_path / "good.pth").read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    (tmp_path / "empty.pth").write_bytes(b"")
    (tmp_path / "text.pth").write_text("not a checkpoint\n")
    torch.save([1, 2], tmp_path / "list.pth")
    small = modeling_pretrain.pretrain_videomae_small_patch16_224(img_size=32, num_frames=4)
    torch.save({"model": small.state_dict()}, tmp_path / "other_size.pth")
    torch.save({"model": {"a": torch.zeros(2)}}, tmp_path / "other_keys.pth")
    model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    with pytest.raises(pickle.UnpicklingError, match="text.pth: refused by torch.load"):  # not a pickle of tensors
        utils.load_finetune_checkpoint(model, tmp_path / "text.pth")
    for name, message in [("truncated.pth", "not a readable checkpoint"), ("empty.pth", "not a readable checkpoint"),
                          ("list.pth", "holds a list, not a checkpoint"),
                          ("other_size.pth", r"another shape than VisionTransformer's \(patch_embed\.proj\.weight is"),
                          ("other_keys.pth", "none of its weights is one of VisionTransformer's encoder weights")]:
        with pytest.raises(ValueError, match=message) as error:
            utils.load_finetune_checkpoint(model, tmp_path / name)
        assert str(tmp_path / name) in str(error.value)


def test_checkpoints_have_a_scaler_only_with_a_loss_scale_and_resume_names_a_best_epoch(tmp_path):
    """VideoMAE's resume loads any ``scaler`` into its fp16 GradScaler, which refuses a disabled one's empty state:
    bf16/fp32 checkpoints have none. VideoMAE's ``checkpoint-best`` (epoch "best") is named, not added to."""
    model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    optimizer = torch.optim.AdamW(model.parameters())
    args = SimpleNamespace(epochs=2, resume=None, device=torch.device("cpu"))
    plain = utils.checkpoint_state(model, optimizer, utils.NativeScalerWithGradNormCount(False, "cpu"), 0, args)
    assert "scaler" not in plain and {"model", "optimizer", "epoch", "args"} <= set(plain)
    assert plain["args"] == {"epochs": 2, "resume": None}  # unset flags kept, objects dropped
    if torch.cuda.is_available():
        scaled = utils.checkpoint_state(model, optimizer, utils.NativeScalerWithGradNormCount(True, "cuda"), 0, args)
        assert scaled["scaler"]["scale"] > 0
    torch.save({**plain, "epoch": "best"}, tmp_path / "checkpoint-best.pth")
    resume = SimpleNamespace(resume=str(tmp_path / "checkpoint-best.pth"), auto_resume=False, output_dir="",
                             start_epoch=0, epochs=2)
    with pytest.raises(ValueError, match="its epoch is 'best', not a number"):
        utils.auto_load_model(resume, model, model, optimizer, None)
    resume.eval = True  # testing it needs no epoch
    assert utils.auto_load_model(resume, model, model, optimizer, None) == {"epochs": 2, "resume": None}


def test_resume_names_a_deepspeed_file_and_takes_a_bare_state_dict_as_weights(tmp_path, capsys):
    """Without --enable_deepspeed a DeepSpeed file (weights under ``module``) is named as such; a bare state dict
    (zero_to_fp32.py's pytorch_model.bin) resumes as weights only."""
    model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    trained = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    optimizer = torch.optim.AdamW(model.parameters())
    torch.save({"module": trained.state_dict(), "epoch": 3}, tmp_path / "mp_rank_00_model_states.pt")
    torch.save(trained.state_dict(), tmp_path / "pytorch_model.bin")
    for name, message in [("mp_rank_00_model_states.pt", "is a DeepSpeed checkpoint .* --enable_deepspeed"),
                          ("pytorch_model.bin", None)]:
        args = SimpleNamespace(resume=str(tmp_path / name), auto_resume=False, output_dir="", start_epoch=0,
                               epochs=2)
        if message:
            with pytest.raises(ValueError, match=message):
                utils.auto_load_model(args, model, model, optimizer, None)
            continue
        assert utils.auto_load_model(args, model, model, optimizer, None) == {}
        assert "weights only" in capsys.readouterr().out and args.start_epoch == 0
        torch.testing.assert_close(model.state_dict(), trained.state_dict())


def test_a_requeued_job_goes_on_from_its_newest_checkpoint_not_back_to_its_resume(tmp_path, capsys):
    """A job resubmitted or requeued with ``--resume OUT/checkpoint-1.pth`` in its command goes on from the run's
    newest checkpoint, not back to epoch 1 in every requeue; ``--eval`` tests the named one (checkpoint-best),
    and ``--no_auto_resume`` goes back to it, with a warning that a requeued job goes back again."""
    model = timm.create_model("vit_mini_patch16_224", num_classes=4, img_size=32, all_frames=4)
    optimizer = torch.optim.AdamW(model.parameters())
    for epoch in (1, 3):
        state = utils.checkpoint_state(model, optimizer, None, epoch, SimpleNamespace(epochs=6))
        torch.save(state, tmp_path / f"checkpoint-{epoch}.pth")
    torch.save({**state, "epoch": 2}, tmp_path / "checkpoint-best.pth")

    def resume(name: str, **flags) -> tuple[str, int]:
        args = SimpleNamespace(**{"resume": str(tmp_path / name), "auto_resume": True, "output_dir": str(tmp_path),
                                  "start_epoch": 0, "epochs": 6, **flags})
        utils.auto_load_model(args, model, model, optimizer, None)
        return args.resume.rsplit("/", 1)[-1], args.start_epoch

    assert resume("checkpoint-1.pth") == ("checkpoint-3.pth", 4)
    assert "not taken: " in capsys.readouterr().out
    assert resume("checkpoint-3.pth") == ("checkpoint-3.pth", 4) and "not taken" not in capsys.readouterr().out
    assert resume("checkpoint-best.pth", eval=True)[0] == "checkpoint-best.pth"
    assert resume("checkpoint-1.pth", auto_resume=False) == ("checkpoint-1.pth", 2)
    assert "goes back from checkpoint-3.pth" in capsys.readouterr().out


def test_a_setting_the_checkpoint_was_trained_with_otherwise_is_named(capsys):
    """A resubmitted job after a default changed: the checkpoint's saved value (or, unsaved, the old default)
    against this run's."""
    utils.warn_setting_changed({"box_source": "video"}, "box_source", "video", "frame")
    utils.warn_setting_changed({}, "box_source", "frame", "frame")
    assert capsys.readouterr().out == ""
    utils.warn_setting_changed({}, "box_source", "video", "clip")
    expected = "warning: the checkpoint's run used --box_source clip, this run --box_source video\n"
    assert capsys.readouterr().out == expected
    # the box source a pretraining checkpoint's masks used: VideoMAE's tube masking (no boxes) has none
    assert utils.saved_box_source({"mask_type": "tube"}) is None and utils.saved_box_source({}) is None
    assert utils.saved_box_source({"mask_type": "motion"}) == "clip"
    assert utils.saved_box_source({"mask_type": "motion_guided", "guided_base": "box"}) == "clip"
    assert utils.saved_box_source({"mask_type": "motion_guided", "guided_base": "random"}) is None
    assert utils.saved_box_source({"mask_type": "motion", "box_source": "video"}) == "video"


def test_defaults_are_the_papers_box_and_bf16_only_where_it_runs():
    """Both run scripts take the paper's one box per video by default; bf16 on a V100 is named (fp16 is its
    format), not on an A100 or H100, nor fp16 or fp32 anywhere."""
    import run_mofo_pretraining

    assert run_mofo_finetuning.get_args_parser().parse_args([]).box_source == "video"
    assert run_mofo_pretraining.get_args_parser().parse_args([]).box_source == "video"
    assert "--precision fp16" in utils.precision_warning("bf16", "Tesla V100-SXM2-32GB", (7, 0))
    for precision, capability in (("bf16", (8, 0)), ("bf16", (9, 0)), ("fp16", (7, 0)), ("fp32", (7, 0))):
        assert utils.precision_warning(precision, "GPU", capability) is None


@pytest.mark.parametrize("videos, world", [(3, 2), (5, 4), (1, 2), (8, 3)])
def test_validation_and_test_give_every_video_to_one_rank_once(videos, world):
    """No rank gets a repeated video to even out the shards (a DistributedSampler's padding): validation counts
    what it gets, so a repeat would make its accuracy depend on the number of GPUs."""
    args = SimpleNamespace(batch_size=1, num_workers=0, pin_mem=False, device="cpu")
    seen = [int(index) for rank in range(world)
            for batch in run_mofo_finetuning.eval_loader(list(range(videos)), args, rank, world) for index in batch]
    assert sorted(seen) == list(range(videos))


DEEPSPEED_SAVES = """import io, os, signal, sys
import torch
import modeling_finetune, utils
from types import SimpleNamespace
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(utils.free_port()), RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
args = SimpleNamespace(enable_deepspeed=True, compile=False, batch_size=2, num_sample=1, update_freq=1, zero_stage=0,
                       clip_grad=None, precision="fp32", output_dir=sys.argv[1], epochs=5, distributed=False)
model = modeling_finetune.vit_mini_patch16_224(img_size=32, all_frames=4, num_classes=5)
engine, without_ddp, optimizer, scaler = utils.wrap_model(args, model, torch.optim.AdamW(model.parameters()),
                                                         torch.device("cpu"))
save = torch.save
def half_written_then_killed(obj, f, *rest, **kwargs):
    data = io.BytesIO()
    save(obj, data)
    with open(f, "wb") if isinstance(f, (str, os.PathLike)) else f as out:
        out.write(data.getvalue()[:len(data.getvalue()) // 2])
    os.kill(os.getpid(), signal.SIGKILL)
for epoch in map(int, sys.argv[2:]):
    if epoch < 0:
        torch.save = half_written_then_killed
    utils.save_model(args, abs(epoch), engine, without_ddp, optimizer, scaler, tag="checkpoint-best")
"""


def test_a_deepspeed_best_checkpoint_survives_a_job_killed_while_replacing_it(tmp_path):
    """DeepSpeed writes its files in place: a better epoch's checkpoint-best is written beside the old one and
    renamed over it, so a kill half-way through the write keeps the old one readable."""
    def saves(*epochs: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", DEEPSPEED_SAVES, str(tmp_path), *map(str, epochs)], cwd=REPO,
                              env=clean_env(), capture_output=True, text=True, timeout=300)

    def best_epoch() -> int:
        return torch.load(tmp_path / "checkpoint-best" / "mp_rank_00_model_states.pt", weights_only=True)["epoch"]

    killed = saves(0, 1, -2)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert best_epoch() == 1 and {p.name for p in tmp_path.iterdir()} == {"checkpoint-best", "checkpoint-best.tmp"}
    again = saves(3)
    assert again.returncode == 0, again.stderr[-3000:]
    assert best_epoch() == 3 and {p.name for p in tmp_path.iterdir()} == {"checkpoint-best"}


def test_test_results_name_the_weights_they_are_of(tmp_path):
    """``weights`` in test_results.json: after training, the run's checkpoint of its last epoch (a DeepSpeed folder;
    none with --no_save_ckpt); a finished run's rerun, which trains nothing, the checkpoint it resumed; --eval, the
    file it read (a run folder's newest), with a --model_key other than the default; a fresh model, none."""
    torch.save({"model": {}}, tmp_path / "checkpoint-3.pth")
    base = dict(eval=False, start_epoch=0, epochs=5, save_ckpt=True, enable_deepspeed=False, output_dir=str(tmp_path),
                resume="", finetune="", finetune_file=None, model_key="model|module", model_prefix="")

    def weights(**changes):
        return run_mofo_finetuning.tested_weights(SimpleNamespace(**(base | changes)))

    assert weights() == {"weights": str(tmp_path.resolve() / "checkpoint-4.pth")}
    assert weights(enable_deepspeed=True) == {"weights": str(tmp_path.resolve() / "checkpoint-4")}
    assert "not saved: --no_save_ckpt" in weights(save_ckpt=False)["weights"]
    finished = weights(start_epoch=4, epochs=3, resume=str(tmp_path / "checkpoint-3.pth"))
    assert finished == {"weights": str(tmp_path.resolve() / "checkpoint-3.pth")}
    assert weights(eval=True, resume=str(tmp_path)) == {"weights": str(tmp_path.resolve() / "checkpoint-3.pth")}
    assert weights(eval=True, finetune="ft.pth", finetune_file="/x/ft.pth", model_key="model_ema") == {
        "weights": "/x/ft.pth", "model_key": "model_ema"}
    assert weights(eval=True) == {"weights": "none (a freshly initialised model)"}
