"""The VLTSeg training forward and loss read no device value on the host (issue 11): every op
that would make the host wait for a GPU (``.item()``, ``.tolist()``, ``bool(tensor)``,
``nonzero``, ``unique``, boolean indexing, ...) is caught on tensors that derive from the model's
parameters and buffers or from what moved to the device; the only transfer is the matcher's,
once per step. And the random numbers are drawn in official Mask2Former's order."""
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import vltseg.meta_arch as meta_arch
from vltseg.modeling import HungarianMatcher, SetCriterion

from .tiny_model import batch, tiny_cfg

aten = torch.ops.aten
# Ops whose result size or value needs the device's data on the host.
SYNCING = {
    aten._local_scalar_dense.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.nonzero.default,
    aten.masked_select.default,
    aten._unique2.default,
    aten.unique_dim.default,
    aten.unique_consecutive.default,
    aten.repeat_interleave.Tensor,
}


class DeviceValueGuard(TorchDispatchMode):
    """Marks tensors that would live on the device (sources, and whatever is computed from
    them) and raises when a syncing op reads one. ``allowed`` counts calls of the transfer
    that is allowed (the matcher's) is flagged by ``in_allowed_transfer``."""

    def __init__(self, sources):
        super().__init__()
        self._ids = {id(t) for t in sources}
        self._keep = list(sources)
        self.in_allowed_transfer = False

    def mark(self, tensor):
        self._ids.add(id(tensor))
        self._keep.append(tensor)
        return tensor

    def is_device(self, tensor):
        return isinstance(tensor, torch.Tensor) and id(tensor) in self._ids

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        from_device = any(self.is_device(t) for t in inputs)
        if from_device and func in SYNCING:
            raise AssertionError(f"host-device synchronization: {func} on a device tensor")
        if from_device and func is aten.index.Tensor:
            if any(t is not None and t.dtype == torch.bool for t in args[1]):
                raise AssertionError("host-device synchronization: boolean-mask indexing")
        out = func(*args, **kwargs)
        if from_device:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor):
                    self.mark(t)
        return out


def test_training_forward_and_loss_never_read_device_values(monkeypatch):
    model = build_model(tiny_cfg())
    model.train()
    inputs = batch()
    inputs[1]["sem_seg"][:] = 255  # an image without any target
    sources = list(model.parameters()) + list(model.buffers())
    guard = DeviceValueGuard(sources)

    # What VLTSeg moves to the device counts as device data from then on.
    real_move = meta_arch.to_device_async
    monkeypatch.setattr(
        meta_arch, "to_device_async", lambda t, device: guard.mark(real_move(t, device).clone())
    )
    transfers = []
    real_assign = HungarianMatcher.assign

    def assign(costs, counts):
        transfers.append(tuple(costs.shape))
        guard.in_allowed_transfer = True  # the one allowed transfer
        try:
            return real_assign(costs, counts)
        finally:
            guard.in_allowed_transfer = False

    monkeypatch.setattr(HungarianMatcher, "assign", staticmethod(assign))
    for name in ("tolist", "item", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        real = getattr(torch.Tensor, name)

        def checked(self, *a, _real=real, _name=name, **k):
            if guard.is_device(self) and not guard.in_allowed_transfer:
                raise AssertionError(f"host-device synchronization: Tensor.{_name}")
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, checked)

    with EventStorage(), guard:
        losses = model(inputs)
    assert len(transfers) == 1  # all predictions (final + 2 auxiliary) in one transfer
    assert transfers[0][:3] == (3, 2, model.sem_seg_head.predictor.num_queries)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_guard_catches_a_sync():
    # The mechanism itself: the old per-image torch.unique on a device label map is caught.
    labels = torch.randint(0, 3, (4, 4))
    guard = DeviceValueGuard([labels])
    with guard:
        try:
            torch.unique(labels)
        except AssertionError as err:
            assert "synchronization" in str(err)
        else:
            raise AssertionError("torch.unique on a device tensor went unnoticed")


def _criterion(num_points=16):
    return SetCriterion(
        3,
        HungarianMatcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=num_points),
        weight_dict={},
        eos_coef=0.1,
        losses=["labels", "masks"],
        num_points=num_points,
        oversample_ratio=3.0,
        importance_sample_ratio=0.75,
    )


def test_random_draws_follow_the_official_order_with_an_all_ignore_image():
    B, Q, P = 3, 4, 16
    g = torch.Generator().manual_seed(1)
    layer = lambda: {  # noqa: E731
        "pred_logits": torch.randn(B, Q, 4, generator=g),
        "pred_masks": torch.randn(B, Q, 8, 8, generator=g),
    }
    outputs = {**layer(), "aux_outputs": [layer()]}
    masks = torch.zeros(2, 8, 8)
    masks[0, :4], masks[1, 4:] = 1, 1
    targets = [
        {"labels": torch.tensor([0, 2]), "masks": masks},
        {"labels": torch.zeros(0, dtype=torch.int64), "masks": torch.zeros(0, 8, 8)},  # ignored
        {"labels": torch.tensor([1]), "masks": masks[:1]},
    ]
    torch.manual_seed(7)
    _criterion(P)(outputs, targets)
    after_ours = torch.rand(8)

    # Official order, per prediction: the matcher draws (1, P, 2) for EVERY image, the image
    # without targets included; then the mask loss draws its candidates and uniform points for
    # the 3 matched masks.
    torch.manual_seed(7)
    for _ in range(2):
        for _ in range(B):
            torch.rand(1, P, 2)
        torch.rand(3, 3 * P, 2)
        torch.rand(3, P - int(0.75 * P), 2)
    torch.testing.assert_close(after_ours, torch.rand(8), rtol=0, atol=0)

    torch.manual_seed(7)
    matcher = HungarianMatcher(num_points=P)
    indices = matcher({k: outputs[k] for k in ("pred_logits", "pred_masks")}, targets)
    assert [len(i) for i, _ in indices] == [2, 0, 1]
    after_matcher = torch.rand(4)
    torch.manual_seed(7)
    for _ in range(B):
        torch.rand(1, P, 2)
    torch.testing.assert_close(after_matcher, torch.rand(4), rtol=0, atol=0)


def test_encoder_spatial_shapes_are_python_ints():
    # Device tensors here would cost a .tolist() synchronization in the pixel decoder and in
    # every deformable-attention layer.
    from vltseg.modeling.deformable_encoder import DeformableTransformerEncoder

    encoder = DeformableTransformerEncoder(
        d_model=32, nhead=2, num_encoder_layers=1, dim_feedforward=32, num_feature_levels=2
    )
    srcs = [torch.randn(1, 32, 3, 5), torch.randn(1, 32, 2, 2)]
    memory, shapes, starts = encoder(srcs, [torch.zeros_like(s) for s in srcs])
    assert memory.shape == (1, 19, 32)
    assert shapes == [(3, 5), (2, 2)] and starts == [0, 15]
    assert all(type(v) is int for hw in shapes for v in hw) and all(type(s) is int for s in starts)
