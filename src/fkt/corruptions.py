"""Accuracy under common corruptions: how robust a classifier is, beside how accurate.

Hendrycks et al. (2019) found that an auxiliary self-supervised loss makes a classifier more
robust to common corruptions while its clean accuracy stays flat; the paper claims more robust
representations from Grad-CAM pictures alone. This measures it, on the run's own test split.

Seven corruptions of CIFAR-10-C (Hendrycks & Dietterich 2019, `make_cifar_c.py` in
hendrycks/robustness; the `imagecorruptions` package holds ImageNet-C's harsher numbers), with
CIFAR-10-C's severity parameters and arithmetic:

- torch: Gaussian and shot (Poisson) noise, drawn with the caller's generator, and contrast;
- kornia: the Gaussian blur (`gaussian_blur2d`, scipy's kernel radius int(4 sigma + 0.5) and
  edge replication, as scikit-image's `gaussian` had) and the HSV round trip of brightness;
- PIL: JPEG through its real codec, and pixelation with PIL's BOX resampling down and up, as
  CIFAR-10-C did: `F.interpolate(mode="area")` pools other pixels than BOX at non-integer
  ratios (measured: 10 grey levels apart on average at 32 px), BOX up is a nearest-neighbour.

The package itself would pull OpenCV and scikit-image (and Wand) in for this arithmetic. Values
are computed in float64 and truncated to uint8, as np.uint8 did in CIFAR-10-C. Measured at 32 px
against the reference's arithmetic (scipy, PIL, scikit-image's HSV formulas): contrast, JPEG and
pixelation agree bit for bit, blur on all but about 1 pixel in 100,000, brightness on all but 3
in 1,000; those differ by one level, where the exact value is a whole level and float rounding
falls either side.

Sizes: CIFAR-10-C is defined at 32 px; fkt runs 32 to 224 px. The blur's sigma and the
pixelation's block (1/fraction kept, in pixels) grow by sqrt(shorter side / 32), 1 at 32 px and
below, so 2.6x at 224 px. Keeping them in pixels would make both near no-ops on a 224 px photo
(sigma 0.4 px); scaling them with the side (7x) would treat it as 32 px of detail (severity 1
would pixelate it to 30 px). The square root sits between, where Hendrycks & Dietterich's own
224 px ImageNet-C parameters sit relative to their CIFAR-10-C ones (blur sigma 2.5-6x, pixel
block 1.6-2.6x). Noise, contrast, brightness and JPEG act per pixel or per 8x8 block and are
kept as defined.

The noise of `corruption_accuracy` is drawn on the CPU from a generator per (seed, corruption,
severity), so the corrupted images are the same on any device, given the loader's batches.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable
from functools import cached_property
from typing import Any

import kornia.color as KC
import kornia.filters as KF
import numpy as np
import torch
from PIL import Image

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETERS = {  # CIFAR-10-C's (make_cifar_c.py), severity 1 to 5
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # sigma on [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # photons at full intensity (Poisson)
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels at 32 px
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # kept fraction of the distance to the channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # fraction of each side kept at 32 px, then scaled back up
}
CORRUPTIONS = tuple(PARAMETERS)
REFERENCE_SIZE = 32


class _Batch:
    """The forms of one uint8 batch that corruptions share, each made once (not per severity)."""

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"corrupt takes uint8 (N, 3, H, W) RGB images, not {images.dtype} {tuple(images.shape)}")
        self.images = images

    @cached_property
    def unit(self) -> torch.Tensor:
        """[0, 1] in float64, numpy's precision in CIFAR-10-C, so that truncation agrees with it."""
        return self.images.to(torch.float64) / 255

    @cached_property
    def pixels(self) -> np.ndarray:
        """(N, H, W, 3) uint8 on the CPU, for PIL."""
        return self.images.permute(0, 2, 3, 1).cpu().numpy()

    @cached_property
    def scale(self) -> float:
        """How much a blur or a pixel block grows beyond CIFAR-10-C's (see the module's docstring)."""
        return math.sqrt(max(min(self.images.shape[-2:]), REFERENCE_SIZE) / REFERENCE_SIZE)

    @cached_property
    def channel_mean(self) -> torch.Tensor:
        return self.unit.mean(dim=(2, 3), keepdim=True)

    @cached_property
    def hsv(self) -> torch.Tensor:
        return KC.rgb_to_hsv(self.unit, eps=0.0)  # no bias in saturation: scikit-image's rgb2hsv has none


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Clipped to [0, 1] and truncated, as CIFAR-10-C's np.uint8(np.clip(x, 0, 1) * 255)."""
    return (x.clamp(0, 1) * 255).to(torch.uint8)


def _with_pil(batch: _Batch, change: Callable[[Image.Image], Image.Image]) -> torch.Tensor:
    out = np.stack([np.asarray(change(Image.fromarray(image)).convert("RGB")) for image in batch.pixels])
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous().to(batch.images.device)


def _noise(batch: _Batch, c: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(batch.images.shape, generator=generator, device=generator.device, dtype=torch.float64)
    return _to_uint8(batch.unit + c * noise.to(batch.images.device))


def _shot(batch: _Batch, c: float, generator: torch.Generator) -> torch.Tensor:
    photons = torch.poisson(batch.unit.to(generator.device) * c, generator=generator)
    return _to_uint8(photons.to(batch.images.device) / c)


def _blur(batch: _Batch, c: float, generator: torch.Generator) -> torch.Tensor:
    sigma = c * batch.scale
    side = 2 * int(4 * sigma + 0.5) + 1  # scipy's gaussian_filter (truncate=4), which scikit-image calls
    return _to_uint8(KF.gaussian_blur2d(batch.unit, (side, side), (sigma, sigma), border_type="replicate"))


def _contrast(batch: _Batch, c: float, generator: torch.Generator) -> torch.Tensor:
    return _to_uint8((batch.unit - batch.channel_mean) * c + batch.channel_mean)


def _brightness(batch: _Batch, c: float, generator: torch.Generator) -> torch.Tensor:
    hsv = batch.hsv
    return _to_uint8(KC.hsv_to_rgb(torch.cat([hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)], dim=1)))


def _jpeg(batch: _Batch, c: float, generator: torch.Generator) -> torch.Tensor:
    def compress(image: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(c))
        return Image.open(buffer)

    return _with_pil(batch, compress)


def _pixelate(batch: _Batch, c: float, generator: torch.Generator) -> torch.Tensor:
    height, width = batch.images.shape[-2:]
    small = (max(1, int(width * c / batch.scale)), max(1, int(height * c / batch.scale)))
    return _with_pil(batch, lambda image: image.resize(small, Image.BOX).resize((width, height), Image.BOX))


OPERATIONS = {"gaussian_noise": _noise, "shot_noise": _shot, "gaussian_blur": _blur, "contrast": _contrast,
              "brightness": _brightness, "jpeg": _jpeg, "pixelate": _pixelate}


def _parameter(name: str, severity: int) -> float:
    if name not in OPERATIONS or severity not in SEVERITIES:
        raise ValueError(f"unknown corruption {name!r} or severity {severity}; "
                         f"choose from {CORRUPTIONS} x {SEVERITIES}")
    return PARAMETERS[name][severity - 1]


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) RGB images under one corruption at one severity (1-5), as uint8 on their device.

    The noises draw from `generator` (on its own device; a CPU one gives the same images on every
    device); without one, from a CPU generator seeded 0, so that a call is reproducible."""
    c = _parameter(name, severity)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    return OPERATIONS[name](_Batch(images), c, generator)


def cell_generator(seed: int, corruption: int, severity: int) -> torch.Generator:
    """One generator per (corruption, severity), so each cell's noise depends on nothing else."""
    state = np.random.SeedSequence([seed, corruption, severity]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def _correct(model: torch.nn.Module, images: torch.Tensor, targets: torch.Tensor) -> int:
    logits = model(model.normalize(images)).float()
    return int((logits.argmax(1) == targets).sum())


@torch.no_grad()
def corruption_accuracy(model: Any, loader: Iterable, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Accuracy of `model` (logits = model(model.normalize(uint8 images))) on every image the loader
    yields, under each corruption at each severity.

    Each batch is read once, its shared forms made once, and corrupted 35 ways; each cell's
    generator advances batch by batch, so the result depends on the seed and the loader's order
    alone. The model is left in the training mode it came in."""
    was_training = model.training
    model = model.to(device).eval()
    generators = {(name, s): cell_generator(seed, index, s)
                  for index, name in enumerate(CORRUPTIONS) for s in SEVERITIES}
    correct = dict.fromkeys(generators, 0)
    total = 0
    try:
        for images, targets in loader:
            batch, targets = _Batch(images.to(device)), targets.to(device)
            total += len(targets)
            for (name, severity), generator in generators.items():
                corrupted = OPERATIONS[name](batch, _parameter(name, severity), generator)
                correct[(name, severity)] += _correct(model, corrupted, targets)
    finally:
        model.train(was_training)
    if total == 0:
        raise ValueError("corruption_accuracy: the loader yielded no images")
    per_severity = {name: [correct[(name, s)] / total for s in SEVERITIES] for name in CORRUPTIONS}
    per_corruption = {name: float(np.mean(values)) for name, values in per_severity.items()}
    return {"mean_accuracy": float(np.mean(list(per_corruption.values()))), "per_corruption": per_corruption,
            "per_severity": per_severity, "seed": seed}
