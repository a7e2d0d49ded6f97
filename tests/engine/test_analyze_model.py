"""tools/analyze_model.py --backbone (the backbone alone), run through main() with a tiny trunk,
and the FLOP counter's attention handle."""
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.tool_loader import load_tool
from vlt_common.utils.model_stats import count_flops

main = load_tool("analyze_model").main

TINY = ["--backbone", "--embed-dim", "64", "--depth", "2", "--num-heads", "2"]


def test_describe_multiscale(capsys):
    main(["--arch", "EVA02-L-14", "--size", "64", "96", *TINY])
    out = capsys.readouterr().out
    assert "EVA02-L-14: timm.models.eva.Eva, 2 blocks, width 64, patch 16" in out
    trainable, total = out.split("parameters: ")[1].split(" total")[0].split(" trainable / ")
    assert trainable == total and int(total.replace(",", "")) > 0
    flops = float(out.split("FLOPs at 64x96: ")[1].split(" G")[0])
    assert flops > 0
    rows = {tuple(c.strip() for c in line.strip("|").split("|")) for line in out.splitlines()}
    assert {
        ("res2", "(1, 64, 16, 24)", "4"),
        ("res3", "(1, 64, 8, 12)", "8"),
        ("res4", "(1, 64, 4, 6)", "16"),
        ("res5", "(1, 64, 2, 3)", "32"),
    } <= rows


def test_describe_single_frozen_native_patch(capsys):
    args = ["--arch", "ViT-L-14", "--size", "56", "84", "--output", "single", "--patch-size", "0"]
    main([*args, "--no-flops", *TINY, "MODEL.VLT_BACKBONE.FINETUNE", "frozen"])
    out = capsys.readouterr().out
    assert "patch 14" in out and "finetune 'frozen'" in out and "FLOPs" not in out
    trainable = out.split("parameters: ")[1].split(" trainable")[0]
    assert trainable == "0"
    assert any(line.replace(" ", "") == "|last_feat|(1,64,4,6)|14|" for line in out.splitlines())


def test_a_whole_model_needs_a_config_file():
    with pytest.raises(SystemExit, match="--config-file is required"):
        main(["--no-flops"])


def test_describe_rejects_unknown_key():
    with pytest.raises(KeyError, match="Unknown config key .MODEL.VLT_BACKBONE.NOPE"):
        main(["--no-flops", *TINY, "MODEL.VLT_BACKBONE.NOPE", "1"])


def test_describe_config_file_then_flags(tmp_path, capsys):
    config = tmp_path / "recipe.yaml"
    config.write_text(
        "MODEL:\n  VLT_BACKBONE:\n    ARCH: timm:samvit_base_patch16\n"
        "    PRETRAINED: /weights/not/on/this/machine.pth\n    FREEZE_BLOCKS: 1\n"
    )
    main(["--config-file", str(config), "--size", "64", "64", "--no-flops", *TINY])
    out = capsys.readouterr().out
    assert "timm:samvit_base_patch16: timm.models.vision_transformer_sam" in out
    trainable, total = out.split("parameters: ")[1].split(" total")[0].split(" trainable / ")
    assert 0 < int(trainable.replace(",", "")) < int(total.replace(",", ""))


class _Attention(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


def test_sdpa_flop_handle_counts_both_matmuls():
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    flops, _ = count_flops(_Attention(), (q, k, v))
    # q kᵀ: 2 * 3 * 5 * 7 * 8 multiply-adds; softmax(.) v: 2 * 3 * 5 * 7 * 4.
    assert flops == 2 * 3 * 5 * 7 * (8 + 4)
