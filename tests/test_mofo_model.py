"""The MOFO fine-tuning model: batched multi-cross-attention against a per-sample reference, empty inside or
outside sets, the token split rule, per-frame boxes, parameter budget and checkpoint compatibility."""

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import modeling_finetune  # noqa: F401  (registers the models)
from masking_generator import inside_box_tokens
from modeling_finetune import tubelet_boxes

NAN_BOX = [float("nan")] * 4


def mini_model(**kwargs):
    torch.manual_seed(0)
    model = timm.create_model("vit_mini_patch16_224_mofo", num_classes=5, img_size=64, all_frames=4, **kwargs)
    with torch.no_grad():  # a non-trivial head so that logits differ clearly between inputs
        model.head.weight.normal_(0, 0.5)
    return model.eval()


def reference_cross_block(block, queries: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """One pre-norm block where ``queries`` (n, C) attend to ``keys`` (m, C), written out step by step."""
    dim = queries.shape[-1]
    heads = block.attn.num_heads
    head_dim = dim // heads
    weight = block.attn.qkv.weight
    hq, hk = block.norm1(queries), block.norm1(keys)
    q = F.linear(hq, weight[:dim], block.attn.q_bias).reshape(-1, heads, head_dim).transpose(0, 1)
    k = F.linear(hk, weight[dim:2 * dim]).reshape(-1, heads, head_dim).transpose(0, 1)
    v = F.linear(hk, weight[2 * dim:], block.attn.v_bias).reshape(-1, heads, head_dim).transpose(0, 1)
    attention = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
    out = block.attn.proj((attention @ v).transpose(0, 1).reshape(-1, dim))
    x = queries + out
    return x + block.mlp(block.norm2(x))


def reference_logits(model, video: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The MOFO head for one sample, with explicit token sets instead of attention masks."""
    tokens = model.forward_tokens(video[None])[0]
    inside = model.inside_tokens(box[None])[0]
    for layer in model.mca:
        x_in, x_out = tokens[inside], tokens[~inside]
        new = tokens.clone()
        if len(x_in):
            new[inside] = reference_cross_block(layer.inner, x_in, x_out if len(x_out) else x_in)
        if layer.outer is not None and len(x_out):
            new[~inside] = reference_cross_block(layer.outer, x_out, x_in if len(x_in) else x_out)
        tokens = new
    mean_all = tokens.mean(0)
    in_mean = tokens[inside].mean(0) if inside.any() else mean_all
    out_mean = tokens[~inside].mean(0) if (~inside).any() else mean_all
    return model.head(model.fc_norm(model.fuse(torch.cat([in_mean, out_mean]))))


@pytest.mark.parametrize("mode", ["both", "inner"])
def test_batched_mca_equals_the_per_sample_reference(mode):
    model = mini_model(mca_mode=mode, mca_depth=2)
    torch.manual_seed(1)
    videos = torch.randn(5, 3, 4, 64, 64)
    boxes = torch.tensor([
        [0.1, 0.2, 0.6, 0.7],  # ordinary
        [0.0, 0.0, 1.0, 1.0],  # everything inside: empty outside set
        NAN_BOX,  # no box: empty inside set
        [0.4, 0.4, 0.45, 0.45],  # tiny: only the centre patch
        [0.0, 0.0, 0.3, 1.0],  # a left strip
    ])
    with torch.no_grad():
        batched = model(videos, boxes)
        reference = torch.stack([reference_logits(model, v, b) for v, b in zip(videos, boxes, strict=True)])
    assert torch.isfinite(batched).all()
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(batched[0], batched[1])


def test_inside_tokens_follow_the_masking_rule_per_time_slice():
    model = mini_model()
    box = torch.tensor([[0.0, 0.0, 0.5, 0.5]])
    inside = model.inside_tokens(box)
    grid = model.patch_embed.grid_size
    expected = inside_box_tokens(box, grid[1:]).repeat(1, grid[0])
    assert inside.shape == (1, math.prod(grid)) and torch.equal(inside, expected)
    # Per-frame boxes: slice 0 (frames 0-1) on the left, slice 1 (frames 2-3) on the right.
    per_frame = torch.tensor([[[0, 0, 0.4, 1.0], [0, 0, 0.2, 1.0], [0.6, 0, 1.0, 1.0], NAN_BOX]])
    inside = model.inside_tokens(per_frame).reshape(grid)
    assert inside[0, :, 0].all() and not inside[0, :, -1].any()
    assert inside[1, :, -1].all() and not inside[1, :, 0].any()


def test_tubelet_boxes_take_the_union_of_each_tubelets_frames():
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.2, 0.1, 0.5, 0.3], NAN_BOX, NAN_BOX]])
    per_slice = tubelet_boxes(boxes, 2)
    torch.testing.assert_close(per_slice[0, 0], torch.tensor([0.1, 0.1, 0.5, 0.4]))
    assert torch.isnan(per_slice[0, 1]).all()
    assert tubelet_boxes(torch.tensor([[0.1, 0.2, 0.3, 0.4]]), 3).shape == (1, 3, 4)
    with pytest.raises(ValueError, match="do not split"):
        tubelet_boxes(torch.zeros(1, 5, 4), 2)


def test_the_box_changes_the_prediction_and_gradients_reach_the_mca():
    model = mini_model().train()
    video = torch.randn(2, 3, 4, 64, 64)
    a = model(video, torch.tensor([[0.0, 0.0, 0.5, 0.5]] * 2))
    b = model(video, torch.tensor([[0.5, 0.5, 1.0, 1.0]] * 2))
    assert not torch.allclose(a, b)
    a.sum().backward()
    assert model.mca[0].inner.attn.qkv.weight.grad.abs().sum() > 0
    assert model.mca[0].outer.attn.qkv.weight.grad.abs().sum() > 0
    assert model.fuse.weight.grad.abs().sum() > 0


def test_vit_b_mofo_parameter_budget():
    """The paper reports 102 M for ViT-B + MCA (VideoMAE ViT-B: 87 M); the issue asks for 100-104 M."""
    with torch.device("meta"):
        mofo = timm.create_model("vit_base_patch16_224_mofo", num_classes=174)
        plain = timm.create_model("vit_base_patch16_224", num_classes=174)
    count = sum(p.numel() for p in mofo.parameters())
    assert sum(p.numel() for p in plain.parameters()) == 86_361_006
    assert 100e6 <= count <= 104e6


def test_videomae_finetuned_weights_load_into_the_mofo_model():
    plain = timm.create_model("vit_mini_patch16_224", num_classes=5, img_size=64, all_frames=4)
    mofo = mini_model()
    result = mofo.load_state_dict(plain.state_dict(), strict=False)
    assert not result.unexpected_keys
    assert result.missing_keys and all(k.startswith(("mca.", "fuse.")) for k in result.missing_keys)


RELEASE = {"mca_mode": "inner", "mca_depth": 1, "mca_heads": 3, "mca_pool": "inside", "mca_tokens": "overlap"}


def test_overlap_rule_counts_any_shared_pixel_of_either_frame():
    """The MOFO release's rule, with its pixel volume: ones inside each frame's box, a token is in when any pixel of
    its 2x16x16 tube is one."""
    model = mini_model(**RELEASE)
    grid = model.patch_embed.grid_size
    boxes_px = [[(0, 0, 16, 16), (40, 8, 41, 9)],  # on the patch border: patch 1 shares no pixel; one pixel
                [(20, 30, 50, 64), None],  # a missing frame box
                [(0, 0, 64, 64), (10, 10, 20, 20)]]
    boxes = torch.tensor([[[c / 64 for c in box] if box else NAN_BOX for box in frame_pair] * 2
                          for frame_pair in boxes_px])  # (3, 4 frames, 4): slice 1 repeats slice 0
    inside = model.inside_tokens(boxes).reshape(3, *grid)
    for sample, frame_pair in enumerate(boxes_px):
        volume = torch.zeros(2, 64, 64, dtype=torch.bool)
        for frame, box in enumerate(frame_pair):
            if box:
                x1, y1, x2, y2 = box
                volume[frame, y1:y2, x1:x2] = True
        expected = volume.reshape(2, 4, 16, 4, 16).any(dim=(0, 2, 4))
        assert torch.equal(inside[sample, 0], expected) and torch.equal(inside[sample, 1], expected)
    assert inside[0, 0].sum() == 2 and inside[0, 0, 0, 0] and inside[0, 0, 0, 2]
    one_box = torch.tensor([[0.3, 0.3, 0.32, 0.9]])  # one box per clip: every slice
    assert torch.equal(model.inside_tokens(one_box), model.inside_tokens(one_box[:, None].expand(-1, 4, -1)))
    assert not model.inside_tokens(torch.tensor([[0.3, 0.3, 0.3, 0.6]])).any()  # empty: no pixel
    with pytest.raises(ValueError, match="outside block would never be used"):
        mini_model(mca_pool="inside")


def test_overlap_rule_on_every_patch_border_at_224():
    """Integer 224-px boxes against the release's pixel volume, edges on and next to the 16-px borders (float32
    16/224 is not exactly one patch)."""
    model = timm.create_model("vit_mini_patch16_224_mofo", num_classes=5, img_size=224, all_frames=2, **RELEASE)
    edges = [0, 1, 15, 16, 17, 32, 47, 48, 64, 100, 112, 208, 223, 224]
    boxes_px = [(x1, y1, x2, y2) for x1 in edges for x2 in edges if x2 > x1
                for y1, y2 in ((16, 48), (0, 224), (47, 49))]
    boxes = torch.tensor(boxes_px, dtype=torch.float32) / 224
    inside = model.inside_tokens(boxes).reshape(len(boxes_px), 14, 14)
    for index, (x1, y1, x2, y2) in enumerate(boxes_px):
        volume = torch.zeros(224, 224, dtype=torch.bool)
        volume[y1:y2, x1:x2] = True
        assert torch.equal(inside[index], volume.reshape(14, 16, 14, 16).any(dim=(1, 3))), (x1, y1, x2, y2)


def release_head_state(model) -> dict:
    """The MOFO release's fine-tuned layout for the mini encoder: VideoMAE's encoder and classifier keys, and its
    head (local_MCA with separate q / kv weights, the unused global_MCA, patch_yab and soft_att_*), random."""
    torch.manual_seed(3)
    dim = model.embed_dim
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("mca.")}
    for name in ("local_MCA.0", "global_MCA.0"):
        state.update({f"{name}.norm1.weight": 1 + 0.1 * torch.randn(dim), f"{name}.norm1.bias": 0.1 * torch.randn(dim),
                      f"{name}.attn.q.weight": 0.2 * torch.randn(dim, dim),
                      f"{name}.attn.kv.weight": 0.2 * torch.randn(2 * dim, dim),
                      f"{name}.attn.q_bias": 0.1 * torch.randn(dim), f"{name}.attn.v_bias": 0.1 * torch.randn(dim),
                      f"{name}.attn.proj.weight": 0.2 * torch.randn(dim, dim),
                      f"{name}.attn.proj.bias": 0.1 * torch.randn(dim),
                      f"{name}.norm2.weight": 1 + 0.1 * torch.randn(dim), f"{name}.norm2.bias": 0.1 * torch.randn(dim),
                      f"{name}.mlp.fc1.weight": 0.2 * torch.randn(4 * dim, dim),
                      f"{name}.mlp.fc1.bias": 0.1 * torch.randn(4 * dim),
                      f"{name}.mlp.fc2.weight": 0.2 * torch.randn(dim, 4 * dim),
                      f"{name}.mlp.fc2.bias": 0.1 * torch.randn(dim)})
    state.update({"patch_yab.weight": torch.ones(dim, 3, 2, 16, 16), "patch_yab.bias": torch.zeros(dim),
                  "soft_att_local.weight": torch.randn(dim), "soft_att_local.b": torch.zeros(1),
                  "soft_att_global.weight": torch.randn(dim), "soft_att_global.b": torch.zeros(1)})
    return state


def release_logits(model, state: dict, video: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """The release's VisionTransformer_BB_focused forward (fusing_method MCA) for one sample, from its own weights:
    the in-box tokens attend to the out-of-box ones (3 heads, one shared pre-norm), then the in-box mean."""
    tokens = model.forward_tokens(video[None])[0]
    inside = model.inside_tokens(box[None])[0]
    if not inside.any():
        return model.head(model.fc_norm(tokens.mean(0)))
    w = {k.removeprefix("local_MCA.0."): v for k, v in state.items() if k.startswith("local_MCA.0.")}
    x, y = tokens[inside], tokens[~inside] if (~inside).any() else tokens[inside]
    norm = lambda t, name: F.layer_norm(t, t.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], eps=1e-6)  # noqa: E731
    heads, dim = 3, x.shape[-1]
    q = (norm(x, "norm1") @ w["attn.q.weight"].T + w["attn.q_bias"]).reshape(-1, heads, dim // heads).transpose(0, 1)
    kv_bias = torch.cat([torch.zeros(dim), w["attn.v_bias"]])
    k, v = (norm(y, "norm1") @ w["attn.kv.weight"].T + kv_bias).reshape(-1, 2, heads, dim // heads).permute(1, 2, 0, 3)
    attention = torch.softmax(q @ k.transpose(-1, -2) * (dim // heads) ** -0.5, dim=-1)
    x = x + (attention @ v).transpose(0, 1).reshape(-1, dim) @ w["attn.proj.weight"].T + w["attn.proj.bias"]
    hidden = F.gelu(norm(x, "norm2") @ w["mlp.fc1.weight"].T + w["mlp.fc1.bias"])
    x = x + hidden @ w["mlp.fc2.weight"].T + w["mlp.fc2.bias"]
    return model.head(model.fc_norm(x.mean(0)))


def test_release_checkpoints_run_as_the_release_head_does():
    import utils

    model = mini_model(**RELEASE)
    assert model.mca_settings() == RELEASE == utils.RELEASE_MCA_SETTINGS and model.fuse is None
    state = release_head_state(model)
    converted = utils.release_mca_state(state)
    assert not any(k.startswith(("local_MCA", "global_MCA", "patch_yab", "soft_att")) for k in converted)
    model.load_state_dict(converted, strict=True)
    torch.manual_seed(4)
    videos = torch.randn(4, 3, 4, 64, 64)
    boxes = torch.tensor([[0.1, 0.2, 0.6, 0.7], [0.0, 0.0, 1.0, 1.0], NAN_BOX, [0.4, 0.4, 0.41, 0.41]])
    with torch.no_grad():
        batched = model(videos, boxes)
        reference = torch.stack([release_logits(model, state, v, b) for v, b in zip(videos, boxes, strict=True)])
    torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-5)


def test_release_checkpoint_loading_checks_the_head(tmp_path, capsys):
    import utils

    release_model = mini_model(**RELEASE)
    path = tmp_path / "mp_rank_00_model_states.pt"
    torch.save({"module": release_head_state(release_model)}, path)  # a DeepSpeed fine-tuning checkpoint
    utils.load_finetune_checkpoint(release_model, path, require_all=True)
    assert "the MOFO release's head, renamed" in capsys.readouterr().out
    torch.testing.assert_close(release_model.mca[0].inner.attn.q_bias, release_head_state(release_model)[
        "local_MCA.0.attn.q_bias"])
    default = mini_model()
    with pytest.raises(ValueError, match="--mca_mode inner --mca_depth 1 --mca_heads 3 --mca_pool inside"):
        utils.load_finetune_checkpoint(default, path, require_all=True)
    before = default.mca[0].inner.attn.qkv.weight.clone()
    utils.load_finetune_checkpoint(default, path)  # fine-tuning from it: the encoder and classifier only
    assert "only its encoder and classifier are loaded" in capsys.readouterr().out
    torch.testing.assert_close(default.mca[0].inner.attn.qkv.weight, before)
    torch.testing.assert_close(default.blocks[0].attn.qkv.weight, release_model.blocks[0].attn.qkv.weight)


def test_eval_refuses_weights_that_would_test_another_model(tmp_path):
    """--eval (require_all) tests a checkpoint in the model it was trained in: saved head settings that leave no
    trace in the weights must match, no weight may go unused, and a classifier of another size is named."""
    import utils

    trained = mini_model()
    path = tmp_path / "checkpoint-0.pth"
    torch.save({"model": trained.state_dict(), "args": {"mca_tokens": "centre", "mca_heads": None}}, path)
    utils.load_finetune_checkpoint(mini_model(), path, require_all=True)
    with pytest.raises(ValueError, match="trained with --mca_tokens centre: --eval it with the same head"):
        utils.load_finetune_checkpoint(mini_model(mca_tokens="overlap"), path, require_all=True)
    utils.load_finetune_checkpoint(mini_model(mca_tokens="overlap"), path)  # fine-tuning on from it is allowed
    with pytest.raises(ValueError, match="trained with --mca_heads 3"):  # saved None: the encoder's 3 heads
        utils.load_finetune_checkpoint(mini_model(mca_heads=1), path, require_all=True)
    plain = timm.create_model("vit_mini_patch16_224", num_classes=5, img_size=64, all_frames=4)
    with pytest.raises(ValueError, match=r"weights have no place in VisionTransformer \(e\.g\. mca\.0\."):
        utils.load_finetune_checkpoint(plain, path, require_all=True)
    with pytest.raises(ValueError, match="none of the keys 'model_ema' holds a state dict"):  # a one-line error
        utils.load_finetune_checkpoint(mini_model(), path, model_key="model_ema", require_all=True)
    other_size = timm.create_model("vit_mini_patch16_224_mofo", num_classes=7, img_size=64, all_frames=4)
    with pytest.raises(ValueError, match=r"its head.weight \(5, 96\), head.bias \(5,\) is another size"):
        utils.load_finetune_checkpoint(other_size, path, require_all=True)
