"""Rein: the equations on a hand-computed case, prefix tokens, initialization, gradients, size."""
import math

import pytest
import torch

from vlt_common.modeling.backbone.rein import Rein


def _set_small_case(rein):
    # c = 2, m = 3, r = 1, one layer: T = A B = [[1, 0], [0, 0], [2, 0]]
    with torch.no_grad():
        rein.tokens_a.copy_(torch.tensor([[[1.0], [0.0], [2.0]]]))
        rein.tokens_b.copy_(torch.tensor([[[1.0, 0.0]]]))
        rein.token_proj.weight.copy_(torch.eye(2))  # W_T = I
        rein.token_proj.bias.copy_(torch.tensor([0.0, 1.0]))
        rein.feat_proj.weight.copy_(torch.tensor([[2.0, 0.0], [0.0, 1.0]]))  # W_f = diag(2, 1)
        rein.feat_proj.bias.copy_(torch.tensor([1.0, 0.0]))
        rein.scale.fill_(0.5)


def test_matches_hand_computed_equations():
    rein = Rein(num_layers=1, embed_dim=2, num_tokens=3, rank=1)
    _set_small_case(rein)
    tokens = torch.tensor([[[9.0, -9.0], [1.0, 1.0]]])  # [cls, one patch f = (1, 1)]
    out = rein(tokens, layer=0, num_prefix_tokens=1)

    # S = softmax(f T^T / sqrt(2)) = softmax([1, 0, 2] / sqrt(2)) over the 3 tokens
    logits = [1 / math.sqrt(2), 0.0, 2 / math.sqrt(2)]
    z = sum(math.exp(v) for v in logits)
    s1, s2 = math.exp(logits[1]) / z, math.exp(logits[2]) / z
    # T[1:] W_T + b_T = [[0, 1], [2, 1]];  Δf̄ = s1 (0, 1) + s2 (2, 1) = (2 s2, s1 + s2)
    # Δf = (Δf̄ + f) W_f + b_f = (2 (2 s2 + 1) + 1, s1 + s2 + 1);  out = f + 0.5 Δf
    expected = torch.tensor(
        [[[9.0, -9.0], [1 + 0.5 * (4 * s2 + 3), 1 + 0.5 * (s1 + s2 + 1)]]]
    )
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


def test_first_learnable_token_is_normalized_over_but_not_aggregated():
    rein = Rein(num_layers=1, embed_dim=2, num_tokens=3, rank=1)
    _set_small_case(rein)
    feats = torch.tensor([[[1.0, 1.0]]])
    base = rein(feats, layer=0, num_prefix_tokens=0)
    # Moving T[0] changes the softmax denominator, so the output changes...
    with torch.no_grad():
        rein.tokens_a[0, 0, 0] = 5.0
    moved = rein(feats, layer=0, num_prefix_tokens=0)
    assert not torch.allclose(base, moved)
    # ...and when T[0] takes all the similarity mass, only f W_f + b_f is left.
    with torch.no_grad():
        rein.tokens_a[0, 0, 0] = 1e4
    sink = rein(feats, layer=0, num_prefix_tokens=0)
    torch.testing.assert_close(sink, torch.tensor([[[1 + 0.5 * 3, 1 + 0.5 * 1]]]))


def test_prefix_untouched_and_near_identity_at_init():
    rein = Rein(num_layers=3, embed_dim=16, num_tokens=8, rank=4)
    tokens = torch.randn(2, 1 + 4 + 12, 16)
    out = rein(tokens, layer=2, num_prefix_tokens=5)
    assert out.shape == tokens.shape
    assert torch.equal(out[:, :5], tokens[:, :5])
    change = (out[:, 5:] - tokens[:, 5:]).abs().max()
    # scale_init = 1e-3: the refinement is about a thousandth of the features
    assert 0 < change < 1e-2 * tokens.abs().max()
    with torch.no_grad():
        rein.scale.zero_()
    assert torch.equal(rein(tokens, layer=2, num_prefix_tokens=5), tokens)


def test_token_init_bound_and_scale():
    rein = Rein(num_layers=2, embed_dim=64, num_tokens=10, rank=4)
    bound = math.sqrt(6.0 / (3 * 16 * 16 + math.sqrt(64 * 4)))
    for p in (rein.tokens_a, rein.tokens_b):
        assert p.abs().max() <= bound and p.abs().max() > 0.5 * bound
    assert rein.scale.item() == pytest.approx(1e-3)


def test_gradients_reach_every_parameter():
    rein = Rein(num_layers=2, embed_dim=8, num_tokens=5, rank=2)
    tokens = torch.randn(2, 7, 8, requires_grad=True)
    out = rein(tokens, layer=1, num_prefix_tokens=1)
    (out**2).sum().backward()
    for name, p in rein.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # only layer 1's tokens were used
    assert rein.tokens_a.grad[0].abs().sum() == 0
    assert rein.tokens_a.grad[1].abs().sum() > 0
    # the prefix token reaches the output unchanged: its gradient is exactly 2 * token
    torch.testing.assert_close(tokens.grad[:, 0], 2 * tokens[:, 0].detach())


def test_layer_tokens():
    rein = Rein(num_layers=3, embed_dim=6, num_tokens=4, rank=2)
    tokens = rein.layer_tokens()
    assert tokens.shape == (3, 4, 6)
    for i in range(3):
        torch.testing.assert_close(tokens[i], rein.tokens_a[i] @ rein.tokens_b[i])


def test_parameter_count_vit_large():
    rein = Rein(num_layers=24, embed_dim=1024)
    count = sum(p.numel() for p in rein.parameters())
    assert count == Rein.num_parameters_formula(24, 1024, 100, 16)
    # 24*100*16 + 24*16*1024 + 2*(1024^2 + 1024) + 1
    assert count == 2_530_817
    # The paper's 2.99M for ViT-L also counts the query-linking layers (in vltseg):
    # W_Q [1024 -> 256] and W'_Q [3*256 -> 256], with biases.
    linking = (1024 * 256 + 256) + (3 * 256 * 256 + 256)
    assert round((count + linking) / 1e6, 2) == 2.99


def test_no_weight_decay_names_exist():
    rein = Rein(num_layers=1, embed_dim=4, num_tokens=2, rank=1)
    names = dict(rein.named_parameters())
    assert rein.no_weight_decay() <= set(names)


@pytest.mark.parametrize(
    "shape,layer,prefix",
    [((1, 4, 5), 0, 1), ((1, 4, 8), 2, 1), ((1, 4, 8), 0, 4), ((4, 8), 0, 0)],
)
def test_bad_input(shape, layer, prefix):
    rein = Rein(num_layers=2, embed_dim=8, num_tokens=3, rank=2)
    with pytest.raises((ValueError, IndexError)):
        rein(torch.zeros(shape), layer=layer, num_prefix_tokens=prefix)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_tokens"):
        Rein(num_layers=2, embed_dim=8, num_tokens=1)
    with pytest.raises(ValueError, match="embed_dim"):
        Rein(num_layers=2, embed_dim=0)
