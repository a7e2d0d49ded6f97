"""tools/export_model.py: tiny VLTSeg and VLTDet models exported to ONNX and run with onnxruntime
on the CPU agree with PyTorch within 1e-4; the deformable attention exports as GridSample."""
import os

import onnx
import pytest

from tests.tool_loader import load_tool
from tests.vltdet.conftest import CONFIGS, TINY_OPTS
from tests.vltseg.tiny_model import tiny_cfg
from vlt_common.engine import get_vlt_cfg

export_model = load_tool("export_model")
PARITY = 1e-4


def _write(cfg, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(cfg.dump())
    return str(path)


def test_vltseg_window_exports_with_grid_sample_and_matches_pytorch(tmp_path, capsys):
    cfg = tiny_cfg()  # 19 Cityscapes classes, one deformable encoder layer over 3 levels
    onnx_path = str(tmp_path / "vltseg.onnx")
    diff = export_model.main(
        ["--config-file", _write(cfg, tmp_path), "--output", onnx_path, "--size", "64", "96"]
    )
    assert diff <= PARITY
    graph = onnx.load(onnx_path)
    assert graph.opset_import[0].version == export_model.OPSET == 18
    ops = [node.op_type for node in graph.graph.node]
    # The export path of ms_deform_attn: one GridSample per level and encoder layer.
    levels = len(cfg.MODEL.SEM_SEG_HEAD.DEFORMABLE_TRANSFORMER_ENCODER_IN_FEATURES)
    assert ops.count("GridSample") == cfg.MODEL.SEM_SEG_HEAD.TRANSFORMER_ENC_LAYERS * levels
    dims = [[d.dim_value for d in v.type.tensor_type.shape.dim] for v in graph.graph.output]
    assert [i.name for i in graph.graph.input] == ["image"]
    assert [o.name for o in graph.graph.output] == ["scores"] and dims == [[1, 19, 64, 96]]
    printed = capsys.readouterr().out
    assert "opset 18" in printed and "max abs difference to PyTorch" in printed


def test_vltdet_exports_through_detectron2_and_matches_pytorch(tmp_path):
    cfg = get_vlt_cfg()
    cfg.merge_from_file(os.path.join(CONFIGS, "Base-VLTDet.yaml"))
    cfg.merge_from_list(TINY_OPTS)
    onnx_path = str(tmp_path / "vltdet.onnx")
    diff = export_model.main(
        ["--config-file", _write(cfg, tmp_path), "--output", onnx_path, "--size", "64", "96"]
    )
    assert diff <= PARITY
    assert len(onnx.load(onnx_path).graph.output) == 5  # boxes, classes, masks, scores, size


def test_unknown_meta_architecture_is_rejected(tmp_path):
    cfg = tiny_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    with pytest.raises(ValueError, match="META_ARCHITECTURE"):
        export_model.main(["--config-file", _write(cfg, tmp_path), "--output", "x.onnx"])
