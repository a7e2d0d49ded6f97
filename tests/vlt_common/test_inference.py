"""Whole-image, sliding-window and TTA inference (vlt_common.inference) with small score
functions."""
import pytest
import torch
from torch import nn

from vlt_common.inference import (
    SlidingWindow,
    dense_inference,
    sliding_window_inference,
    tta_inference,
    whole_inference,
)

K = 5


class _Recorder:
    """Score function wrapper that records the input shapes it is called with."""

    def __init__(self, fn):
        self.fn = fn
        self.shapes = []

    def __call__(self, x):
        self.shapes.append(tuple(x.shape))
        return self.fn(x)


def _conv(kernel_size):
    conv = nn.Conv2d(3, K, kernel_size, padding=kernel_size // 2)
    conv.requires_grad_(False)
    return conv


@pytest.mark.parametrize("width", [96, 95])
def test_one_window_equals_whole_image(width):
    # With a 3x3 conv, padding changes the border pixels: equality shows that the window sees
    # exactly the input the whole-image pass sees (same padding to 64x96).
    fn = _conv(3)
    images = torch.randn(2, 3, 64, width)
    whole = whole_inference(fn, images, size_divisibility=32)
    window = SlidingWindow(crop_size=(64, 96), stride=(48, 64), batch_size=3)
    slide = sliding_window_inference(fn, images, window=window, size_divisibility=32)
    assert whole.shape == slide.shape == (2, K, 64, width)
    torch.testing.assert_close(slide, whole, rtol=0, atol=1e-6)


def test_whole_inference_pads_to_divisibility_and_crops_back():
    rec = _Recorder(_conv(1))
    out = whole_inference(rec, torch.randn(1, 3, 50, 70), size_divisibility=32)
    assert rec.shapes == [(1, 3, 64, 96)]
    assert out.shape == (1, K, 50, 70)


def test_overlapping_windows_are_averaged():
    # A pointwise score function gives every window the same value per pixel, so the average of
    # the overlaps must equal the whole-image result exactly (up to float rounding).
    fn = _conv(1)
    images = torch.randn(1, 3, 100, 150)
    window = SlidingWindow(crop_size=(64, 64), stride=(40, 40), batch_size=2)
    slide = sliding_window_inference(fn, images, window=window)
    torch.testing.assert_close(slide, fn(images), rtol=0, atol=1e-5)


def test_window_grid_and_batching():
    rec = _Recorder(lambda x: torch.ones(x.shape[0], K, *x.shape[-2:]))
    images = torch.zeros(2, 3, 100, 150)
    window = SlidingWindow(crop_size=(64, 64), stride=(40, 40), batch_size=4)
    out = sliding_window_inference(rec, images, window=window)
    # mmseg grid: rows ceil((100-64)/40)+1 = 2, cols ceil((150-64)/40)+1 = 4 -> 8 windows/image.
    assert sum(s[0] for s in rec.shapes) == 2 * 8
    assert [s[0] for s in rec.shapes] == [4, 4, 4, 4]
    assert all(s[-2:] == (64, 64) for s in rec.shapes)
    torch.testing.assert_close(out, torch.ones(2, K, 100, 150))


def test_image_smaller_than_window_is_padded():
    rec = _Recorder(_conv(1))
    images = torch.randn(1, 3, 40, 50)
    window = SlidingWindow(crop_size=(64, 96), stride=(32, 32))
    out = sliding_window_inference(rec, images, window=window, size_divisibility=32)
    assert rec.shapes == [(1, 3, 64, 96)]
    torch.testing.assert_close(out, rec.fn(images), rtol=0, atol=1e-6)


def test_window_rounded_up_to_divisibility():
    rec = _Recorder(_conv(1))
    window = SlidingWindow(crop_size=(50, 50), stride=(40, 40))
    sliding_window_inference(rec, torch.randn(1, 3, 80, 80), window=window, size_divisibility=32)
    assert {s[-2:] for s in rec.shapes} == {(64, 64)}


def test_bad_window_settings():
    with pytest.raises(ValueError, match="stride"):
        SlidingWindow(crop_size=(64, 64), stride=(80, 32))
    with pytest.raises(ValueError, match="positive"):
        SlidingWindow(crop_size=(64, 64), stride=(32, 32), batch_size=0)


def test_tta_shapes_scales_and_flip():
    rec = _Recorder(_conv(3))
    images = torch.randn(2, 3, 64, 95)
    infer = lambda x: whole_inference(rec, x, size_divisibility=32)  # noqa: E731
    out = tta_inference(infer, images, scales=(0.5, 1.0, 1.5), flip=True)
    assert out.shape == (2, K, 64, 95)
    assert len(rec.shapes) == 6
    assert {s[-2:] for s in rec.shapes} == {(32, 64), (64, 96), (96, 160)}
    assert torch.isfinite(out).all()


def test_tta_flip_of_symmetric_function_is_identity():
    # A pointwise function commutes with flipping: flip TTA at scale 1 equals plain inference.
    fn = _conv(1)
    images = torch.randn(1, 3, 32, 48)
    out = tta_inference(fn, images, scales=(1.0,), flip=True)
    torch.testing.assert_close(out, fn(images), rtol=0, atol=1e-6)


def test_tta_averages_views():
    # A score function that reports the image width: TTA must average the per-view values after
    # resizing them back.
    def width_fn(x):
        return torch.full((x.shape[0], 1, *x.shape[-2:]), float(x.shape[-1]))

    out = tta_inference(width_fn, torch.zeros(1, 3, 40, 40), scales=(0.5, 1.0, 2.0))
    torch.testing.assert_close(out, torch.full((1, 1, 40, 40), (20 + 40 + 80) / 3))


def test_dense_inference_dispatch():
    fn = _conv(1)
    images = torch.randn(1, 3, 64, 96)
    plain = dense_inference(fn, images, size_divisibility=32)
    torch.testing.assert_close(plain, fn(images))
    window = SlidingWindow(crop_size=(32, 32), stride=(16, 16), batch_size=8)
    slide_tta = dense_inference(fn, images, sliding_window=window, tta_scales=(1.0,), tta_flip=True)
    torch.testing.assert_close(slide_tta, fn(images), rtol=0, atol=1e-5)


def test_tta_rejects_bad_scales():
    with pytest.raises(ValueError, match="scales"):
        tta_inference(lambda x: x, torch.zeros(1, 3, 8, 8), scales=(0.0,))


def test_scores_are_not_shifted_by_resizing():
    # Bilinear down/up-sampling of a constant map stays constant (no border artefacts).
    images = torch.zeros(1, 3, 37, 53)
    out = tta_inference(lambda x: torch.ones(1, 1, *x.shape[-2:]), images, scales=(0.75, 1.25))
    torch.testing.assert_close(out, torch.ones(1, 1, 37, 53))
