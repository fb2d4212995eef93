"""Hugging Face transformers' VideoMAE checkpoints (``VideoMAEForPreTraining``, ``VideoMAEForVideoClassification``)
to and from VideoMAE's keys.

The Hub's ``MCG-NJU/videomae-*`` folders hold VideoMAE's released weights under HF's names: per layer separate
``query``/``key``/``value`` weights (VideoMAE: one ``qkv``), ``q_bias``/``v_bias`` (transformers 5 calls them
``query.bias``/``value.bias`` in memory and writes the Hub's names), ``layernorm_before``/``after``,
``intermediate``/``output.dense``; ``classifier`` for VideoMAE's ``head``. Position tables are fixed sinusoids on
both sides and in neither state dict. :func:`to_videomae_state` reads either naming (utils.load_checkpoint_file
applies it to every HF file); :func:`from_videomae_state`, :func:`config_for` and :func:`write_folder` write a folder
in the Hub's layout (export_hf.py).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from timm.data.constants import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
LAYER_PATTERN = re.compile(r"(videomae\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)")
LAYER_PARTS = {  # the rest of an HF layer's key -> VideoMAE's; the query/key/value weights become one qkv weight
    "attention.attention.q_bias": "attn.q_bias", "attention.attention.query.bias": "attn.q_bias",
    "attention.attention.v_bias": "attn.v_bias", "attention.attention.value.bias": "attn.v_bias",
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "layernorm_before.weight": "norm1.weight", "layernorm_before.bias": "norm1.bias",
    "layernorm_after.weight": "norm2.weight", "layernorm_after.bias": "norm2.bias",
    "intermediate.dense.weight": "mlp.fc1.weight", "intermediate.dense.bias": "mlp.fc1.bias",
    "output.dense.weight": "mlp.fc2.weight", "output.dense.bias": "mlp.fc2.bias",
}
HUB_LAYER_PARTS = {ours: theirs for theirs, ours in LAYER_PARTS.items() if not theirs.endswith(("query.bias",
                                                                                                "value.bias"))}
QKV = ("attention.attention.query.weight", "attention.attention.key.weight", "attention.attention.value.weight")
SIZES = {(96, 2, 3): "mini", (384, 12, 6): "small", (768, 12, 12): "base", (1024, 24, 16): "large",
         (1280, 32, 16): "huge"}  # (width, depth, heads) -> the registered models' size name
# transformers' convert_videomae_to_pytorch.py gave the Hub's videomae-small configs 16 heads; the weights are
# VideoMAE's ViT-S, trained with 6 (the head count changes no weight's shape)
HUB_SMALL = (384, 12, 16)
SIZES_BY_NAME = {name: shape for shape, name in SIZES.items()}
PATCH_EMBED = "videomae.embeddings.patch_embeddings.projection."
BASE_MODEL_KEY = "embeddings.patch_embeddings.projection.weight"  # a VideoMAEModel's, without the videomae. prefix
LAYER_NORM_EPS = 1e-6  # VideoMAE's, which its weights were trained with (HF's default is 1e-12)


def is_hf_state(state: dict) -> bool:
    """HF VideoMAE weights: a VideoMAEForPreTraining's or VideoMAEForVideoClassification's (``videomae.*``) or a
    bare VideoMAEModel's."""
    return BASE_MODEL_KEY in state or any(isinstance(key, str) and key.startswith("videomae.") for key in state)


def is_pretraining_state(state: dict) -> bool:
    return any(key.startswith(("decoder.", "encoder_to_decoder.", "mask_token")) for key in state)


def to_videomae_state(state: dict) -> dict:
    """HF VideoMAE weights under VideoMAE's keys: a pretraining model's as VideoMAE's pretraining checkpoint
    (``encoder.``, ``decoder.blocks``, ``encoder_to_decoder``, ``mask_token``), a classifier's as its fine-tuned one.
    A key of no known VideoMAE place keeps its name, so that loading reports it."""
    if BASE_MODEL_KEY in state:
        state = {f"videomae.{key}": value for key, value in state.items()}
    encoder = "encoder." if is_pretraining_state(state) else ""
    converted = {}
    for key, value in state.items():
        layer = LAYER_PATTERN.fullmatch(key)
        if layer:
            stack, index, rest = layer.groups()
            prefix = f"{encoder}blocks.{index}." if stack.startswith("videomae") else f"decoder.blocks.{index}."
            if rest in QKV:
                if rest == QKV[0]:
                    converted[prefix + "attn.qkv.weight"] = torch.cat([state[f"{stack}.{index}.{part}"]
                                                                       for part in QKV])
                continue
            converted[prefix + LAYER_PARTS.get(rest, rest)] = value
        elif key.startswith(PATCH_EMBED):
            converted[encoder + "patch_embed.proj." + key.removeprefix(PATCH_EMBED)] = value
        elif key.startswith("videomae.layernorm."):
            converted[encoder + "norm." + key.removeprefix("videomae.layernorm.")] = value
        elif key.startswith("classifier."):
            converted["head." + key.removeprefix("classifier.")] = value
        else:  # encoder_to_decoder, mask_token, decoder.norm, decoder.head and fc_norm are VideoMAE's names
            converted[key] = value
    return converted


VIDEOMAE_BLOCK = re.compile(r"(encoder\.blocks|decoder\.blocks|blocks)\.(\d+)\.(.+)")


def from_videomae_state(state: dict) -> dict:
    """VideoMAE weights (a pretraining model's with ``encoder.``, or a fine-tuned one's) under the Hub's HF names;
    a ValueError names the first weight HF's VideoMAE has no place for."""
    converted = {}
    for key, value in state.items():
        block = VIDEOMAE_BLOCK.fullmatch(key)
        stripped = key.removeprefix("encoder.")
        if block:
            stack, index, rest = block.groups()
            prefix = (f"decoder.decoder_layers.{index}." if stack == "decoder.blocks"
                      else f"videomae.encoder.layer.{index}.")
            if rest == "attn.qkv.weight":
                converted.update(zip((prefix + part for part in QKV), value.chunk(3), strict=True))
            elif rest in HUB_LAYER_PARTS:
                converted[prefix + HUB_LAYER_PARTS[rest]] = value
            else:
                raise ValueError(f"{key}: HF's VideoMAE layers have no place for it (layer scale or another block)")
        elif stripped.startswith("patch_embed.proj."):
            converted[PATCH_EMBED + stripped.removeprefix("patch_embed.proj.")] = value
        elif stripped.startswith("norm."):
            converted["videomae.layernorm." + stripped.removeprefix("norm.")] = value
        elif key.startswith("head."):
            converted["classifier." + key.removeprefix("head.")] = value
        elif key == "mask_token" or key.startswith(("fc_norm.", "decoder.norm.", "decoder.head.",
                                                    "encoder_to_decoder.")):
            converted[key] = value
        else:
            raise ValueError(f"{key}: HF's VideoMAE has no place for it")
    return converted


def read_safetensors(path: Path) -> dict:
    """The tensors of a safetensors file, or of all the shards a ``*.safetensors.index.json`` names."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.name.endswith(".index.json"):
        try:
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as e:
            raise ValueError(f"{path}: not a safetensors shard index ({type(e).__name__}: {e})") from None
        if not all(isinstance(shard, str) and shard == Path(shard).name for shard in shards):
            raise ValueError(f"{path}: shards must be files beside the index, got {shards}")
        return {key: value for shard in shards for key, value in read_safetensors(path.parent / shard).items()}
    try:
        return load_file(path, device="cpu")
    except (OSError, SafetensorError) as e:
        raise ValueError(f"{path}: cannot read it as safetensors ({e})") from None


def config_args(config: dict, path: Path) -> dict:
    """The run flags an HF VideoMAE ``config.json`` amounts to (the registered model of its size, when it is one)."""
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a JSON object expected, got {type(config).__name__}")
    expected = {"architectures": list, "id2label": dict, "image_size": (int, list), "num_frames": int,
                "tubelet_size": int, "patch_size": (int, list), "use_mean_pooling": bool, "norm_pix_loss": bool,
                "decoder_num_hidden_layers": int}
    for key, kind in expected.items():
        value = config.get(key)
        if key in config and (not isinstance(value, kind) or isinstance(value, bool) != (kind is bool)):
            raise ValueError(f"{path}: {key} is {value!r}")
    config = {**config, **{key: square(config[key], key, path) for key in ("image_size", "patch_size")
                           if key in config}}
    if config.get("model_type", "videomae") != "videomae":
        raise ValueError(f"{path}: model_type {config['model_type']!r}, not a VideoMAE model")
    if config.get("hidden_act", "gelu") != "gelu" or config.get("num_channels", 3) != 3:
        raise ValueError(f"{path}: hidden_act {config.get('hidden_act')!r} / num_channels "
                         f"{config.get('num_channels')}: VideoMAE's models use gelu on 3 channels")
    pretraining = "VideoMAEForPreTraining" in config.get("architectures", [])
    args = {"input_size": config.get("image_size"), "num_frames": config.get("num_frames"),
            "tubelet_size": config.get("tubelet_size"), "use_mean_pooling": config.get("use_mean_pooling")}
    shape = (config.get("hidden_size"), config.get("num_hidden_layers"), config.get("num_attention_heads"))
    if shape == HUB_SMALL:
        print(f"{path}: 16 attention heads at width 384, as transformers' conversion wrote the Hub's videomae-small "
              "configs; these are VideoMAE's ViT-S weights, trained with 6 heads, and are read as that model (its "
              "outputs are VideoMAE's, not those of transformers' 16-head model)")
        shape = SIZES_BY_NAME["small"]
    size = SIZES.get(shape)
    if size and config.get("patch_size") == 16:
        args["model"] = f"pretrain_videomae_{size}_patch16_224" if pretraining else f"vit_{size}_patch16_224"
    if pretraining:
        args.update(decoder_depth=config.get("decoder_num_hidden_layers"), normlize_target=config.get("norm_pix_loss"))
    elif "id2label" in config:
        args["nb_classes"] = len(config["id2label"])
    return {key: value for key, value in args.items() if value is not None}


def square(value: int | list, key: str, path: Path) -> int:
    """HF's image and patch sizes: one int, or [height, width]; VideoMAE's models take square ones."""
    if isinstance(value, list):
        if len(value) != 2 or value[0] != value[1] or not isinstance(value[0], int):
            raise ValueError(f"{path}: {key} {value!r}; VideoMAE's models take square frames and patches")
        return value[0]
    return value


def read_checkpoint(state: dict, path: Path) -> dict:
    """A weights file's tensors as a checkpoint: an HF VideoMAE one's (with the ``config.json`` beside it, when there
    is one) as ``{"model": VideoMAE's keys, "args": the config's settings}``; any other as ``{"model": tensors}``."""
    if not is_hf_state(state):  # e.g. DeepSpeed's zero_to_fp32.py --safe_serialization: the model's own keys
        return {"model": state}
    config_path = path.parent / "config.json"
    args = {}
    if config_path.is_file():
        try:
            config = json.loads(config_path.read_text())
        except (OSError, ValueError) as e:
            raise ValueError(f"{config_path}: not a readable config.json ({e})") from None
        args = config_args(config, config_path)
    print(f"{path}: Hugging Face VideoMAE weights, renamed to VideoMAE's keys")
    return {"model": to_videomae_state(state), "args": args}


def stack_config(blocks: torch.nn.ModuleList) -> dict:
    """Width, depth, heads and MLP width of a stack of VideoMAE blocks."""
    return {"hidden_size": blocks[0].norm1.normalized_shape[0], "num_hidden_layers": len(blocks),
            "num_attention_heads": blocks[0].attn.num_heads, "intermediate_size": blocks[0].mlp.fc1.out_features}


def config_for(model: torch.nn.Module, norm_pix_loss: bool = True, labels: list[str] | None = None) -> dict:
    """The ``config.json`` of the HF model that computes what ``model`` does: ``VideoMAEForPreTraining`` for a
    ``PretrainVisionTransformer``, else ``VideoMAEForVideoClassification`` (with ``labels`` as its class names)."""
    pretraining = hasattr(model, "decoder")
    encoder = model.encoder if pretraining else model
    embed = encoder.patch_embed
    if embed.img_size[0] != embed.img_size[1] or embed.patch_size[0] != embed.patch_size[1]:
        raise ValueError(f"HF's VideoMAE takes square frames and patches, not {embed.img_size} / {embed.patch_size}")
    config = {"model_type": "videomae", "image_size": embed.img_size[0], "patch_size": embed.patch_size[0],
              "num_channels": embed.proj.in_channels, "num_frames": embed.num_frames,
              "tubelet_size": embed.tubelet_size, **stack_config(encoder.blocks), "hidden_act": "gelu",
              "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
              "layer_norm_eps": LAYER_NORM_EPS, "qkv_bias": encoder.blocks[0].attn.q_bias is not None}
    if pretraining:
        decoder = {f"decoder_{key}": value for key, value in stack_config(model.decoder.blocks).items()}
        return {**config, "architectures": ["VideoMAEForPreTraining"], **decoder, "use_mean_pooling": False,
                "norm_pix_loss": bool(norm_pix_loss)}
    num_classes = model.head.out_features
    labels = labels or [f"LABEL_{index}" for index in range(num_classes)]
    if len(labels) != num_classes:
        raise ValueError(f"{len(labels)} class names for a head of {num_classes} classes")
    return {**config, "architectures": ["VideoMAEForVideoClassification"],
            "use_mean_pooling": model.fc_norm is not None, "id2label": dict(enumerate(labels)),
            "label2id": {name: index for index, name in enumerate(labels)}}


def preprocessor_config(image_size: int, short_side: int | None = None) -> dict:
    """VideoMAE's test-time input for ``VideoMAEImageProcessor``: short side to ``short_side`` (the run's
    ``--short_side_size``; default ``image_size``), centre crop ``image_size``, ImageNet's mean and std (the
    processor's own default is 0.5 / 0.5, which these weights were not trained with)."""
    return {"image_processor_type": "VideoMAEImageProcessor", "do_resize": True,
            "size": {"shortest_edge": short_side or image_size},
            "resample": 2, "do_center_crop": True, "crop_size": {"height": image_size, "width": image_size},
            "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
            "image_mean": list(IMAGENET_DEFAULT_MEAN), "image_std": list(IMAGENET_DEFAULT_STD)}


def write_folder(folder: Path, state: dict, config: dict, short_side: int | None = None) -> None:
    """``model.safetensors`` (float32), ``config.json`` and ``preprocessor_config.json`` (:func:`preprocessor_config`),
    written in a temporary folder beside ``folder`` and renamed: a killed export leaves no half folder (and the next
    export to ``folder`` removes what it left). An existing ``folder`` is refused. Permissions follow the umask, as
    for files made the ordinary way."""
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists():
        raise ValueError(f"{folder}: exists; export into a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(glob.escape(folder.name) + ".tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp-", dir=folder.parent))
    try:
        tensors = {key: value.detach().to(torch.float32).contiguous().clone() for key, value in state.items()}
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        processor = preprocessor_config(config["image_size"], short_side)
        (tmp / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        for path in (tmp, *tmp.iterdir()):  # mkdtemp makes 0700, safetensors writes 0600
            path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
