"""CLIPTextEncoder: embeddings, cache, frozen tower, learnable context, weight loading."""
import warnings

import open_clip
import pytest
import torch
from open_clip import CLIP, CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
from safetensors.torch import save_file
from torch import nn
from torch.nn import functional as F

from vlt_common.modeling.text_encoder import DEFAULT_TEMPLATES, CLIPTextEncoder

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
def _reference_classes(model, class_names, templates):
    """Template-averaged class embeddings from open_clip's own encode_text."""
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    rows = []
    for name in class_names:
        text = model.encode_text(tokenizer([t.format(name) for t in templates]), normalize=True)
        rows.append(F.normalize(text.mean(dim=0), dim=-1))
    return torch.stack(rows)


def test_shapes_norms_and_properties(encoder):
    assert (encoder.width, encoder.embed_dim, encoder.context_length) == (64, 32, 77)
    emb = encoder.encode_classes(CLASSES)
    assert emb.shape == (3, 32)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))
    assert not emb.requires_grad
    assert len(DEFAULT_TEMPLATES) == 7 and all(t.count("{}") == 1 for t in DEFAULT_TEMPLATES)


def test_cache_and_order(encoder):
    first = encoder.encode_classes(CLASSES)
    assert encoder.encode_classes(list(CLASSES)) is first  # cache hit: the same tensor
    single = encoder.encode_classes(CLASSES, templates=("a photo of a {}.",))
    assert single is not first and not torch.allclose(single, first)
    permuted = encoder.encode_classes(["person", "road", "car"])
    torch.testing.assert_close(permuted, first[[2, 0, 1]])


def test_cache_follows_dtype_and_loaded_weights():
    encoder = CLIPTextEncoder("ViT-B-16", **TINY)
    parent = nn.ModuleDict({"text": encoder})
    first = encoder.encode_classes(CLASSES)
    parent.double()
    as_double = encoder.encode_classes(CLASSES)
    assert as_double.dtype == torch.float64
    torch.testing.assert_close(as_double.float(), first, rtol=1e-5, atol=1e-5)
    parent.float()
    again = encoder.encode_classes(CLASSES)
    assert encoder.encode_classes(CLASSES) is again
    state = parent.state_dict()
    state["text.text.text_projection"] = torch.randn_like(state["text.text.text_projection"])
    parent.load_state_dict(state)
    reloaded = encoder.encode_classes(CLASSES)
    assert not torch.allclose(reloaded, again)


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
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    (out[:, 0].sum()).backward()
    assert context.grad is not None and context.grad.abs().sum() > 0
    assert all(p.grad is None for p in encoder.parameters())
    context_before = context.detach().clone()
    optimizer.step()
    assert not torch.equal(context.detach(), context_before)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_context_placement_matches_tokenized_prompt(encoder):
    # Context vectors equal to the embeddings of "a photo of" must reproduce the plain prompt
    # "a photo of <name>." through the library's own forward.
    words = encoder.tokenizer.encode("a photo of")
    context = encoder.text.token_embedding.weight[words].clone()
    with_context = encoder.encode_with_context(context, CLASSES)
    plain = encoder.encode_classes(CLASSES, templates=("a photo of {}.",))
    torch.testing.assert_close(with_context, plain, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_load_open_clip_state_dict(tmp_path, fmt):
    model = _tiny_clip()
    path = tmp_path / f"open_clip_model.{fmt}"
    if fmt == "bin":
        torch.save(model.state_dict(), path)
    else:
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    encoder = CLIPTextEncoder("ViT-B-16", pretrained=str(path), **TINY)
    templates = ("a photo of a {}.", "a {} in the street.")
    expected = _reference_classes(model, CLASSES, templates)
    torch.testing.assert_close(encoder.encode_classes(CLASSES, templates), expected)


def test_load_custom_text_checkpoint_wrapped(tmp_path):
    # EVA-CLIP / CustomTextCLIP layout: text keys under "text.", here also wrapped in
    # "state_dict" with DDP's "module." prefix as open_clip's training checkpoints are.
    model = _tiny_clip(cls=CustomTextCLIP)
    path = tmp_path / "EVA02_CLIP_tiny_s4B.pt"
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, path)
    encoder = CLIPTextEncoder("ViT-B-16", pretrained=str(path), **TINY)
    expected = _reference_classes(model, CLASSES, DEFAULT_TEMPLATES)
    torch.testing.assert_close(encoder.encode_classes(CLASSES), expected)


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
        expected = F.normalize(reference.encode_text(tokens), dim=-1)
    got = encoder.encode_classes(["car"], templates=("a photo of a {}.",))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # without QuickGELU the same weights give other embeddings
    gelu = CLIPTextEncoder("ViT-B-16", pretrained=str(path), quick_gelu=False, **one_head)
    assert not torch.allclose(gelu.encode_classes(["car"], ("a photo of a {}.",)), expected)


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
    with pytest.raises(ValueError, match="exactly one"):
        encoder.encode_classes(CLASSES, templates=("a photo",))
    with pytest.raises(ValueError, match="tokens"):
        encoder.encode_classes([" ".join(["car"] * 80)])
    with pytest.raises(ValueError, match="context must be"):
        encoder.encode_with_context(torch.zeros(8, 32), CLASSES)
    with pytest.raises(ValueError, match="no room"):
        encoder.encode_with_context(torch.zeros(75, 64), CLASSES)
