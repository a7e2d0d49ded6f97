"""The config system: namespaces that do not collide, every yaml merges, clear errors."""
import argparse
import glob
import os

import pytest
from detectron2.config import get_cfg

from vlt_common.config import add_vlt_common_config
from vlt_common.engine import get_vlt_cfg, setup_cfg
from vltdet.config import add_vltdet_config
from vltseg.config import add_vltseg_config

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIGS = sorted(glob.glob(os.path.join(REPO, "configs", "*.yaml")))


def _flatten(node, prefix=""):
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _keys_set_by(add_fn):
    """Keys whose value differs from (or is absent in) Detectron2's defaults after add_fn."""
    base = _flatten(get_cfg())
    cfg = get_cfg()
    add_vlt_common_config(cfg)  # the projects' functions are called after it
    before = _flatten(cfg)
    add_fn(cfg)
    after = _flatten(cfg)
    if add_fn is add_vlt_common_config:
        before = base
    return {k for k, v in after.items() if k not in before or before[k] != v}


def test_namespaces_do_not_collide():
    common = _keys_set_by(add_vlt_common_config)
    seg = _keys_set_by(add_vltseg_config)
    det = _keys_set_by(add_vltdet_config)
    assert common and seg and det
    assert not common & seg, common & seg
    assert not common & det, common & det
    assert not seg & det, seg & det


def test_vlt_cfg_has_every_namespace():
    cfg = get_vlt_cfg()
    assert "VLT_BACKBONE" in cfg.MODEL and "MASK_FORMER" in cfg.MODEL and "VLTDET" in cfg.MODEL


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_every_config_merges(path):
    cfg = get_vlt_cfg()
    cfg.merge_from_file(path)
    assert cfg.MODEL.META_ARCHITECTURE
    if not os.path.basename(path).startswith("Base-"):
        assert cfg.DATASETS.TEST, f"{path}: DATASETS.TEST is empty"


def _args(config_file, opts=()):
    return argparse.Namespace(config_file=config_file, opts=list(opts))


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(KeyError, match="MODEL.VLT_BACKBONE.NOT_A_KEY"):
        setup_cfg(_args("", ["MODEL.VLT_BACKBONE.NOT_A_KEY", "1"]), log=False)


def test_unknown_key_in_a_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  VLT_BACKBONE:\n    ARHC: ViT-B-16\n")
    with pytest.raises(KeyError, match="ARHC"):
        setup_cfg(_args(str(path)), log=False)


def test_missing_config_file_is_an_error_naming_it(tmp_path):
    missing = str(tmp_path / "no_such.yaml")
    with pytest.raises(FileNotFoundError, match="no_such.yaml"):
        setup_cfg(_args(missing), log=False)


def test_cpu_fallback_is_explicit(monkeypatch):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    cfg = setup_cfg(_args("", ["MODEL.DEVICE", "cuda"]), log=False)
    assert cfg.MODEL.DEVICE == "cpu"
