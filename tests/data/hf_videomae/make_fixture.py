"""Writes the Hugging Face VideoMAE fixture that tests/test_hf_checkpoints.py loads: two tiny models built and run
by HF transformers (pretraining and classification), saved as the Hub's MCG-NJU/videomae-* folders are, and their
outputs on one fixed input. Needs transformers, which the project does not depend on; rerun only to renew it:

    pip install --target /tmp/hfpkgs transformers tokenizers regex --no-deps
    PYTHONPATH=/tmp/hfpkgs .venv/bin/python tests/data/hf_videomae/make_fixture.py

``pretraining/`` is what ``save_pretrained`` writes: ``model.safetensors`` with the Hub's names (``q_bias`` /
``v_bias``, as in the converted MCG-NJU checkpoints). ``classification/`` is ``torch.save(model.state_dict())`` as a
``pytorch_model.bin``: the names transformers 5 uses in memory (``query.bias`` / ``value.bias``).
"""

import json
from pathlib import Path

import torch
import transformers
from transformers import VideoMAEConfig, VideoMAEForPreTraining, VideoMAEForVideoClassification

HERE = Path(__file__).resolve().parent
TINY = dict(image_size=32, patch_size=8, num_channels=3, num_frames=4, tubelet_size=2, hidden_size=32,
            num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, decoder_hidden_size=16,
            decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
            layer_norm_eps=1e-6, norm_pix_loss=True)


def randomise(model: torch.nn.Module) -> None:
    """Every weight random, biases and norms included, so that a weight mapped to the wrong place shows."""
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.2)


def main() -> None:
    torch.manual_seed(0)
    pixel_values = torch.randn(2, 4, 3, 32, 32)  # HF's layout: (B, T, C, H, W)
    num_tokens = 2 * 4 * 4
    mask = torch.zeros(2, num_tokens, dtype=torch.bool)
    for row in mask:
        row[torch.randperm(num_tokens)[:24]] = True

    pretraining = VideoMAEForPreTraining(VideoMAEConfig(**TINY, use_mean_pooling=False)).eval()
    randomise(pretraining)
    pretraining.save_pretrained(HERE / "pretraining")
    with torch.no_grad():
        pretraining_logits = pretraining(pixel_values, bool_masked_pos=mask).logits

    classification = VideoMAEForVideoClassification(VideoMAEConfig(**TINY, use_mean_pooling=True, num_labels=5))
    classification.eval()
    randomise(classification)
    folder = HERE / "classification"
    folder.mkdir(exist_ok=True)
    classification.config.to_json_file(folder / "config.json")
    torch.save(classification.state_dict(), folder / "pytorch_model.bin")
    with torch.no_grad():
        classification_logits = classification(pixel_values).logits

    torch.save({"pixel_values": pixel_values, "bool_masked_pos": mask, "pretraining_logits": pretraining_logits,
                "classification_logits": classification_logits}, HERE / "outputs.pt")
    (HERE / "versions.json").write_text(json.dumps({"transformers": transformers.__version__,
                                                    "torch": torch.__version__}, indent=1) + "\n")


if __name__ == "__main__":
    main()
