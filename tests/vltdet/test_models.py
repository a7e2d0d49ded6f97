"""Mask R-CNN and Cascade Mask R-CNN on the tiny CLIP trunk: losses, gradients, inference,
box-only training and a frozen trunk."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

RPN_LOSSES = {"loss_rpn_cls", "loss_rpn_loc"}
HEADS = {
    "Base-VLTDet.yaml": {"loss_cls", "loss_box_reg"},
    "Base-VLTDet-Cascade.yaml": {
        f"loss_{k}_stage{s}" for k in ("cls", "box_reg") for s in range(3)
    },
}


def _losses(model, batch):
    model.train()
    with EventStorage():
        return model(batch)


@pytest.mark.parametrize("config", sorted(HEADS))
def test_train_step_losses_and_gradients(tiny_cfg, batch, config):
    model = build_model(tiny_cfg(config))
    losses = _losses(model, batch)
    assert set(losses) == RPN_LOSSES | HEADS[config] | {"loss_mask"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values()), losses
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.requires_grad, name
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    # the gradient reaches the first trunk layer and each pyramid level
    trunk = model.backbone.net.trunk
    assert trunk.conv1.weight.grad.abs().sum() > 0
    for stage in model.backbone.stages:
        assert stage[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("config", sorted(HEADS))
def test_inference_outputs(tiny_cfg, batch, config):
    model = build_model(tiny_cfg(config)).eval()
    # ask for the outputs at twice the input size: boxes and masks are rescaled to it
    inputs = [
        {"image": x["image"], "height": 2 * x["height"], "width": 2 * x["width"]} for x in batch
    ]
    with torch.no_grad():
        outputs = model(inputs)
    for x, out in zip(inputs, outputs):
        inst = out["instances"]
        assert inst.image_size == (x["height"], x["width"])
        assert 0 < len(inst) <= 100  # TEST.DETECTIONS_PER_IMAGE
        boxes = inst.pred_boxes.tensor
        assert torch.isfinite(boxes).all()
        assert (boxes[:, 2] <= x["width"]).all() and (boxes[:, 3] <= x["height"]).all()
        assert ((inst.scores >= 0.05) & (inst.scores <= 1)).all()
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 8)).all()
        assert inst.pred_masks.shape == (len(inst), x["height"], x["width"])


def test_box_only(tiny_cfg, batch):
    model = build_model(tiny_cfg("Base-VLTDet-Cascade.yaml", "MODEL.MASK_ON", False))
    for x in batch:
        x["instances"].remove("gt_masks")
    losses = _losses(model, batch)
    assert set(losses) == RPN_LOSSES | HEADS["Base-VLTDet-Cascade.yaml"]
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        inst = model([{"image": batch[0]["image"]}])[0]["instances"]
    assert not inst.has("pred_masks")


def test_frozen_trunk_gets_no_gradient(tiny_cfg, batch):
    model = build_model(tiny_cfg("Base-VLTDet.yaml", "MODEL.VLT_BACKBONE.FINETUNE", "frozen"))
    sum(_losses(model, batch).values()).backward()
    for name, p in model.named_parameters():
        if name.startswith("backbone.net.trunk."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None, name
