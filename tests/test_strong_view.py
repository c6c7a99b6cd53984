"""StrongView: FixMatch's RandAugment + Cutout, batched and seeded (fkt.data.strong)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from fkt.data.strong import CUTOUT_FILL, POOL, StrongView
from fkt.data.transforms import Normalize, WeakView


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(n: int = 16, size: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth random pictures with some texture, uint8 (N, 3, H, W)."""
    g = gen(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = x + 0.1 * torch.rand(n, 3, size, size, generator=g)
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


# USB's pool (semilearn/datasets/augmentation/randaugment.py), on one PIL image.
USB = {
    "AutoContrast": lambda im, v: ImageOps.autocontrast(im),
    "Brightness": lambda im, v: ImageEnhance.Brightness(im).enhance(v),
    "Color": lambda im, v: ImageEnhance.Color(im).enhance(v),
    "Contrast": lambda im, v: ImageEnhance.Contrast(im).enhance(v),
    "Equalize": lambda im, v: ImageOps.equalize(im),
    "Identity": lambda im, v: im,
    "Posterize": lambda im, v: ImageOps.posterize(im, int(v)),
    "Rotate": lambda im, v: im.rotate(v),
    "Sharpness": lambda im, v: ImageEnhance.Sharpness(im).enhance(v),
    "ShearX": lambda im, v: im.transform(im.size, Image.AFFINE, (1, v, 0, 0, 1, 0)),
    "ShearY": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, v, 1, 0)),
    "Solarize": lambda im, v: ImageOps.solarize(im, v),
    "TranslateX": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, v * im.size[0], 0, 1, 0)),
    "TranslateY": lambda im, v: im.transform(im.size, Image.AFFINE, (1, 0, 0, 0, 1, v * im.size[1])),
}


def test_pool_is_usbs():
    assert set(POOL) == set(USB)
    assert POOL["Solarize"] == (0, 256) and POOL["Posterize"] == (4, 8) and POOL["Rotate"] == (-30, 30)


def test_shape_dtype_and_range_like_weak_view():
    x = images()
    out = StrongView()(x, gen())
    weak = WeakView()(x, gen())
    assert out.shape == weak.shape == x.shape and out.dtype == weak.dtype == torch.float32
    bounds = Normalize()(torch.stack([torch.zeros(3, 1, 1), torch.ones(3, 1, 1)]))
    lo, hi = bounds[0].view(1, 3, 1, 1), bounds[1].view(1, 3, 1, 1)
    assert (out >= lo - 1e-5).all() and (out <= hi + 1e-5).all()
    # a float batch in [0, 1] gives the same view, and is not changed in place
    xf = x.float() / 255
    copy = xf.clone()
    assert torch.allclose(StrongView()(xf, gen()), out, atol=1e-5)
    assert torch.equal(xf, copy)


def test_seeded():
    x, view = images(), StrongView()
    assert torch.equal(view(x, gen(3)), view(x, gen(3)))
    assert not torch.equal(view(x, gen(3)), view(x, gen(4)))


def test_per_image():
    view = StrongView()
    same = images(1).expand(16, -1, -1, -1).contiguous()
    out = view(same, gen(1))
    differ = [(out[i] - out[j]).abs().mean().item() for i in range(16) for j in range(i)]
    assert min(differ) > 0.05
    # image 5's view depends on its own pixels and the generator's stream, not on its batch-mates
    a, b = images(seed=0), images(seed=1)
    b[5] = a[5]
    oa, ob = view(a, gen(2)), view(b, gen(2))
    assert torch.equal(oa[5], ob[5])
    assert not torch.equal(oa[4], ob[4])


def test_differs_from_weak_view_and_image():
    x = images(64)
    weak, clean = WeakView()(x, gen()), Normalize()(x)
    # RandAugment and Cutout switched off: the weak view of the same draws
    assert torch.equal(StrongView(ops=("Identity",), cutout=0)(x, gen()), weak)
    # on: measurably apart from it (mean |difference| in normalised units, per image and overall)
    per_image = (StrongView()(x, gen()) - weak).abs().mean((1, 2, 3))
    assert per_image.mean() > 0.3 and (per_image > 0.05).float().mean() > 0.9, per_image
    per_image = (StrongView(weak=False)(x, gen()) - clean).abs().mean((1, 2, 3))
    assert per_image.mean() > 0.3 and (per_image > 0.05).float().mean() > 0.9, per_image


@pytest.mark.parametrize("name", list(POOL))
def test_each_op_matches_usbs_pil_op(name):
    """`apply` against USB's PIL op, at three magnitudes across the op's range."""
    x = images(3, size=32, seed=7)
    lo, hi = POOL[name]
    v = lo + (hi - lo) * torch.tensor([0.1, 0.5, 0.9])
    ours = StrongView.apply(name, x.float() / 255, v) * 255
    for i in range(3):
        pil = Image.fromarray(x[i].permute(1, 2, 0).numpy())
        ref = torch.from_numpy(np.array(USB[name](pil, v[i].item()))).permute(2, 0, 1).float()
        if name in ("AutoContrast", "Brightness", "Color", "Contrast", "Sharpness"):
            # PIL truncates its 8-bit blends (and rounds the grey it blends with); we keep floats
            diff = ours[i] - ref
            assert diff.min() >= -0.5 and diff.max() <= 1.5, (name, i, diff.min(), diff.max())
        else:  # Equalize, Posterize, Solarize and the nearest-pixel geometric ops: the same levels
            assert torch.equal(ours[i].round(), ref), (name, i)


def test_forced_ops_through_forward():
    x = images(32)
    xf = x.float() / 255
    # Identity and no Cutout: the clean, normalised image
    same = StrongView(ops=("Identity",), cutout=0, weak=False)(x, gen())
    assert torch.allclose(same, Normalize()(x), atol=1e-6)
    # Brightness alone: each image scaled by its own factor in USB's range
    view = StrongView(n_ops=1, ops=("Brightness",), cutout=0, weak=False)
    out = view(x, gen()) * Normalize().std + Normalize().mean
    ratio = (out.sum((1, 2, 3)) / xf.sum((1, 2, 3)))
    assert ((ratio > 0.05 - 1e-3) & (ratio < 0.95 + 1e-3)).all() and ratio.std() > 0.1
    assert torch.allclose(out, xf * ratio.view(-1, 1, 1, 1), atol=1e-5)
    # Solarize alone, twice: every pixel is itself, or inverted
    view = StrongView(n_ops=2, ops=("Solarize",), cutout=0, weak=False)
    out = view(x, gen()) * Normalize().std + Normalize().mean
    assert (torch.isclose(out, xf, atol=1e-5) | torch.isclose(out, 1 - xf, atol=1e-5)).all()
    assert not torch.allclose(out, xf, atol=1e-5)
    with pytest.raises(ValueError, match="unknown ops"):
        StrongView(ops=("Invert",))


def test_cutout_is_usbs_square():
    x = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    out = StrongView(ops=("Identity",), weak=False)(x, gen()) * Normalize().std + Normalize().mean
    cut = (out > 1e-4).any(1)  # (N, H, W)
    fill = torch.tensor(CUTOUT_FILL).view(3, 1) / 255
    sides = []
    for i in range(64):
        rows, cols = cut[i].any(1).nonzero().flatten(), cut[i].any(0).nonzero().flatten()
        if len(rows) == 0:
            continue
        # one rectangle, filled with USB's grey
        assert cut[i].sum() == len(rows) * len(cols)
        assert (rows.diff() == 1).all() and (cols.diff() == 1).all()
        assert torch.allclose(out[i][:, cut[i]], fill.expand(3, int(cut[i].sum())), atol=1e-5)
        # a square of side at most 0.5 * 32 + 1 pixels (both ends included), unless clipped by an edge
        assert len(rows) <= 17 and len(cols) <= 17
        inner = rows[0] > 0 and cols[0] > 0 and rows[-1] < 31 and cols[-1] < 31
        if inner:
            assert len(rows) == len(cols)
        sides.append(max(len(rows), len(cols)))
    assert len(sides) >= 60 and max(sides) >= 12 and min(sides) <= 6
