"""Hugging Face transformers' VideoMAE checkpoints (the Hub's MCG-NJU/videomae-* folders): renamed to VideoMAE's
keys on load, they give the outputs HF's own models gave. The fixture (tests/data/hf_videomae, written by its
make_fixture.py with transformers) holds two tiny random models and their outputs on one input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

import hf_videomae
import modeling_finetune
import modeling_pretrain
import run_mofo_vis
import utils

FIXTURE = Path(__file__).resolve().parent / "data" / "hf_videomae"
TINY_ENCODER = dict(img_size=32, patch_size=8, tubelet_size=2)
TOLERANCE = dict(atol=1e-4, rtol=1e-4)  # HF's own; fc_norm and decoder.norm use eps 1e-5 there, 1e-6 here


@pytest.fixture(scope="module")
def outputs() -> dict:
    return torch.load(FIXTURE / "outputs.pt", weights_only=True)


def classifier() -> modeling_finetune.VisionTransformer:
    return modeling_finetune.vit_mini_patch16_224(**TINY_ENCODER, embed_dim=32, depth=2, num_heads=2, all_frames=4,
                                                  num_classes=5, use_mean_pooling=True).eval()


def pretraining_model() -> modeling_pretrain.PretrainVisionTransformer:
    return modeling_pretrain.pretrain_videomae_mini_patch16_224(
        **TINY_ENCODER, num_frames=4, encoder_embed_dim=32, encoder_depth=2, encoder_num_heads=2,
        decoder_embed_dim=16, decoder_num_heads=2, decoder_depth=1).eval()


def clips(outputs: dict) -> torch.Tensor:
    """HF's (B, T, C, H, W) input in VideoMAE's (B, C, T, H, W)."""
    return outputs["pixel_values"].permute(0, 2, 1, 3, 4)


def test_a_classifier_folder_gives_hfs_logits_and_passes_eval(outputs, capsys):
    """transformers 5 names (query.bias / value.bias) in a pytorch_model.bin; --eval's complete-weights check."""
    model = classifier()
    utils.load_finetune_checkpoint(model, FIXTURE / "classification", require_all=True)
    assert "Hugging Face VideoMAE weights, renamed" in capsys.readouterr().out
    with torch.no_grad():
        torch.testing.assert_close(model(clips(outputs)), outputs["classification_logits"], **TOLERANCE)


def test_a_pretraining_folder_loads_strictly_and_gives_hfs_reconstructions(outputs):
    """The Hub's names (q_bias / v_bias) in model.safetensors; every weight has its place."""
    checkpoint = utils.load_checkpoint_file(utils.resolve_checkpoint(FIXTURE / "pretraining"))
    model = pretraining_model()
    model.load_state_dict(checkpoint["model"], strict=True)
    with torch.no_grad():
        predicted = model(clips(outputs), outputs["bool_masked_pos"])
    torch.testing.assert_close(predicted, outputs["pretraining_logits"], **TOLERANCE)
    assert checkpoint["args"] == {"input_size": 32, "num_frames": 4, "tubelet_size": 2, "use_mean_pooling": False,
                                  "decoder_depth": 1, "normlize_target": True}


def test_finetuning_from_a_pretraining_folder_takes_the_whole_encoder(capsys):
    model = classifier()
    utils.load_finetune_checkpoint(model, FIXTURE / "pretraining")
    out = capsys.readouterr().out
    assert "not initialized from the checkpoint: ['fc_norm.weight', 'fc_norm.bias', 'head.weight', 'head.bias']" in out
    hub = load_file(FIXTURE / "pretraining" / "model.safetensors")
    layer = "videomae.encoder.layer.1.attention.attention."
    torch.testing.assert_close(model.blocks[1].attn.qkv.weight,
                               torch.cat([hub[layer + name + ".weight"] for name in ("query", "key", "value")]))
    torch.testing.assert_close(model.blocks[1].attn.v_bias, hub[layer + "v_bias"])
    torch.testing.assert_close(model.blocks[1].mlp.fc2.weight, hub["videomae.encoder.layer.1.output.dense.weight"])


def test_shards_of_an_index_load_as_one_file(tmp_path):
    state = load_file(FIXTURE / "pretraining" / "model.safetensors")
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, names in shards.items():
        save_file({key: state[key] for key in names}, tmp_path / name)
    index = {"metadata": {}, "weight_map": {key: name for name, names in shards.items() for key in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    shutil.copy(FIXTURE / "pretraining" / "config.json", tmp_path)
    whole = utils.load_checkpoint_file(FIXTURE / "pretraining" / "model.safetensors")
    sharded = utils.load_checkpoint_file(utils.resolve_checkpoint(tmp_path))
    assert sharded["model"].keys() == whole["model"].keys()
    assert all(torch.equal(sharded["model"][key], whole["model"][key]) for key in whole["model"])


def hf_config(**changes) -> dict:
    config = json.loads((FIXTURE / "classification" / "config.json").read_text())
    return {**config, **changes}


@pytest.mark.parametrize("architecture, size, expected", [
    ("VideoMAEForVideoClassification", (768, 12, 12), "vit_base_patch16_224"),
    ("VideoMAEForPreTraining", (1024, 24, 16), "pretrain_videomae_large_patch16_224"),
    ("VideoMAEForVideoClassification", (384, 12, 6), "vit_small_patch16_224"),
    ("VideoMAEForVideoClassification", (384, 12, 16), "vit_small_patch16_224"),  # the Hub's videomae-small configs
    ("VideoMAEForVideoClassification", (384, 12, 8), None),
    ("VideoMAEForPreTraining", (96, 2, 3), "pretrain_videomae_mini_patch16_224"),  # export_hf.py of a mini run
])
def test_config_names_the_registered_model_of_its_size(tmp_path, architecture, size, expected, capsys):
    hidden, layers, heads = size
    config = hf_config(architectures=[architecture], hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, patch_size=16)
    args = hf_videomae.config_args(config, tmp_path / "config.json")
    assert args.get("model") == expected
    assert ("trained with 6 heads, and are read as that model" in capsys.readouterr().out) == (size == (384, 12, 16))
    assert ("nb_classes" in args) == (architecture == "VideoMAEForVideoClassification")


def test_safetensors_of_our_own_keys_and_a_bare_videomae_model_load(tmp_path):
    """DeepSpeed's zero_to_fp32.py --safe_serialization writes the model's own keys; HF's VideoMAEModel has no
    videomae. prefix."""
    model = classifier()
    utils.load_finetune_checkpoint(model, FIXTURE / "classification", require_all=True)
    (tmp_path / "fp32").mkdir()
    save_file(model.state_dict(), tmp_path / "fp32" / "model.safetensors")
    again = classifier()
    utils.load_finetune_checkpoint(again, tmp_path / "fp32", require_all=True)
    assert all(torch.equal(again.state_dict()[key], value) for key, value in model.state_dict().items())
    hub = torch.load(FIXTURE / "classification" / "pytorch_model.bin", weights_only=True)
    bare = {key.removeprefix("videomae."): value for key, value in hub.items() if key.startswith("videomae.")}
    (tmp_path / "bare").mkdir()
    save_file(bare, tmp_path / "bare" / "model.safetensors")
    encoder_only = classifier()
    utils.load_finetune_checkpoint(encoder_only, tmp_path / "bare")
    torch.testing.assert_close(encoder_only.blocks[1].attn.qkv.weight, model.blocks[1].attn.qkv.weight)


def test_bad_files_are_refused_with_their_name(tmp_path):
    folder = tmp_path / "not_videomae"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{truncated")
    with pytest.raises(ValueError, match=r"model.safetensors: cannot read it as safetensors"):
        utils.load_checkpoint_file(folder / "model.safetensors")
    other = tmp_path / "other_model"
    shutil.copytree(FIXTURE / "classification", other)
    (other / "config.json").write_text(json.dumps(hf_config(model_type="vivit")))
    with pytest.raises(ValueError, match=r"other_model/config.json: model_type 'vivit', not a VideoMAE model"):
        utils.load_checkpoint_file(utils.resolve_checkpoint(other))
    for changes, message in (({"architectures": None}, "architectures is None"), ({"id2label": []}, "id2label is"),
                             ({"image_size": [32, 48]}, r"image_size \[32, 48\]; VideoMAE's models take square"),
                             ({"num_frames": True}, "num_frames is True")):
        (other / "config.json").write_text(json.dumps(hf_config(**changes)))
        with pytest.raises(ValueError, match=f"other_model/config.json: {message}"):
            utils.load_checkpoint_file(utils.resolve_checkpoint(other))
    (other / "config.json").write_text(json.dumps(hf_config(image_size=[32, 32])))  # HF's [height, width]
    assert utils.load_checkpoint_file(utils.resolve_checkpoint(other))["args"]["input_size"] == 32
    (other / "config.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="other_model/config.json: a JSON object expected"):
        utils.load_checkpoint_file(utils.resolve_checkpoint(other))
    (tmp_path / "escape.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../x.safetensors"}}))
    with pytest.raises(ValueError, match="shards must be files beside the index"):
        utils.load_checkpoint_file(tmp_path / "escape.safetensors.index.json")


def test_pretraining_resumes_from_a_hf_folder_with_a_fresh_optimizer(capsys):
    """VideoMAE's released weights on the Hub continue pretraining as its Google Drive files do (--resume)."""
    model = pretraining_model()
    args = SimpleNamespace(output_dir="", enable_deepspeed=False, resume=str(FIXTURE / "pretraining"),
                           auto_resume=False, epochs=2, start_epoch=0)
    utils.auto_load_model(args, model, model, torch.optim.AdamW(model.parameters()), None)
    assert args.start_epoch == 0
    assert "weights only (no optimizer state or epoch)" in capsys.readouterr().out
    hub = load_file(FIXTURE / "pretraining" / "model.safetensors")
    torch.testing.assert_close(model.decoder.blocks[0].norm1.weight,
                               hub["decoder.decoder_layers.0.layernorm_before.weight"])
    torch.testing.assert_close(model.encoder.norm.bias, hub["videomae.layernorm.bias"])


def test_vis_reads_a_hf_folder_and_its_settings():
    checkpoint = run_mofo_vis.read_checkpoint(str(FIXTURE / "pretraining"))
    args = SimpleNamespace(**{name: None for name in run_mofo_vis.TRAINED_DEFAULTS})
    run_mofo_vis.fill_settings(args, utils.saved_args(checkpoint))
    assert (args.input_size, args.num_frames, args.decoder_depth, args.normlize_target) == (32, 4, 1, True)
    assert args.model == run_mofo_vis.TRAINED_DEFAULTS["model"]  # the tiny config is no registered size
    with pytest.raises(run_mofo_vis.VisualizationError, match="missing_folder: checkpoint not found"):
        run_mofo_vis.read_checkpoint(str(FIXTURE / "missing_folder"))


# ---------------------------------------------------------------- export_hf.py

REPO = Path(__file__).resolve().parents[1]


def test_the_hub_names_and_config_come_back_as_transformers_wrote_them():
    """Import then export of the folder save_pretrained wrote gives its tensors and its settings exactly."""
    hub = load_file(FIXTURE / "pretraining" / "model.safetensors")
    exported = hf_videomae.from_videomae_state(hf_videomae.to_videomae_state(hub))
    assert exported.keys() == hub.keys()
    assert all(torch.equal(exported[key], hub[key]) for key in hub)
    written = json.loads((FIXTURE / "pretraining" / "config.json").read_text())
    config = hf_videomae.config_for(pretraining_model())
    assert {key: written[key] for key in config if key != "qkv_bias"} == {k: v for k, v in config.items()
                                                                            if k != "qkv_bias"}
    assert config["qkv_bias"] == written["qv_bias"]  # transformers 5's name; it still reads qkv_bias


def save_run_checkpoint(path: Path, network: torch.nn.Module, **args) -> Path:
    torch.manual_seed(3)
    with torch.no_grad():
        for param in network.parameters():
            param.normal_(0.0, 0.2)
    torch.save({"model": network.state_dict(), "epoch": 9, "args": {"input_size": 32, "num_frames": 4, **args}}, path)
    return path


def test_a_pretraining_run_exports_and_reads_back_the_same(tmp_path):
    """The CLI on a pixel+trajectory+HOG run: the extra heads are left out, the rest reads back unchanged."""
    model = modeling_pretrain.pretrain_videomae_mini_patch16_224(img_size=32, num_frames=4, decoder_depth=1,
                                                                 targets=("pixel", "trajectory", "hog"),
                                                                 trajectory_dim=20, hog_dim=12)
    checkpoint = save_run_checkpoint(tmp_path / "checkpoint-9.pth", model, model="pretrain_videomae_mini_patch16_224",
                                     normlize_target=False)
    result = subprocess.run([sys.executable, "export_hf.py", str(checkpoint), str(tmp_path / "hf")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "Leaving out decoder.hog_head, decoder.trajectory_head" in result.stdout
    assert sorted(path.name for path in (tmp_path / "hf").iterdir()) == ["config.json", "model.safetensors",
                                                                        "preprocessor_config.json"]
    back = utils.load_checkpoint_file(utils.resolve_checkpoint(tmp_path / "hf"))
    expected = {key: value for key, value in model.state_dict().items() if "_head." not in key}
    assert back["model"].keys() == expected.keys()
    assert all(torch.equal(back["model"][key], expected[key]) for key in expected)
    assert back["args"] == {"input_size": 32, "num_frames": 4, "tubelet_size": 2, "use_mean_pooling": False,
                            "model": "pretrain_videomae_mini_patch16_224", "decoder_depth": 1, "normlize_target": False}
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["size"] == {"shortest_edge": 32}
    (tmp_path / "plain").mkdir()  # made the ordinary way, for the permissions the umask gives
    (tmp_path / "plain" / "file").write_text("")
    assert (tmp_path / "hf").stat().st_mode == (tmp_path / "plain").stat().st_mode
    assert all(path.stat().st_mode == (tmp_path / "plain" / "file").stat().st_mode
               for path in (tmp_path / "hf").iterdir())


@pytest.mark.parametrize("use_mean_pooling", [True, False])
def test_a_finetuned_run_exports_with_its_class_names(tmp_path, use_mean_pooling):
    model = modeling_finetune.vit_mini_patch16_224(img_size=32, all_frames=4, num_classes=3,
                                                   use_mean_pooling=use_mean_pooling)
    checkpoint = save_run_checkpoint(tmp_path / "ft.pth", model, model="vit_mini_patch16_224", data_set="SSV2",
                                     short_side_size=40)
    labels = tmp_path / "labels.txt"
    labels.write_text("pushing left\npushing right\n\nlifting\n")
    import export_hf

    (tmp_path / "hf.tmp-1a2b3c").mkdir()  # what a killed export left
    config = export_hf.export(export_hf.get_args_parser().parse_args([str(checkpoint), str(tmp_path / "hf"),
                                                                      "--labels", str(labels)]))
    assert not (tmp_path / "hf.tmp-1a2b3c").exists()
    processor = json.loads((tmp_path / "hf" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 40}  # the run's --short_side_size
    assert config["id2label"] == {0: "pushing left", 1: "pushing right", 2: "lifting"}
    assert config["use_mean_pooling"] is use_mean_pooling
    reread = modeling_finetune.vit_mini_patch16_224(img_size=32, all_frames=4, num_classes=3,
                                                    use_mean_pooling=use_mean_pooling).eval()
    utils.load_finetune_checkpoint(reread, tmp_path / "hf", require_all=True)
    clip = torch.randn(1, 3, 4, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(reread(clip), model.eval()(clip), rtol=0, atol=0)


def test_a_finetuned_run_of_two_segments_exports_all_its_frames(tmp_path):
    """--num_frames 2 --num_segments 2 trains a 4-frame model: HF's config says 4 (its sinusoid table has no weights,
    so a 2-frame export would load strictly and then fail on the 4-frame clips)."""
    import export_hf

    model = modeling_finetune.vit_mini_patch16_224(img_size=32, all_frames=4, num_classes=3)
    checkpoint = save_run_checkpoint(tmp_path / "ft.pth", model, model="vit_mini_patch16_224", data_set="SSV2",
                                     num_frames=2, num_segments=2)
    config = export_hf.export(export_hf.get_args_parser().parse_args([str(checkpoint), str(tmp_path / "hf")]))
    assert config["num_frames"] == 4
    assert utils.saved_token_grid({"num_frames": 2, "num_segments": 2, "input_size": 32},
                                  model.state_dict()) == (2, 2, 2)


def run_export(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "export_hf.py", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_what_hf_cannot_hold_is_refused_with_the_reason(tmp_path):
    mofo = modeling_finetune.vit_mini_patch16_224_mofo(img_size=32, all_frames=4, num_classes=3)
    cases = {
        "mofo.pth": (mofo, {"model": "vit_mini_patch16_224_mofo"}, "the MOFO fine-tuning head has no Hugging Face"),
        "epic.pth": (modeling_finetune.vit_mini_patch16_224(img_size=32, all_frames=4, num_classes=5),
                     {"model": "vit_mini_patch16_224", "data_set": "EPIC-KITCHENS-100"}, "verb and noun heads"),
        "scale.pth": (modeling_finetune.vit_mini_patch16_224(img_size=32, all_frames=4, num_classes=3,
                                                             init_values=0.1),
                      {"model": "vit_mini_patch16_224"}, r"does not fit --model vit_mini_patch16_224 .*gamma_1"),
        "learned.pth": (modeling_finetune.vit_mini_patch16_224(img_size=32, all_frames=4, num_classes=3,
                                                               use_learnable_pos_emb=True),
                        {"model": "vit_mini_patch16_224"}, r"does not fit .*pos_embed"),
        "nameless.pth": (modeling_finetune.vit_mini_patch16_224(img_size=32, all_frames=4, num_classes=3), {},
                         "does not say which model it is: pass --model"),
        "trajectory.pth": (modeling_pretrain.pretrain_videomae_mini_patch16_224(
            img_size=32, num_frames=4, decoder_depth=1, targets=("trajectory",), trajectory_dim=20),
            {"model": "pretrain_videomae_mini_patch16_224", "target": "trajectory"}, "without the pixel target"),
    }
    for name, (model, args, message) in cases.items():
        checkpoint = save_run_checkpoint(tmp_path / name, model, **args)
        result = run_export(str(checkpoint), str(tmp_path / f"hf_{name}"))
        assert result.returncode != 0 and result.stderr.startswith("error: "), (name, result.stderr)
        assert re.search(message, result.stderr), (name, result.stderr)
        assert not (tmp_path / f"hf_{name}").exists()
    # another --model than the weights': one line naming the model it was trained as, not every key
    mini = save_run_checkpoint(tmp_path / "mini.pth", modeling_pretrain.pretrain_videomae_mini_patch16_224(
        img_size=32, num_frames=4, decoder_depth=1), model="pretrain_videomae_mini_patch16_224")
    result = run_export(str(mini), str(tmp_path / "hf_small"), "--model", "pretrain_videomae_small_patch16_224")
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "weights are another shape (e.g. " in result.stderr and len(result.stderr) < 600, result.stderr
    assert result.stderr.strip().endswith("it was trained with --model pretrain_videomae_mini_patch16_224")
    (tmp_path / "taken").mkdir()
    plain = save_run_checkpoint(tmp_path / "plain.pth", cases["nameless.pth"][0], model="vit_mini_patch16_224")
    result = run_export(str(plain), str(tmp_path / "taken"))
    assert result.stderr.startswith("error: ") and "taken: exists; export into a new folder" in result.stderr
    (tmp_path / "two.txt").write_text("a\nb\n")
    result = run_export(str(plain), str(tmp_path / "out"), "--labels", str(tmp_path / "two.txt"))
    assert result.stderr.startswith("error: ") and "2 class names for a head of 3 classes" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir() if path.is_dir()) == ["taken"]  # no half folder left
    weights_only = tmp_path / "weights_only.pth"  # sizes the file does not hold: named; the tubelet is the weights'
    torch.save({"model": cases["nameless.pth"][0].state_dict()}, weights_only)
    exported = run_export(str(weights_only), str(tmp_path / "sized"), "--model", "vit_mini_patch16_224",
                          "--num_frames", "4")
    assert exported.returncode == 0, exported.stderr
    assert (f"note: {weights_only} saved no --input_size: exported with --input_size 224 (config.json)"
            in exported.stdout) and "224px x 4 frames" in exported.stdout
    assert "saved no" not in run_export(str(plain), str(tmp_path / "plain_hf")).stdout


def test_a_failed_write_leaves_no_folder(tmp_path):
    with pytest.raises(AttributeError):
        hf_videomae.write_folder(tmp_path / "hf", {"videomae.layernorm.weight": "not a tensor"},
                                 hf_videomae.config_for(classifier()))
    assert list(tmp_path.iterdir()) == []
