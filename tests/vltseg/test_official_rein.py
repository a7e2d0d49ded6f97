"""Parity of VLT's Rein layer and query linking with official Rein's ``LoRAReins`` on stored golden
tensors (``tests/golden/rein_tiny.pt``, written from the official code by
``tests/golden/make_rein_golden.py``; the official code is not needed here).

VLT names the parameters differently from official Rein, so the official state dict goes in
through the explicit name map below; the test checks that the map covers every official key
and every VLT parameter, then compares the refined features of every layer and the linked queries.
"""
import os

import pytest
import torch

from vlt_common.modeling.backbone.rein import Rein
from vltseg.modeling import QueryLinker

GOLDEN = os.path.join(os.path.dirname(__file__), "..", "golden", "rein_tiny.pt")
# Official LoRAReins parameter -> VLT parameter (Rein as ``rein``, QueryLinker as ``linker``).
OFFICIAL_TO_VLT = {
    "learnable_tokens_a": "rein.tokens_a",
    "learnable_tokens_b": "rein.tokens_b",
    "scale": "rein.scale",
    "mlp_token2feat.weight": "rein.token_proj.weight",
    "mlp_token2feat.bias": "rein.token_proj.bias",
    "mlp_delta_f.weight": "rein.feat_proj.weight",
    "mlp_delta_f.bias": "rein.feat_proj.bias",
    "transform.weight": "linker.transform.weight",
    "transform.bias": "linker.transform.bias",
    "merge.weight": "linker.merge.weight",
    "merge.bias": "linker.merge.bias",
}
# The same float32 computation: measured equal bitwise (values up to 4); aggregating the first
# token too (a plausible slip) moves the output by 1.7e-2.
ATOL = 1e-6


@pytest.fixture(scope="module")
def golden():
    return torch.load(GOLDEN, weights_only=True)


@pytest.fixture(scope="module")
def vlt_rein(golden):
    """VLT's Rein and QueryLinker holding the official weights."""
    c = golden["config"]
    modules = torch.nn.ModuleDict(
        {
            "rein": Rein(
                num_layers=c["num_layers"],
                embed_dim=c["embed_dims"],
                num_tokens=c["token_length"],
                rank=c["lora_dim"],
                scale_init=c["scale_init"],
                patch_size=c["patch_size"],
            ),
            # The query features (official: querys2feat in Rein's Mask2Former head, not in
            # LoRAReins) are not part of the golden file.
            "linker": QueryLinker(
                token_dim=c["embed_dims"], query_dim=c["query_dims"], link_query_features=False
            ),
        }
    )
    state = {OFFICIAL_TO_VLT[k]: v for k, v in golden["state_dict"].items()}
    modules.load_state_dict(state, strict=True)
    return modules.eval()


def test_name_map_covers_both_sides(golden, vlt_rein):
    assert set(OFFICIAL_TO_VLT) == set(golden["state_dict"])
    assert set(OFFICIAL_TO_VLT.values()) == set(vlt_rein.state_dict())


def test_refined_features_equal_the_official_ones(golden, vlt_rein):
    with torch.no_grad():
        for layer, (x, expected) in enumerate(zip(golden["inputs"], golden["outputs"])):
            actual = vlt_rein["rein"](x, layer, num_prefix_tokens=1)
            # The refinement is not negligible, so this compares more than the identity.
            assert (expected - x).abs().max() > 0.1
            torch.testing.assert_close(actual, expected, rtol=0, atol=ATOL, msg=f"layer {layer}")


def test_linked_queries_equal_the_official_ones(golden, vlt_rein):
    with torch.no_grad():
        query_embed, query_feat = vlt_rein["linker"](vlt_rein["rein"].layer_tokens())
    assert query_feat is None
    torch.testing.assert_close(query_embed, golden["querys"], rtol=0, atol=ATOL)
