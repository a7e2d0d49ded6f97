"""Loading trunk weights from the files users download: OpenAI TorchScript archives, open_clip
state dicts (.bin / wrapped .pt / .safetensors), EVA-CLIP's own key names, timm, DINOv2 and SAM
checkpoints; resampling; the missing / unexpected table; errors."""
import logging

import pytest
import torch
from open_clip.model import CLIP
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from tests.vlt_common.test_backbone import single_cfg, tiny_cfg
from vlt_common.modeling.backbone import (
    CLIPViTBackbone,
    build_trunk,
    load_trunk_weights,
    read_checkpoint,
)

TINY_TEXT = dict(width=32, layers=1, heads=2, context_length=8, vocab_size=100)


def _tiny_openclip(quick_gelu=False, patch_size=16, image_size=224):
    """A full open_clip CLIP whose image tower matches tiny_cfg("ViT-B-16") (or -L-14)."""
    vision = dict(width=64, layers=2, head_width=32, patch_size=patch_size, image_size=image_size)
    return CLIP(32, vision_cfg=vision, text_cfg=TINY_TEXT, quick_gelu=quick_gelu).eval()


def _randomize(module):
    """Non-trivial values everywhere (zero biases would hide a missing copy)."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.05)
    return module


def _assert_same_tensors(trunk, reference_state):
    state = trunk.state_dict()
    for key, value in state.items():
        assert torch.equal(value, reference_state[key].to(value.dtype)), key


@torch.no_grad()
def test_openai_torchscript_archive(tmp_path):
    model = _randomize(_tiny_openclip(quick_gelu=True))
    image, text = torch.randn(1, 3, 224, 224), torch.zeros(1, 8, dtype=torch.long)
    # How OpenAI released CLIP: a traced TorchScript module saved with torch.jit.save.
    archive = torch.jit.trace_module(
        model, {"forward": (image, text), "encode_image": (image,)}, check_trace=False
    )
    path = tmp_path / "ViT-B-16.pt"
    torch.jit.save(archive, str(path))
    assert read_checkpoint(str(path))[1] == "torchscript"

    backbone = CLIPViTBackbone(single_cfg("ViT-B-16", PRETRAINED=str(path))).eval()
    # OpenAI weights come from a QuickGELU model; the archive selects it without a "-quickgelu"
    # ARCH.
    assert any(isinstance(m, QuickGELU) for m in backbone.trunk.modules())
    x = torch.randn(2, 3, 224, 224)
    expected = model.visual.forward_intermediates(x, indices=1, intermediates_only=True)
    diff = (backbone(x)["last_feat"] - expected["image_intermediates"][0]).abs().max()
    assert diff < 1e-5


@pytest.mark.parametrize("fmt", ["bin", "wrapped_pt", "safetensors", "fp16_pt"])
def test_openclip_state_dict_formats(tmp_path, fmt):
    model = _randomize(_tiny_openclip())
    state = model.state_dict()
    if fmt == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    elif fmt == "wrapped_pt":
        # An open_clip training checkpoint: DDP's "module." prefix under "state_dict".
        path = tmp_path / "epoch_32.pt"
        wrapped = {"module." + k: v for k, v in state.items()}
        torch.save({"epoch": 32, "name": "run", "state_dict": wrapped}, path)
    elif fmt == "safetensors":
        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        path = tmp_path / "half.pt"
        state = {k: v.half() for k, v in state.items()}
        torch.save(state, path)
    trunk = build_trunk("ViT-B-16", embed_dim=64, depth=2, num_heads=2, pretrained=str(path))
    _assert_same_tensors(trunk, {k[len("visual.") :]: v for k, v in state.items()})
    assert trunk.conv1.weight.dtype == torch.float32


def _eva_clip_native_keys(trunk_state):
    """timm Eva names -> EVA-CLIP's own names (the inverse of timm's eva.checkpoint_filter_fn)."""
    renames = [
        ("attn.q_proj.bias", "attn.q_bias"),
        ("attn.v_proj.bias", "attn.v_bias"),
        ("attn.norm.", "attn.inner_attn_ln."),
        ("mlp.fc1_g.", "mlp.w1."),
        ("mlp.fc1_x.", "mlp.w2."),
        ("mlp.fc2.", "mlp.w3."),
        ("mlp.norm.", "mlp.ffn_ln."),
    ]
    out = {}
    for key, value in trunk_state.items():
        for old, new in renames:
            key = key.replace(old, new)
        out["visual." + key] = value
    return out


def test_eva_clip_checkpoint_with_eva_key_names(tmp_path):
    reference = build_trunk("EVA02-B-16", embed_dim=64, depth=2, num_heads=2)
    _randomize(reference)
    state = _eva_clip_native_keys(reference.state_dict())
    assert "visual.blocks.0.attn.q_bias" in state and "visual.blocks.0.mlp.w3.weight" in state
    # The rest of an EVA02_CLIP_*_s*B.pt: head, final norm, rotary buffers and the text tower.
    state.update(
        {
            "visual.head.weight": torch.randn(32, 64),
            "visual.norm.weight": torch.ones(64),
            "visual.rope.freqs_cos": torch.randn(196, 32),
            "visual.blocks.0.attn.rope.freqs_sin": torch.randn(196, 32),
            "text.token_embedding.weight": torch.randn(100, 32),
            "logit_scale": torch.tensor(4.6),
        }
    )
    path = tmp_path / "EVA02_CLIP_B_psz16_s8B.pt"
    torch.save(state, path)
    trunk = build_trunk("EVA02-B-16", embed_dim=64, depth=2, num_heads=2)
    report = load_trunk_weights(trunk, str(path))
    _assert_same_tensors(trunk, reference.state_dict())
    assert not report.missing and not report.unexpected
    assert set(report.skipped_head) == {"head.weight", "norm.weight"}


def test_timm_safetensors_and_dinov2_original(tmp_path):
    arch = "timm:vit_large_patch14_reg4_dinov2"
    reference = _randomize(build_trunk(arch, embed_dim=64, depth=2, num_heads=2, patch_size=0))
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    trunk = build_trunk(arch, embed_dim=64, depth=2, num_heads=2, patch_size=0)
    load_trunk_weights(trunk, str(path))
    _assert_same_tensors(trunk, reference.state_dict())

    # Meta's own DINOv2 release: a mask token and, for the register models, register tokens
    # stored apart with the class token's position embedding folded in by timm.
    plain = "timm:vit_large_patch14_dinov2"
    reference = _randomize(build_trunk(plain, embed_dim=64, depth=2, num_heads=2, patch_size=0))
    original = dict(reference.state_dict(), mask_token=torch.randn(1, 64))
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(original, path)
    trunk = build_trunk(plain, embed_dim=64, depth=2, num_heads=2, patch_size=0)
    report = load_trunk_weights(trunk, str(path))
    _assert_same_tensors(trunk, reference.state_dict())
    assert not report.unexpected


def test_sam_original_checkpoint(tmp_path):
    arch = "timm:samvit_base_patch16"
    reference = _randomize(build_trunk(arch, embed_dim=64, depth=2, num_heads=2))
    original = {
        "image_encoder." + k.replace("mlp.fc", "mlp.lin"): v
        for k, v in reference.state_dict().items()
    }
    original["image_encoder.neck.0.weight"] = torch.randn(256, 64, 1, 1)
    original["prompt_encoder.point_embeddings.0.weight"] = torch.randn(1, 256)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(original, path)
    trunk = build_trunk(arch, embed_dim=64, depth=2, num_heads=2)
    report = load_trunk_weights(trunk, str(path))
    _assert_same_tensors(trunk, reference.state_dict())
    assert report.skipped_head == ["neck.0.weight"] and not report.unexpected


@pytest.mark.parametrize("arch", ["ViT-L-14", "EVA02-L-14"])
def test_patch14_checkpoint_resampled_to_patch16(tmp_path, arch):
    source = _randomize(build_trunk(arch, embed_dim=64, depth=2, num_heads=2, patch_size=0))
    state = source.state_dict()
    prefix = "visual." if arch == "ViT-L-14" else "visual.trunk."
    path = tmp_path / "patch14.bin"
    torch.save({prefix + k: v for k, v in state.items()}, path)
    trunk = build_trunk(
        arch, embed_dim=64, depth=2, num_heads=2, patch_size=16, pretrained=str(path)
    )
    kernel_key = "conv1.weight" if arch == "ViT-L-14" else "patch_embed.proj.weight"
    pos_key = "positional_embedding" if arch == "ViT-L-14" else "pos_embed"
    loaded = trunk.state_dict()
    assert loaded[kernel_key].shape[-2:] == (16, 16)
    assert torch.allclose(loaded[kernel_key], resample_patch_embed(state[kernel_key], [16, 16]))
    # Same 16 x 16 position grid as at pre-training: loaded unchanged.
    assert torch.equal(loaded[pos_key], state[pos_key])
    for key in state:
        if key not in (kernel_key,):
            assert torch.equal(loaded[key], state[key]), key


def test_position_embeddings_of_another_grid_are_resampled(tmp_path):
    """An open_clip checkpoint at 336 px (21 x 21 grid) into the 224-px ViT-B-16 trunk (14 x 14)."""
    model = _randomize(_tiny_openclip(image_size=336))
    path = tmp_path / "vit_b_16_336.bin"
    torch.save(model.state_dict(), path)
    trunk = build_trunk("ViT-B-16", embed_dim=64, depth=2, num_heads=2, pretrained=str(path))
    expected = resample_abs_pos_embed(
        model.visual.positional_embedding[None], new_size=[14, 14], old_size=[21, 21]
    )[0]
    assert torch.allclose(trunk.positional_embedding, expected)


def test_missing_and_unexpected_keys_are_tabulated(tmp_path, caplog):
    model = _randomize(_tiny_openclip())
    state = model.state_dict()
    del state["visual.transformer.resblocks.1.mlp.c_fc.bias"]
    state["visual.extra_token"] = torch.randn(3, 64)
    path = tmp_path / "partial.bin"
    torch.save(state, path)
    trunk = build_trunk("ViT-B-16", embed_dim=64, depth=2, num_heads=2)
    with caplog.at_level(logging.WARNING, logger="vlt_common.modeling.backbone.weights"):
        report = load_trunk_weights(trunk, str(path))
    assert report.missing == ["transformer.resblocks.1.mlp.c_fc.bias"]
    assert report.unexpected == ["extra_token"]
    assert set(report.skipped_head) == {"proj", "ln_post.weight", "ln_post.bias"}
    table = caplog.text
    assert "| missing (random init)" in table and "transformer.resblocks.1.mlp.c_fc.bias" in table
    assert "| unexpected (ignored)" in table and "(3, 64)" in table


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    model = _randomize(_tiny_openclip())
    path = tmp_path / "width64.bin"
    torch.save(model.state_dict(), path)
    cfg = tiny_cfg("ViT-B-16", EMBED_DIM=32, PRETRAINED=str(path))
    with pytest.raises(ValueError, match=r"class_embedding: checkpoint \(64,\) vs model \(32,\)"):
        CLIPViTBackbone(cfg)


@pytest.mark.parametrize(
    "arch, expected",
    [
        ("ViT-B-16", "expected the OpenAI CLIP ViT-B-16.pt or an open_clip checkpoint"),
        ("EVA02-L-14", "expected the EVA-CLIP EVA02_CLIP_"),
        ("timm:vit_large_patch14_dinov2", "timm model vit_large_patch14_dinov2"),
    ],
)
def test_missing_file_names_path_and_expected_file(tmp_path, arch, expected):
    path = tmp_path / "weights" / "missing.pt"
    with pytest.raises(FileNotFoundError, match=expected) as info:
        CLIPViTBackbone(tiny_cfg(arch, PRETRAINED=str(path)))
    assert str(path) in str(info.value)


def test_unreadable_or_unrelated_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(ValueError, match="Cannot read .*garbage.pt"):
        read_checkpoint(str(garbage))
    no_tensors = tmp_path / "no_tensors.pt"
    torch.save({"epoch": 3, "args": {"lr": 0.1}}, no_tensors)
    with pytest.raises(ValueError, match="No state dict in .*no_tensors.pt"):
        read_checkpoint(str(no_tensors))
    unrelated = tmp_path / "resnet.pt"
    torch.save({"layer1.0.conv1.weight": torch.randn(4, 3, 3, 3)}, unrelated)
    trunk = build_trunk("ViT-B-16", embed_dim=64, depth=2, num_heads=2)
    with pytest.raises(ValueError, match="No tensor of .*resnet.pt.* matches the open_clip ViT"):
        load_trunk_weights(trunk, str(unrelated))
