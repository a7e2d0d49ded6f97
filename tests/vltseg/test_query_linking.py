"""Rein query linking (vltseg.modeling.query_linking)."""
import pytest
import torch
from detectron2.config import get_cfg
from torch import nn

from vlt_common.config import add_vlt_common_config
from vltseg.config import add_vltseg_config
from vltseg.modeling.query_linking import QueryLinker, build_query_linker


def _cfg(**link):
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    add_vltseg_config(cfg)
    cfg.MODEL.MASK_FORMER.HIDDEN_DIM = 8
    cfg.MODEL.MASK_FORMER.NUM_OBJECT_QUERIES = 5
    cfg.MODEL.VLT_BACKBONE.REIN.NUM_TOKENS = 5
    cfg.MODEL.VLTSEG.REIN.LINK_QUERIES = True
    for key, value in link.items():
        cfg.MODEL.VLTSEG.REIN[key] = value
    return cfg


class _FakeRein(nn.Module):
    def __init__(self, num_layers, num_tokens, dim):
        super().__init__()
        self.tokens = nn.Parameter(torch.randn(num_layers, num_tokens, dim))

    def layer_tokens(self):
        return self.tokens


class _FakeBackbone(nn.Module):
    """The backbone contract's ``layer_tokens()``: the Rein tokens or None."""

    def __init__(self, rein=None):
        super().__init__()
        self.rein = rein

    def layer_tokens(self):
        return None if self.rein is None else self.rein.layer_tokens()


def test_shapes():
    linker = QueryLinker(token_dim=6, query_dim=8, link_query_features=False)
    embed, feat = linker(torch.randn(4, 5, 6))
    assert embed.shape == (5, 8) and feat is None
    linker = QueryLinker(token_dim=6, query_dim=8)
    embed, feat = linker(torch.randn(4, 5, 6))
    assert embed.shape == feat.shape == (5, 8)


def test_query_features_follow_official_querys2feat():
    # Official ReinMask2FormerHead: query_feat = querys2feat(query_embed), a linear map of the
    # merged queries (the same ones used as positional embeddings).
    linker = QueryLinker(token_dim=6, query_dim=4)
    with torch.no_grad():
        linker.query_feat_proj.weight.copy_(torch.diag(torch.tensor([1.0, 2.0, -1.0, 0.5])))
        linker.query_feat_proj.bias.copy_(torch.tensor([0.0, 1.0, 0.0, -3.0]))
    embed, feat = linker(torch.randn(3, 5, 6))
    expected = embed * torch.tensor([1.0, 2.0, -1.0, 0.5]) + torch.tensor([0.0, 1.0, 0.0, -3.0])
    torch.testing.assert_close(feat, expected)


def test_equations_by_hand():
    # W_Q = identity, so Q_i = T_i; W'_Q picks 1 * max + 10 * mean + 100 * last per channel.
    dim = 3
    linker = QueryLinker(token_dim=dim, query_dim=dim)
    with torch.no_grad():
        linker.transform.weight.copy_(torch.eye(dim))
        linker.transform.bias.zero_()
        weight = torch.zeros(dim, 3 * dim)
        for c in range(dim):
            # Official Rein layout: the input of `merge` is [max, mean, last] per channel.
            weight[c, 3 * c : 3 * c + 3] = torch.tensor([1.0, 10.0, 100.0])
        linker.merge.weight.copy_(weight)
        linker.merge.bias.fill_(0.5)
    tokens = torch.tensor(
        [
            [[1.0, -2.0, 0.0], [4.0, 0.0, 1.0]],
            [[3.0, 2.0, -1.0], [0.0, 1.0, 1.0]],
        ]
    )  # [L=2, m=2, c=3]
    embed, _ = linker(tokens)
    tmax = torch.tensor([[3.0, 2.0, 0.0], [4.0, 1.0, 1.0]])
    tmean = torch.tensor([[2.0, 0.0, -0.5], [2.0, 0.5, 1.0]])
    tlast = tokens[1]
    torch.testing.assert_close(embed, tmax + 10 * tmean + 100 * tlast + 0.5)


def test_gradient_reaches_tokens_and_linker():
    rein = _FakeRein(3, 5, 6)
    linker = QueryLinker(token_dim=6, query_dim=8)
    embed, feat = linker(rein.layer_tokens())
    (embed.square().sum() + feat.sum()).backward()
    assert rein.tokens.grad is not None and rein.tokens.grad.abs().sum() > 0
    for name, p in linker.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_rejects_bad_token_shape():
    with pytest.raises(ValueError, match="num_layers"):
        QueryLinker(token_dim=6, query_dim=8)(torch.randn(5, 6))


def test_defaults_off_and_features_linked():
    cfg = get_cfg()
    add_vlt_common_config(cfg)
    add_vltseg_config(cfg)
    # Off unless asked for (no silent no-op outside Rein mode); the features are linked when it is
    # on, as in every official Rein config (replace_query_feat=True).
    assert cfg.MODEL.VLTSEG.REIN.LINK_QUERIES is False
    assert cfg.MODEL.VLTSEG.REIN.LINK_QUERY_FEATURES is True
    assert "LINK_QUERIES" not in cfg.MODEL.VLT_BACKBONE.REIN


def test_build():
    assert build_query_linker(_cfg(LINK_QUERIES=False), _FakeBackbone(_FakeRein(2, 5, 6))) is None
    linker = build_query_linker(_cfg(), _FakeBackbone(_FakeRein(2, 5, 6)))
    assert linker.transform.in_features == 6 and linker.merge.out_features == 8
    assert linker.query_feat_proj is not None
    linker = build_query_linker(_cfg(LINK_QUERY_FEATURES=False), _FakeBackbone(_FakeRein(2, 5, 6)))
    assert linker.query_feat_proj is None


@pytest.mark.parametrize("backbone", [_FakeBackbone(rein=None), nn.Identity()])
def test_build_rejects_linking_without_rein(backbone):
    with pytest.raises(ValueError, match="LINK_QUERIES.*FINETUNE to 'rein'"):
        build_query_linker(_cfg(), backbone)


def test_build_rejects_token_query_mismatch():
    cfg = _cfg()
    with pytest.raises(ValueError, match="NUM_TOKENS=7 must equal .*NUM_OBJECT_QUERIES=5"):
        build_query_linker(cfg, _FakeBackbone(_FakeRein(2, 7, 6)))
