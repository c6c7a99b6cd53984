"""The SimCLR views: shapes, per-image randomness, seeding, crop geometry and probabilities."""

from __future__ import annotations

import pytest
import torch

from fkt.data.transforms import Normalize, SimCLRViews, denormalize, to_float


def colourful(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=gen)


def plain(views: SimCLRViews) -> SimCLRViews:
    """No colour change, no greyscale: only the crop and the flip remain."""
    views.p_jitter = views.p_gray = views.p_blur = 0.0
    return views


@pytest.mark.parametrize("size", [32, 96])  # 96: the large-image recipe, with blur
def test_views_shape_range_and_dtype(size):
    images = colourful(6, size=size)
    out = SimCLRViews(size)(images)
    assert out.shape == (6, 3, size, size) and out.dtype == torch.float32
    pixels = denormalize(out)
    assert torch.isfinite(out).all()
    assert torch.allclose(pixels, denormalize(out).clamp(0, 1))


def test_each_image_gets_its_own_view_and_seeds_repeat():
    same = colourful(1).expand(64, -1, -1, -1).contiguous()
    views = SimCLRViews(32)
    torch.manual_seed(3)
    a = views(same)
    flat = a.flatten(1)
    distinct = torch.cdist(flat, flat) > 1e-3
    assert distinct[~torch.eye(64, dtype=torch.bool)].all()  # every pair of views of one image differs
    torch.manual_seed(3)
    assert torch.equal(views(same), a)  # the torch seed fixes them
    torch.manual_seed(4)
    assert not torch.equal(views(same), a)


def test_full_crop_without_flip_is_the_image_and_with_flip_its_mirror():
    images = colourful(5)
    views = plain(SimCLRViews(32))
    views.scale = views.ratio = (1.0, 1.0)
    views.p_flip = 0.0
    assert torch.allclose(views(images), Normalize()(images), atol=1e-5)
    views.p_flip = 1.0
    assert torch.allclose(views(images), Normalize()(images).flip(-1), atol=1e-5)


def test_crop_covers_the_drawn_fraction_of_the_image():
    """On a horizontal ramp, a square crop of a quarter of the area spans half the ramp."""
    size = 64
    ramp = torch.linspace(0, 1, size).expand(200, 3, size, size).contiguous()
    views = plain(SimCLRViews(size))
    views.scale, views.ratio = (0.25, 0.25), (1.0, 1.0)
    torch.manual_seed(0)
    out = views.crop_flip(ramp)
    row = out[:, 0, size // 2]
    span = row.amax(1) - row.amin(1)
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.03)
    lows = row.amin(1)
    assert lows.min() < 0.1 and lows.max() > 0.4  # the crop's position varies over the image


def test_probabilities_match_the_recipe():
    torch.manual_seed(1)
    images = to_float(colourful(4000, size=8))
    views = SimCLRViews(8)
    grey = views.grayscale(images)
    is_grey = (grey[:, 0] == grey[:, 1]).all(dim=(1, 2)) & (grey[:, 1] == grey[:, 2]).all(dim=(1, 2))
    assert abs(is_grey.float().mean().item() - 0.2) < 0.03
    views.scale = views.ratio = (1.0, 1.0)
    flipped = torch.isclose(views.crop_flip(images), images.flip(-1), atol=1e-5).flatten(1).all(1)
    assert abs(flipped.float().mean().item() - 0.5) < 0.04
    jittered = ~torch.isclose(views.color_jitter(images.clone()), images, atol=1e-4).flatten(1).all(1)
    assert abs(jittered.float().mean().item() - 0.8) < 0.03


def test_small_images_use_the_cifar_recipe():
    assert SimCLRViews(32).blur_kernel is None and SimCLRViews(32).jitter[0] == pytest.approx(0.4)
    big = SimCLRViews(224)
    assert big.blur_kernel == 23 and big.jitter[0] == pytest.approx(0.8)


def test_the_weak_view_is_a_whole_pixel_shift_of_at_most_an_eighth_and_maybe_a_flip():
    from fkt.data.transforms import WeakView

    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    views, clean = WeakView()(images), Normalize()(images)
    found = set()
    for view, image in zip(views, clean):
        matches = [(dx, dy, flip) for flip in (False, True) for dx in range(-4, 5) for dy in range(-4, 5)
                   if torch.equal(torch.roll(image.flip(-1) if flip else image, (-dy, -dx), (1, 2))[:, 4:-4, 4:-4],
                                  view[:, 4:-4, 4:-4])]
        assert matches, "a weak view is not a shifted (and maybe flipped) copy of its image"
        found.update(matches)
    assert {flip for _, _, flip in found} == {False, True} and len({(dx, dy) for dx, dy, _ in found}) > 20
