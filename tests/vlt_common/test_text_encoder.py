"""CLIPTextEncoder: embeddings, cache, frozen tower, learnable context, weight loading."""
import warnings

import open_clip
import pytest
import torch
from open_clip import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from safetensors.torch import save_file
from torch import nn

from vlt_common.modeling.text_encoder import CLIPTextEncoder

TINY = dict(width=64, layers=2, heads=2, embed_dim=32)
CLASSES = ["road", "car", "person"]


@pytest.fixture(scope="module")
def encoder():
    return CLIPTextEncoder("ViT-B-16", **TINY)


def _tiny_clip(cls=CLIP, heads=2, quick_gelu=False):
    torch.manual_seed(1)
    model = cls(
        embed_dim=32,
        vision_cfg=CLIPVisionCfg(layers=1, width=64, patch_size=16, image_size=32),
        text_cfg=CLIPTextCfg(width=64, heads=heads, layers=2),
        quick_gelu=quick_gelu,
    )
    return model.eval()


@torch.no_grad()
def _plain(encoder, prompts):
    """Embeddings of whole prompts through the encoder's open_clip tower (no context)."""
    return encoder.text(encoder.tokenizer(list(prompts)))


def test_shapes_and_properties(encoder):
    assert (encoder.width, encoder.embed_dim, encoder.context_length) == (64, 32, 77)
    out = encoder.encode_with_context(torch.randn(8, 64), CLASSES)
    assert out.shape == (3, 32) and not out.requires_grad


def test_prompt_is_the_bare_class_name(encoder):
    # DenseCLIP tokenizes the class name alone: [SOT, name tokens, EOT, 0 ...], no period.
    sot, eot = encoder.tokenizer.sot_token_id, encoder.tokenizer.eot_token_id
    tokens = encoder.prompt_tokens(["car", "traffic light"], num_context=8)
    assert tokens.shape == (2, 77 - 8)
    for row, name in zip(tokens, ["car", "traffic light"]):
        ids = [sot, *encoder.tokenizer.encode(name), eot]
        assert row[: len(ids)].tolist() == ids
        assert not row[len(ids) :].any()
    period = encoder.tokenizer.encode(".")
    assert period == [269] and 269 not in tokens


def test_embeddings_are_not_normalized(encoder):
    # DenseCLIP adds the refinement to the raw text embeddings: no L2 normalization here.
    out = encoder.encode_with_context(torch.randn(8, 64), CLASSES)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(3), atol=1e-3)


def test_frozen_and_stays_in_eval(encoder):
    assert all(not p.requires_grad for p in encoder.parameters())
    parent = nn.ModuleDict({"text": encoder, "head": nn.Linear(2, 2)})
    parent.train()
    assert parent["head"].training
    assert not encoder.training
    assert not any(m.training for m in encoder.modules())


def test_context_gradient_reaches_context_only(encoder):
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    context = nn.Parameter(torch.randn(8, encoder.width) * 0.02)
    optimizer = torch.optim.AdamW([context, *encoder.parameters()], lr=0.1, weight_decay=0.5)
    out = encoder.encode_with_context(context, CLASSES)
    assert out.shape == (3, 32)
    (out[:, 0].sum()).backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
    context_before = context.detach().clone()
    optimizer.step()
    assert not torch.equal(context.detach(), context_before)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_context_placement_matches_tokenized_prompt(encoder):
    # Context vectors equal to the embeddings of "a photo of" must reproduce the raw embedding
    # of the prompt "a photo of <name>" (bare name, no period) through open_clip's own forward.
    words = encoder.tokenizer.encode("a photo of")
    context = encoder.text.token_embedding.weight[words].clone()
    with_context = encoder.encode_with_context(context, CLASSES)
    plain = _plain(encoder, [f"a photo of {name}" for name in CLASSES])
    torch.testing.assert_close(with_context, plain, rtol=1e-5, atol=1e-5)
    with_period = _plain(encoder, [f"a photo of {name}." for name in CLASSES])
    assert not torch.allclose(with_context, with_period, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_load_open_clip_state_dict(tmp_path, fmt):
    model = _tiny_clip()
    path = tmp_path / f"open_clip_model.{fmt}"
    if fmt == "bin":
        torch.save(model.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    encoder = CLIPTextEncoder("ViT-B-16", pretrained=str(path), **TINY)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a car.", "a road in the street."])
    with torch.no_grad():
        expected = model.encode_text(tokens)
        got = encoder.text(tokens)
    torch.testing.assert_close(got, expected)


def test_load_custom_text_checkpoint_wrapped(tmp_path):
    # EVA-CLIP / CustomTextCLIP layout: text keys under "text.", here also wrapped in
    # "state_dict" with DDP's "module." prefix as open_clip's training checkpoints are.
    model = _tiny_clip(cls=CustomTextCLIP)
    path = tmp_path / "EVA02_CLIP_tiny_s4B.pt"
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, path)
    encoder = CLIPTextEncoder("ViT-B-16", pretrained=str(path), **TINY)
    tokens = open_clip.get_tokenizer("ViT-B-16")(CLASSES)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        got = encoder.text(tokens)
    torch.testing.assert_close(got, expected)


def test_load_openai_torchscript_archive(tmp_path):
    # An OpenAI-style release: a traced CLIP with QuickGELU, fp16 weights, and the extra
    # input_resolution / context_length / vocab_size entries. open_clip infers heads = width / 64.
    model = _tiny_clip(heads=1, quick_gelu=True)
    for key in ("input_resolution", "context_length", "vocab_size"):
        model.__dict__.pop(key, None)
        model.register_buffer(key, torch.tensor(77))
    mask = model.attn_mask
    del model.attn_mask  # OpenAI keeps the causal mask out of the state dict
    model.attn_mask = mask
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo of a car."])
    with warnings.catch_warnings():  # the tracer warns about the data-dependent EOT index
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace_module(model, {"encode_text": (tokens,)})
    path = tmp_path / "ViT-tiny.pt"
    traced.half().save(str(path))

    one_head = dict(width=64, layers=2, heads=1, embed_dim=32)
    encoder = CLIPTextEncoder("ViT-B-16", pretrained=str(path), **one_head)
    reference = open_clip.load_openai_model(str(path), device="cpu")  # QuickGELU, fp32
    with torch.no_grad():
        expected = reference.encode_text(tokens)
        got = encoder.text(tokens)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # without QuickGELU the same weights give other embeddings
    gelu = CLIPTextEncoder("ViT-B-16", pretrained=str(path), quick_gelu=False, **one_head)
    with torch.no_grad():
        assert not torch.allclose(gelu.text(tokens), expected, rtol=1e-4, atol=1e-4)


def test_loading_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        CLIPTextEncoder("ViT-B-16", pretrained=str(missing), **TINY)
    no_text = tmp_path / "visual_only.pt"
    torch.save({"visual.conv1.weight": torch.zeros(2)}, no_text)
    with pytest.raises(ValueError, match="no CLIP text-tower weights"):
        CLIPTextEncoder("ViT-B-16", pretrained=str(no_text), **TINY)
    wrong_size = tmp_path / "wide.bin"
    torch.save(_tiny_clip().state_dict(), wrong_size)
    with pytest.raises(ValueError, match="wide.bin.*do not fit"):
        CLIPTextEncoder("ViT-B-16", pretrained=str(wrong_size), width=128, layers=2, heads=2)


def test_bad_arguments(encoder):
    with pytest.raises(ValueError, match="Unknown open_clip architecture"):
        CLIPTextEncoder("ViT-Q-99")
    with pytest.raises(ValueError, match="CLIP-style text towers"):
        CLIPTextEncoder("coca_ViT-B-32")
    with pytest.raises(ValueError, match="tokens"):
        encoder.encode_with_context(torch.zeros(8, 64), [" ".join(["car"] * 70)])
    with pytest.raises(ValueError, match="context must be"):
        encoder.encode_with_context(torch.zeros(8, 32), CLASSES)
    with pytest.raises(ValueError, match="no room"):
        encoder.encode_with_context(torch.zeros(75, 64), CLASSES)
