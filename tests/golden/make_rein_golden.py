"""Write ``tests/golden/rein_tiny.pt``: golden tensors of official Rein's ``LoRAReins`` layer
(w1oves/Rein, ``rein/models/backbones/reins.py``) at a tiny size, run on CPU.
``tests/vltseg/test_official_rein.py`` puts its weights into VLT's ``Rein`` and ``QueryLinker`` and
compares the outputs, without needing the official code.

Usage (the official checkout is read, never copied into this repository)::

    mkdir -p /tmp/rein_official
    git --git-dir=/work/.mirror/w1oves+Rein/repo archive HEAD rein | tar -x -C /tmp/rein_official
    python tests/golden/make_rein_golden.py --official /tmp/rein_official \\
        --revision "$(git --git-dir=/work/.mirror/w1oves+Rein/repo rev-parse HEAD)"

How the official code runs here: ``reins.py`` imports mmseg only to register its classes
(``from mmseg.models.builder import MODELS``). A stand-in ``mmseg.models.builder`` whose
``MODELS.register_module()`` returns the class unchanged is put into ``sys.modules`` first, and
``reins.py`` is loaded from its file alone (not through ``rein/__init__.py``, which needs mmseg,
mmdet and the DINOv2 / EVA backbones).

The layer is called as official Rein's ViT backbones call it (``reins_dinov2.py``:
``forward(x, idx, batch_first=True, has_cls_token=True)`` after every block) and ``return_auto``
gives the linked queries (``link_token_to_query=True``). Weights: the official initialization,
then every parameter moved by ``PERTURB * N(0, 1)`` and the scale set to ``SCALE`` (official
init: 1e-3), so that the refinement is large enough to compare.

The file (``torch.load(..., weights_only=True)``) holds ``state_dict`` (official key names),
``config`` (the constructor arguments), ``inputs`` [B, 1 + N, C] per layer, ``outputs`` per layer
and ``querys`` [m, query_dims].
"""
import argparse
import importlib.util
import os
import sys
import types

import torch

CONFIG = {
    "num_layers": 3,
    "embed_dims": 32,
    "patch_size": 16,
    "query_dims": 16,
    "token_length": 6,
    "use_softmax": True,
    "link_token_to_query": True,
    "scale_init": 0.001,
    "lora_dim": 4,
}
BATCH, NUM_PATCHES = 2, 12
SEED, PERTURB, SCALE = 0, 0.05, 0.5


def import_lora_reins(root: str):
    """``LoRAReins`` from ``rein/models/backbones/reins.py`` of the checkout at ``root``."""
    path = os.path.join(root, "rein", "models", "backbones", "reins.py")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--official {root!r}: no rein/models/backbones/reins.py there")

    class _Registry:
        @staticmethod
        def register_module():
            return lambda cls: cls

    builder = types.ModuleType("mmseg.models.builder")
    builder.MODELS = _Registry()
    for name in ("mmseg", "mmseg.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["mmseg.models.builder"] = builder
    spec = importlib.util.spec_from_file_location("official_rein_reins", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LoRAReins


def generate(root: str, revision: str):
    lora_reins = import_lora_reins(root)
    torch.manual_seed(SEED)
    rein = lora_reins(**CONFIG)
    with torch.no_grad():
        for p in rein.parameters():
            p.add_(torch.randn_like(p) * PERTURB)
        rein.scale.fill_(SCALE)
    generator = torch.Generator().manual_seed(SEED + 1)
    c = CONFIG["embed_dims"]
    inputs = [
        torch.randn(BATCH, 1 + NUM_PATCHES, c, generator=generator)
        for _ in range(CONFIG["num_layers"])
    ]
    with torch.no_grad():
        outputs = [
            rein(x, layer, batch_first=True, has_cls_token=True) for layer, x in enumerate(inputs)
        ]
        feats, querys = rein.return_auto(inputs[-1])
    if feats is not inputs[-1]:
        raise RuntimeError("official return_auto changed the features")
    return {
        "source": {
            "repository": "w1oves/Rein",
            "revision": revision,
            "torch": str(torch.__version__),
            "generator": "tests/golden/make_rein_golden.py",
        },
        "config": CONFIG,
        "state_dict": {k: v.detach().clone() for k, v in rein.state_dict().items()},
        "inputs": inputs,
        "outputs": outputs,
        "querys": querys,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--official", required=True, help="checkout of official Rein")
    parser.add_argument("--revision", default="unknown", help="commit of that checkout")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "rein_tiny.pt")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    golden = generate(os.path.abspath(args.official), args.revision)
    torch.save(golden, args.out)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1024:.0f} KiB)")
    print("official keys:", ", ".join(golden["state_dict"]))


if __name__ == "__main__":
    main()
