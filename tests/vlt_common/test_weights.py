"""Loading trunk weights from the files users download: OpenAI TorchScript archives, open_clip
state dicts (.bin / wrapped .pt / .safetensors), EVA-CLIP's own key names, timm, DINOv2 and SAM
checkpoints; resampling; the missing / unexpected table; errors."""
import logging

import pytest
import torch
import torch.nn.functional as F
from open_clip.model import CLIP
from open_clip.transformer import QuickGELU
from safetensors.torch import save_file
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from tests.vlt_common.tiny_backbone import single_cfg, tiny_cfg
from vlt_common.modeling.backbone import (
    CLIPViTBackbone,
    build_trunk,
    get_trunk_adapter,
    load_trunk_state_dict,
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


def load_trunk_weights(trunk, path):
    """What build_trunk does with MODEL.VLT_BACKBONE.PRETRAINED, on an existing trunk."""
    return load_trunk_state_dict(trunk, read_checkpoint(str(path))[0], source=str(path))


def _assert_same_tensors(trunk, reference_state):
    """Every tensor but the pooling head's (never loaded; the backbone removes it)."""
    adapter = get_trunk_adapter(trunk)
    state = trunk.state_dict()
    for key, value in state.items():
        if not adapter.is_head_key(key):
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
    # The reference trunk still holds its final norm (the backbone removes it), so the file does.
    assert set(report.skipped_head) == {"head.weight", "norm.weight", "norm.bias"}


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
    # The reference trunk still holds SAM's neck (the backbone removes it), so the file does.
    assert "neck.0.weight" in report.skipped_head and not report.unexpected
    assert all(k.startswith("neck.") for k in report.skipped_head)


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
    adapter = get_trunk_adapter(trunk)
    for key in state:
        if key != kernel_key and not adapter.is_head_key(key):
            assert torch.equal(loaded[key], state[key]), key


def test_position_embeddings_of_another_grid_are_resampled(tmp_path):
    """An open_clip checkpoint at 336 px (21 x 21 grid) into the 224-px ViT-B-16 trunk (14 x 14)."""
    model = _randomize(_tiny_openclip(image_size=336))
    path = tmp_path / "vit_b_16_336.bin"
    torch.save(model.state_dict(), path)
    trunk = build_trunk("ViT-B-16", embed_dim=64, depth=2, num_heads=2, pretrained=str(path))
    # Resized once at load time, bicubic without antialias (Rein's conversion of DINOv2's grid).
    stored = model.visual.positional_embedding
    grid = stored[1:].reshape(1, 21, 21, 64).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(14, 14), mode="bicubic", align_corners=False)
    expected = torch.cat([stored[:1], grid.permute(0, 2, 3, 1).reshape(196, 64)])
    assert torch.allclose(trunk.positional_embedding, expected, atol=1e-6)
    antialiased = resample_abs_pos_embed(stored[None], new_size=[14, 14], old_size=[21, 21])[0]
    assert not torch.allclose(trunk.positional_embedding, antialiased, atol=1e-4)


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


def _dinov2_file(tmp_path, dtype=torch.float32):
    """A tiny DINOv2 release file (37 x 37 position grid, 14 x 14 kernel) and its tensors."""
    arch = "timm:vit_large_patch14_dinov2"
    source = _randomize(build_trunk(arch, embed_dim=64, depth=2, num_heads=2, patch_size=0))
    state = {k: v.to(dtype) for k, v in source.state_dict().items()}
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(state, path)
    return arch, path, state


def test_rein_dinov2_conversion_interpolates_kernel_and_grid(tmp_path):
    """PATCH_RESAMPLE "interpolate" + POS_EMBED_GRID [32, 32]: Rein's convert_dinov2 formula,
    bicubic interpolation of the 14x14 kernel and of the 37x37 grid, no antialias."""
    arch, path, state = _dinov2_file(tmp_path)
    trunk = build_trunk(
        arch,
        embed_dim=64,
        depth=2,
        num_heads=2,
        pretrained=str(path),
        patch_resample="interpolate",
        pos_embed_grid=[32, 32],
    )
    kernel = state["patch_embed.proj.weight"]
    expected = F.interpolate(kernel, size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.allclose(trunk.patch_embed.proj.weight, expected, atol=1e-7)
    # Entry (0, 0) by hand: output pixel 0 samples the input at (0 + 0.5) * 14 / 16 - 0.5 =
    # -0.0625 on both axes; bicubic (a = -0.75) over the taps -2, -1, 0, 1 (clamped to 0, 0, 0, 1)
    # at distances 1.9375, 0.9375, 0.0625, 1.0625.

    def cubic(x):
        x = abs(x)
        if x <= 1:
            return 1.25 * x**3 - 2.25 * x**2 + 1
        return -0.75 * x**3 + 3.75 * x**2 - 6 * x + 3

    w = [cubic(d) for d in (1.9375, 0.9375, 0.0625, 1.0625)]
    taps, k = [0, 0, 0, 1], kernel[0, 0].double()
    by_hand = sum(w[i] * w[j] * k[taps[i], taps[j]] for i in range(4) for j in range(4))
    assert abs(trunk.patch_embed.proj.weight[0, 0, 0, 0].item() - float(by_hand)) < 1e-6
    # Tokens of a constant patch grow with the kernel's sum: ~(16 / 14) ** 2 = 1.31 x the
    # original, where timm's pseudo-inverse resampling keeps them.
    pinv = resample_patch_embed(kernel, [16, 16])
    ratio = (expected.sum((1, 2, 3)) / pinv.sum((1, 2, 3))).median()
    assert 1.2 < ratio < 1.4
    grid = state["pos_embed"][:, 1:].reshape(1, 37, 37, 64).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    pos = torch.cat([state["pos_embed"][:, :1], grid.permute(0, 2, 3, 1).reshape(1, 1024, 64)], 1)
    assert trunk.pos_embed.shape == (1, 1 + 32 * 32, 64)
    assert torch.allclose(trunk.pos_embed, pos, atol=1e-7)
    # At a 512 px input the stored 32 x 32 grid is used as it is.
    tokens, _ = get_trunk_adapter(trunk).embed(trunk, torch.zeros(1, 3, 512, 512))
    patch_bias = trunk.patch_embed.proj.bias
    assert torch.allclose(tokens[0, 1:], patch_bias + pos[0, 1:], atol=1e-6)


def test_rein_conversion_keys_reach_the_builder(tmp_path):
    arch, path, state = _dinov2_file(tmp_path)
    cfg = single_cfg(arch, PRETRAINED=str(path), PATCH_RESAMPLE="interpolate")
    cfg.MODEL.VLT_BACKBONE.POS_EMBED_GRID = [32, 32]
    backbone = CLIPViTBackbone(cfg)
    kernel = F.interpolate(
        state["patch_embed.proj.weight"], size=(16, 16), mode="bicubic", align_corners=False
    )
    assert torch.allclose(backbone.trunk.patch_embed.proj.weight, kernel, atol=1e-7)
    assert backbone.trunk.pos_embed.shape[1] == 1 + 32 * 32
    with pytest.raises(ValueError, match="PATCH_RESAMPLE"):
        CLIPViTBackbone(single_cfg(arch, PATCH_RESAMPLE="nearest"))


@pytest.mark.parametrize("arch", ["EVA02-L-14", "timm:vit_large_patch14_dinov2"])
def test_fp16_kernel_resampled_in_fp32(tmp_path, arch):
    """An fp16 file's 14x14 kernel is cast to fp32 before it is resampled to 16x16."""
    source = _randomize(build_trunk(arch, embed_dim=64, depth=2, num_heads=2, patch_size=0))
    key = "patch_embed.proj.weight"
    half = {k: v.half() for k, v in source.state_dict().items()}
    prefix = "visual.trunk." if arch.startswith("EVA") else ""
    path = tmp_path / "half.pt"
    torch.save({prefix + k: v for k, v in half.items()}, path)
    trunk = build_trunk(arch, embed_dim=64, depth=2, num_heads=2, pretrained=str(path))
    fp32_first = resample_patch_embed(half[key].float(), [16, 16])
    assert torch.equal(trunk.state_dict()[key], fp32_first)
    assert (resample_patch_embed(half[key], [16, 16]).float() - fp32_first).abs().max() > 0


@pytest.mark.parametrize(
    "name, arch, warned",
    [
        ("vit_base_patch16_clip_224.openai/open_clip_pytorch_model.bin", "ViT-B-16", True),
        ("laion2b_s34b_b88k/open_clip_pytorch_model.bin", "ViT-B-16", False),
        ("openai/open_clip_pytorch_model.bin", "ViT-B-16-quickgelu", False),
    ],
)
def test_openai_open_clip_file_under_gelu_arch_warns(tmp_path, caplog, name, arch, warned):
    path = tmp_path / name
    path.parent.mkdir(parents=True)
    torch.save(_tiny_openclip(quick_gelu=True).state_dict(), path)
    with caplog.at_level(logging.WARNING, logger="vlt_common.modeling.backbone.trunk_builder"):
        build_trunk(arch, embed_dim=64, depth=2, num_heads=2, pretrained=str(path))
    assert ("QuickGELU" in caplog.text and f"'{arch}-quickgelu'" in caplog.text) == warned


def test_directory_and_truncated_files(tmp_path):
    folder = tmp_path / "ViT-B-16"
    folder.mkdir()
    with pytest.raises(IsADirectoryError, match=f"'{folder}' is a directory"):
        read_checkpoint(str(folder))
    state = {k: v.contiguous() for k, v in _tiny_openclip().state_dict().items()}
    whole = tmp_path / "whole.safetensors"
    save_file(state, str(whole))
    data = whole.read_bytes()
    cut = tmp_path / "model.safetensors"
    cut.write_bytes(data[: len(data) // 2])  # the header is whole, the tensors are not
    with pytest.raises(ValueError, match=r"model\.safetensors.*download complete"):
        read_checkpoint(str(cut))
    cut_header = tmp_path / "header.safetensors"
    cut_header.write_bytes(data[:20])
    with pytest.raises(ValueError, match=r"header\.safetensors.*download complete"):
        read_checkpoint(str(cut_header))
    zipped = tmp_path / "whole.pt"
    torch.save(state, zipped)
    data = zipped.read_bytes()
    cut = tmp_path / "epoch_32.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"epoch_32\.pt.*zip archive.*download complete"):
        read_checkpoint(str(cut))


@pytest.mark.parametrize("arch", ["ViT-L-14", "EVA02-L-14"])
@torch.no_grad()
def test_rein_conversion_of_clip_and_eva_files(tmp_path, arch):
    """Rein converts its CLIP and EVA02 files the same way (convert_eva2_512x512.py): bicubic
    kernel, the 16 x 16 grid of 224 px at patch 14 resized to 32 x 32."""
    source = _randomize(build_trunk(arch, embed_dim=64, depth=2, num_heads=2, patch_size=0))
    state = source.state_dict()
    prefix = "visual." if arch == "ViT-L-14" else "visual.trunk."
    path = tmp_path / "patch14.bin"
    torch.save({prefix + k: v for k, v in state.items()}, path)
    cfg = single_cfg(arch, PRETRAINED=str(path), PATCH_RESAMPLE="interpolate")
    cfg.MODEL.VLT_BACKBONE.POS_EMBED_GRID = [32, 32]
    backbone = CLIPViTBackbone(cfg).eval()
    kernel_key = "conv1.weight" if arch == "ViT-L-14" else "patch_embed.proj.weight"
    pos_key = "positional_embedding" if arch == "ViT-L-14" else "pos_embed"
    loaded = backbone.trunk.state_dict()
    kernel = F.interpolate(state[kernel_key], size=(16, 16), mode="bicubic", align_corners=False)
    assert torch.allclose(loaded[kernel_key], kernel, atol=1e-7)
    pos = state[pos_key].reshape(-1, 1 + 16 * 16, 64)
    grid = pos[:, 1:].reshape(1, 16, 16, 64).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(32, 32), mode="bicubic", align_corners=False)
    expected = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, 1024, 64)], dim=1)
    assert torch.allclose(loaded[pos_key].reshape(1, -1, 64), expected, atol=1e-7)
    assert backbone(torch.randn(1, 3, 512, 512))["last_feat"].shape == (1, 64, 32, 32)
