"""One augmentation recipe for every arm: SimCLR's standard set, scaled to the image size.

Loaders deliver each image once, resized to the run's square size, as uint8 RGB; the
SimCLR views are drawn from that batch on the training device, with independent random
parameters per image (batched, so a CPU or GPU is not starved by per-image Python).

Small images (<= 64 px, CIFAR-like) follow the SimCLR paper's CIFAR recipe: colour-jitter
strength 0.5 and no blur; larger ones get strength 1.0 and a blur whose kernel is 10% of
the image side. The classifier's clean input is the same image, normalised like the views;
its weak view (`classifier_input: weak`) a flipped and shifted copy.

Every random draw takes the caller's `generator` (the training step's own, see `fkt.step`), so a
view depends on its step's seed and on nothing else drawn before it; without one, torch's global
generator.
"""

from __future__ import annotations

import math

import kornia.color as KC
import kornia.enhance as KE
import kornia.filters as KF
import torch
from torch import nn
from torch.nn import functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
SMALL = 64


def to_float(images: torch.Tensor) -> torch.Tensor:
    return images.float().div_(255) if images.dtype == torch.uint8 else images


class Normalize(nn.Module):
    """uint8 or [0, 1] batch -> normalised float batch (the clean classifier input)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return (to_float(images) - self.mean) / self.std


class SimCLRViews(nn.Module):
    """A random SimCLR view of each image in a batch, every parameter drawn per image.

    The parameters are drawn on the batch's device in a few batched calls and applied with
    kornia's functional image ops: kornia's augmentation modules cost about 1,200 tensor ops a
    view (measured), which made the views, not the network, the bulk of a step on an H100.
    """

    def __init__(self, size: int) -> None:
        super().__init__()
        small = size <= SMALL
        strength = 0.5 if small else 1.0
        self.size = size
        self.scale, self.ratio = (0.08, 1.0), (3 / 4, 4 / 3)
        self.p_flip, self.p_jitter, self.p_gray, self.p_blur = 0.5, 0.8, 0.2, 0.5
        self.jitter = (0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength)  # b, c, s, hue (turns)
        self.blur_kernel = None if small else max(3, int(0.1 * size) // 2 * 2 + 1)
        self.blur_sigma = (0.1, 2.0)
        self.normalize = Normalize()

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        g = generator
        x = self.crop_flip(to_float(images), g)
        x = self.color_jitter(x, g)
        x = self.grayscale(x, g)
        if self.blur_kernel is not None:
            x = self.blur(x, g)
        return self.normalize(x)

    def crop_flip(self, x: torch.Tensor, g: torch.Generator | None = None, tries: int = 10) -> torch.Tensor:
        """RandomResizedCrop (torchvision's sampling: 10 tries, else the whole image) and a
        horizontal flip, as one affine resampling."""
        n, _, height, width = x.shape
        dev = x.device
        area = height * width * torch.empty(n, tries, device=dev).uniform_(*self.scale, generator=g)
        ratio = torch.empty(n, tries, device=dev).uniform_(math.log(self.ratio[0]), math.log(self.ratio[1]),
                                                           generator=g).exp_()
        w = torch.sqrt(area * ratio).round()
        h = torch.sqrt(area / ratio).round()
        fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
        first = fits.int().argmax(dim=1, keepdim=True)
        found = fits.any(dim=1)
        w = torch.where(found, w.gather(1, first).squeeze(1), float(width))
        h = torch.where(found, h.gather(1, first).squeeze(1), float(height))
        left = torch.floor(torch.rand(n, device=dev, generator=g) * (width - w + 1))
        top = torch.floor(torch.rand(n, device=dev, generator=g) * (height - h + 1))
        flip = torch.where(torch.rand(n, device=dev, generator=g) < self.p_flip, -1.0, 1.0)
        theta = torch.zeros(n, 2, 3, device=dev)  # output [-1, 1] -> input [-1, 1], pixel edges (align_corners=False)
        theta[:, 0, 0] = flip * w / width
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [n, x.shape[1], self.size, self.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def color_jitter(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """ColorJitter with probability p_jitter: per-image factors, the four steps in a random order
        (one order for the batch, as torchvision and kornia do); images it skips get neutral factors."""
        n, dev = x.shape[0], x.device
        b, c, s, hue = self.jitter
        on = torch.rand(n, device=dev, generator=g) < self.p_jitter

        def factor(lo: float, hi: float, neutral: float) -> torch.Tensor:
            return torch.where(on, torch.empty(n, device=dev).uniform_(lo, hi, generator=g), neutral)

        steps = [
            lambda y: KE.adjust_brightness_accumulative(y, factor(max(0.0, 1 - b), 1 + b, 1.0)),
            lambda y: KE.adjust_contrast_with_mean_subtraction(y, factor(max(0.0, 1 - c), 1 + c, 1.0)),
            lambda y: KE.adjust_saturation_with_gray_subtraction(y, factor(max(0.0, 1 - s), 1 + s, 1.0)),
            lambda y: KE.adjust_hue(y, factor(-hue, hue, 0.0) * 2 * math.pi),
        ]
        order = torch.randperm(4, generator=g, device=g.device) if g is not None else torch.randperm(4)
        for i in order.tolist():
            x = steps[i](x)
        return x.clamp_(0, 1)

    def grayscale(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        gray = KC.rgb_to_grayscale(x).expand_as(x)
        chosen = (torch.rand(x.shape[0], device=x.device, generator=g) < self.p_gray).view(-1, 1, 1, 1)
        return torch.where(chosen, gray, x)

    def blur(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        n = x.shape[0]
        sigma = torch.empty(n, 1, device=x.device).uniform_(*self.blur_sigma, generator=g).expand(n, 2)
        blurred = KF.gaussian_blur2d(x, (self.blur_kernel, self.blur_kernel), sigma)
        chosen = (torch.rand(n, device=x.device, generator=g) < self.p_blur).view(-1, 1, 1, 1)
        return torch.where(chosen, blurred, x)


class WeakView(nn.Module):
    """The semi-supervised field's weak augmentation of a labelled image (FixMatch, Sohn et al.
    2020): a horizontal flip with probability 1/2 and a translation by up to 1/8 of the side each
    way, reflecting at the edges; drawn per image on the batch's device, in one resampling."""

    def __init__(self, shift: float = 0.125) -> None:
        super().__init__()
        self.shift = shift
        self.normalize = Normalize()

    @torch.no_grad()
    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.normalize(self.flip_shift(to_float(images), generator))

    def flip_shift(self, x: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """The flip and the whole-pixel shift of a [0, 1] batch, before normalisation (the strong view
        starts from it too, `fkt.data.strong`)."""
        n, _, height, width = x.shape
        dev = x.device
        flip = torch.where(torch.rand(n, device=dev, generator=g) < 0.5, -1.0, 1.0)
        # whole pixels, so that a shifted image stays as sharp as the original
        sx, sy = int(self.shift * width), int(self.shift * height)
        dx = torch.randint(-sx, sx + 1, (n,), device=dev, generator=g) * 2 / width
        dy = torch.randint(-sy, sy + 1, (n,), device=dev, generator=g) * 2 / height
        theta = torch.zeros(n, 2, 3, device=dev)
        theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = flip, dx, 1.0, dy
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="reflection", align_corners=False)


def denormalize(batch: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] for display (Grad-CAM grids, sample plots)."""
    mean = torch.tensor(MEAN, device=batch.device).view(-1, 1, 1)
    std = torch.tensor(STD, device=batch.device).view(-1, 1, 1)
    return (batch * std + mean).clamp(0, 1)
