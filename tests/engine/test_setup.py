"""The config system: namespaces that do not collide, every yaml merges, clear errors."""
import argparse
import glob
import os

import pytest
from detectron2.config import get_cfg

from vlt_common.config import add_vlt_common_config, registered_project_configs
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


def _flat_after(*add_fns):
    cfg = get_cfg()
    for add_fn in add_fns:
        add_fn(cfg)
    return _flatten(cfg)


def test_no_project_changes_a_detectron2_default():
    """Each add_*_config only adds keys: a value Detectron2 defines stays Detectron2's."""
    d2 = _flatten(get_cfg())
    for add_fns in [(add_vlt_common_config,), (add_vlt_common_config, add_vltseg_config),
                    (add_vlt_common_config, add_vltdet_config)]:
        after = _flat_after(*add_fns)
        changed = {k: (d2[k], after[k]) for k in d2 if after[k] != d2[k]}
        assert not changed, f"{add_fns[-1].__name__} changes Detectron2 defaults: {changed}"


def test_namespaces_do_not_collide():
    d2 = set(_flatten(get_cfg()))
    common = set(_flat_after(add_vlt_common_config)) - d2
    seg = set(_flat_after(add_vlt_common_config, add_vltseg_config)) - d2 - common
    det = set(_flat_after(add_vlt_common_config, add_vltdet_config)) - d2 - common
    assert "INPUT.DATASET_MAPPER_NAME" in common  # the key lives with its reader
    assert "MODEL.MASK_FORMER.HIDDEN_DIM" in seg and "MODEL.VLTDET.SQUARE_PAD" in det
    assert not seg & det, seg & det


def test_vltdet_config_is_the_same_with_and_without_vltseg_keys():
    """Registering VLTSeg's keys changes nothing in a VLTDet run's config (e.g. INPUT.CROP)."""
    path = os.path.join(REPO, "configs", "vltdet_tiny_synthdg.yaml")
    alone = get_cfg()
    add_vlt_common_config(alone)
    add_vltdet_config(alone)
    alone.merge_from_file(path)
    both = get_vlt_cfg()
    both.merge_from_file(path)
    alone, both = _flatten(alone), _flatten(both)
    assert set(alone) < set(both)
    assert {k: both[k] for k in alone if both[k] != alone[k]} == {}
    assert alone["INPUT.CROP.ENABLED"] == get_cfg().INPUT.CROP.ENABLED


def test_vlt_cfg_has_the_registered_namespaces():
    assert set(registered_project_configs()) >= {"vltseg", "vltdet"}
    cfg = get_vlt_cfg()
    assert "VLT_BACKBONE" in cfg.MODEL and "MASK_FORMER" in cfg.MODEL and "VLTDET" in cfg.MODEL


# What each family of configs must build: meta-architecture and dataset mapper.
_FAMILY = {"vltseg": ("VLTSeg", "semantic_dg"), "vltdet": ("GeneralizedRCNN", "detection_lsj")}


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.basename(p) for p in CONFIGS])
def test_every_config_merges(path):
    cfg = get_vlt_cfg()
    cfg.merge_from_file(path)
    name = os.path.basename(path).lower()
    family = next(f for f in _FAMILY if f in name)
    arch, mapper = _FAMILY[family]
    assert cfg.MODEL.META_ARCHITECTURE == arch, path
    assert cfg.INPUT.DATASET_MAPPER_NAME == mapper, path
    if not name.startswith("base-"):
        assert cfg.DATASETS.TEST, f"{path}: DATASETS.TEST is empty"


def test_a_key_of_an_unregistered_project_is_an_error_naming_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr("vlt_common.config._PROJECT_CONFIGS", {})
    path = os.path.join(REPO, "configs", "vltseg_tiny_synthdg.yaml")
    with pytest.raises(KeyError, match="vltseg_tiny_synthdg.yaml.*registered: \\[\\]"):
        setup_cfg(_args(path), log=False)


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
