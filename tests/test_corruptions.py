"""Common corruptions: deterministic, each one real, stronger with severity; accuracy with a known answer."""

from __future__ import annotations

import io
import math

import kornia.filters as KF
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import gaussian_filter
from torch import nn

from fkt.corruptions import CORRUPTIONS, PARAMETERS, SEVERITIES, corrupt, corruption_accuracy


def textured(n: int = 16, size: int = 32) -> torch.Tensor:
    """Smooth random colour fields with edges: closer to photographs than flat colours or pure noise."""
    noise = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1))
    sigma = 1.5 * size / 32
    side = 2 * int(3 * sigma) + 1
    fields = ((KF.gaussian_blur2d(noise, (side, side), (sigma, sigma)) - 0.5) * 4 + 0.5).clamp(0, 1)
    return (fields * 255).round().to(torch.uint8)


def distance(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_each_corruption_keeps_shape_and_type_and_changes_the_image(name):
    images = textured(4)
    out = corrupt(images, name, 3)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert distance(out, images) > 1.0


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_deterministic_for_a_seed(name):
    images = textured(4)
    first = corrupt(images, name, 4, torch.Generator().manual_seed(7))
    assert torch.equal(first, corrupt(images, name, 4, torch.Generator().manual_seed(7)))
    if name.endswith("_noise"):
        assert not torch.equal(first, corrupt(images, name, 4, torch.Generator().manual_seed(8)))


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("name", [n for n in CORRUPTIONS if n != "pixelate"])
def test_stronger_with_severity(name, size):
    images = textured(16, size)
    distances = [distance(corrupt(images, name, s), images) for s in SEVERITIES]
    assert distances[0] > 0 and distances == sorted(distances) and len(set(distances)) == 5, distances


@pytest.mark.parametrize("size", [32, 96])
def test_pixelation_keeps_fewer_distinct_columns_with_severity(size):
    """Distance to the clean image is no measure here (a 0.95 rescale shifts every pixel): the
    resolution left is, at most int(side * factor / scale) distinct columns."""
    images = textured(4, size)
    columns = [len(torch.unique(corrupt(images, "pixelate", s)[0, 0], dim=1).T) for s in SEVERITIES]
    assert columns == sorted(columns, reverse=True) and len(set(columns)) == 5, columns
    assert columns[-1] <= int(size * 0.65 / math.sqrt(size / 32))


def reference(name: str, c: float, image: np.ndarray) -> np.ndarray:
    """CIFAR-10-C's arithmetic (make_cifar_c.py: scikit-image's gaussian is scipy's filter, edges
    repeated; PIL's codec and BOX resampling; np.uint8 truncates), at the scale fkt documents."""
    side = image.shape[0]
    scale = math.sqrt(max(side, 32) / 32)
    if name == "jpeg":
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, "JPEG", quality=c)
        return np.asarray(Image.open(buffer))
    if name == "pixelate":
        small = int(side * c / scale)
        return np.asarray(Image.fromarray(image).resize((small, small), Image.BOX).resize((side, side), Image.BOX))
    x = image / 255.0
    if name == "gaussian_blur":
        out = np.stack([gaussian_filter(x[..., k], c * scale, mode="nearest", truncate=4.0) for k in range(3)], -1)
    else:  # contrast
        mean = x.mean(axis=(0, 1), keepdims=True)
        out = (x - mean) * c + mean
    return np.uint8(np.clip(out, 0, 1) * 255)


@pytest.mark.parametrize("size", [32, 128])
@pytest.mark.parametrize("name", ["gaussian_blur", "contrast", "jpeg", "pixelate"])
def test_agrees_with_cifar10c_arithmetic(name, size):
    """At 32 px the reference itself; at 128 px blur and pixel blocks twice as large (sqrt(128 / 32))."""
    images = textured(4, size)
    pixels = images.permute(0, 2, 3, 1).numpy()
    for severity, c in zip(SEVERITIES, PARAMETERS[name]):
        expected = np.stack([reference(name, c, image) for image in pixels]).astype(int)
        got = corrupt(images, name, severity).permute(0, 2, 3, 1).numpy().astype(int)
        off = np.abs(got - expected)
        assert off.max() <= 1 and (off > 0).mean() < 1e-3, (severity, off.max(), (off > 0).mean())


def test_brightness_brightens_and_contrast_flattens():
    images = textured(8)
    assert corrupt(images, "brightness", 5).float().mean() > images.float().mean() + 20
    assert corrupt(images, "contrast", 5).float().std() < 0.3 * images.float().std()
    channel_means = images.float().mean(dim=(2, 3))
    assert torch.allclose(corrupt(images, "contrast", 3).float().mean(dim=(2, 3)), channel_means, atol=1.0)


def test_unknown_names_and_other_images_are_refused():
    with pytest.raises(ValueError, match="fog"):
        corrupt(textured(1), "fog", 1)
    with pytest.raises(ValueError, match="severity 6"):
        corrupt(textured(1), "jpeg", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(textured(1).float(), "jpeg", 1)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(textured(1)[:, :1], "contrast", 1)


class Always(nn.Module):
    """A stand-in classifier that answers `label` whatever it sees (fkt modules' interface)."""

    def __init__(self, label: int) -> None:
        super().__init__()
        self.label = label
        self.normalize = nn.Identity()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(torch.full((len(images),), self.label), 3).float()


class MeanRed(nn.Module):
    """Reads the class from the image's brightness: robust to some corruptions, not others."""

    normalize = staticmethod(lambda images: images.float() / 255)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        level = images.mean(dim=(1, 2, 3))
        return -torch.stack([(level - c).abs() for c in (0.2, 0.5, 0.8)], dim=1)


def loader(batch: int = 7):
    targets = torch.tensor([0, 1, 2, 0, 0, 1, 2, 2, 0, 1, 0, 0, 2, 1, 0, 0, 1, 2, 0, 0])
    levels = torch.tensor([0.2, 0.5, 0.8])[targets]
    images = (levels.view(-1, 1, 1, 1) * 255).round().to(torch.uint8).expand(-1, 3, 16, 16).contiguous()
    images = (images.float() + torch.randint(-20, 21, images.shape, generator=torch.Generator().manual_seed(0)))
    images = images.clamp(0, 255).to(torch.uint8)
    return [(images[i:i + batch], targets[i:i + batch]) for i in range(0, len(targets), batch)], targets


def test_a_constant_classifier_scores_its_class_share_in_every_cell():
    batches, targets = loader()
    model = Always(0).train()
    result = corruption_accuracy(model, batches)
    share = (targets == 0).float().mean().item()
    assert set(result) == {"mean_accuracy", "per_corruption", "per_severity", "seed"} and result["seed"] == 0
    assert result["mean_accuracy"] == pytest.approx(share)
    assert list(result["per_corruption"]) == list(CORRUPTIONS) == list(result["per_severity"])
    assert all(acc == [pytest.approx(share)] * 5 for acc in result["per_severity"].values())
    assert model.training  # left as it came


def test_an_empty_loader_is_refused():
    with pytest.raises(ValueError, match="no images"):
        corruption_accuracy(Always(0), [])


def test_accuracy_is_the_same_for_the_same_seed_and_order():
    batches, _ = loader()
    first = corruption_accuracy(MeanRed(), batches, seed=3)
    assert first == corruption_accuracy(MeanRed(), batches, seed=3)
    assert all(0 <= acc <= 1 for accs in first["per_severity"].values() for acc in accs)
    assert first["per_severity"]["brightness"][0] > first["per_severity"]["brightness"][-1]
    assert first["per_corruption"]["brightness"] < first["per_corruption"]["jpeg"]  # brightness moves the level
