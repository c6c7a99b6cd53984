"""Accuracy under common corruptions: how robust a classifier is, beside how accurate.

Hendrycks et al. (2019) found that an auxiliary self-supervised loss makes a classifier more
robust to common corruptions while its clean accuracy stays flat; the paper claims more robust
representations from Grad-CAM pictures alone. This measures it, on the run's own test split.

Seven corruptions of CIFAR-10-C (Hendrycks & Dietterich 2019, `make_cifar_c.py`), with its
severity parameters: Gaussian and shot noise, Gaussian blur, contrast, brightness, JPEG and
pixelation. They are written with torch and kornia's ops (blur, HSV) and PIL's real JPEG codec,
rather than with the `imagecorruptions` package, which pulls in OpenCV and scikit-image for the
same arithmetic. CIFAR-10-C is defined at 32 px; at other sizes the blur's sigma scales with the
image side, and pixelation is a fraction of the side already. The noise is drawn on the CPU from a
generator seeded by (seed, corruption, severity), so the corrupted images are the same on any device.
"""

from __future__ import annotations

import io

import kornia.color as KC
import kornia.filters as KF
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

SEVERITIES = (1, 2, 3, 4, 5)
PARAMETERS = {  # CIFAR-10-C's, severity 1 to 5
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),  # sigma on [0, 1]
    "shot_noise": (500, 250, 100, 75, 50),  # photons at full intensity (Poisson)
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1.0),  # sigma in pixels at 32 px
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),  # kept fraction of the distance to the channel mean
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),  # added to HSV value
    "jpeg": (80, 65, 58, 50, 40),  # JPEG quality
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),  # side kept before scaling back up
}
CORRUPTIONS = tuple(PARAMETERS)
REFERENCE_SIZE = 32


def _noise(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return x + c * torch.randn(x.shape, generator=generator).to(x.device)


def _shot(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    return torch.poisson((x * c).cpu(), generator=generator).to(x.device) / c


def _blur(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    sigma = c * x.shape[-1] / REFERENCE_SIZE
    side = 2 * int(np.ceil(4 * sigma)) + 1  # scikit-image's truncate=4, as CIFAR-10-C used
    return KF.gaussian_blur2d(x, (side, side), (sigma, sigma), border_type="replicate")


def _contrast(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    mean = x.mean(dim=(2, 3), keepdim=True)
    return (x - mean) * c + mean


def _brightness(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    hsv = KC.rgb_to_hsv(x)
    return KC.hsv_to_rgb(torch.cat([hsv[:, :2], (hsv[:, 2:] + c).clamp(0, 1)], dim=1))


def _jpeg(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    pixels = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=int(c))
        out.append(np.asarray(Image.open(buffer).convert("RGB")))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).to(x.device).float() / 255


def _pixelate(x: torch.Tensor, c: float, generator: torch.Generator) -> torch.Tensor:
    side = x.shape[-1]
    small = F.interpolate(x, size=(int(side * c), int(side * c)), mode="area")  # PIL's BOX, down
    return F.interpolate(small, size=x.shape[-2:], mode="nearest-exact")  # PIL's BOX, up


OPERATIONS = {"gaussian_noise": _noise, "shot_noise": _shot, "gaussian_blur": _blur, "contrast": _contrast,
              "brightness": _brightness, "jpeg": _jpeg, "pixelate": _pixelate}


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, 3, H, W) RGB images under one corruption at one severity (1-5), as uint8."""
    if name not in OPERATIONS or severity not in SEVERITIES:
        raise ValueError(f"unknown corruption {name!r} or severity {severity}; choose from {CORRUPTIONS} x {SEVERITIES}")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    x = images.float() / 255
    out = OPERATIONS[name](x, PARAMETERS[name][severity - 1], generator)
    return (out.clamp(0, 1) * 255).round().to(torch.uint8)


def cell_generator(seed: int, corruption: int, severity: int) -> torch.Generator:
    """One generator per (corruption, severity), so each cell's noise depends on nothing else."""
    state = np.random.SeedSequence([seed, corruption, severity]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


@torch.no_grad()
def corruption_accuracy(model, loader, device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """Accuracy of `model` on every image the loader yields, under each corruption at each severity.

    Batches are read once and corrupted 35 ways; each cell's generator advances batch by batch, so
    the result depends on the seed and the loader's order alone."""
    model = model.to(device).eval()
    cells = [(name, severity) for name in CORRUPTIONS for severity in SEVERITIES]
    generators = {cell: cell_generator(seed, CORRUPTIONS.index(cell[0]), cell[1]) for cell in cells}
    correct = dict.fromkeys(cells, 0)
    total = 0
    for images, targets in loader:
        images, targets = images.to(device), targets.to(device)
        total += len(targets)
        for cell in cells:
            corrupted = corrupt(images, *cell, generator=generators[cell])
            correct[cell] += int((model(model.normalize(corrupted)).argmax(1) == targets).sum())
    per_severity = {name: [correct[(name, s)] / total for s in SEVERITIES] for name in CORRUPTIONS}
    per_corruption = {name: float(np.mean(values)) for name, values in per_severity.items()}
    return {"mean_accuracy": float(np.mean(list(per_corruption.values()))), "per_corruption": per_corruption,
            "per_severity": per_severity, "seed": seed}
