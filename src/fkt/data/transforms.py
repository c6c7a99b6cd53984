"""One augmentation recipe for every arm: SimCLR's standard set, scaled to the image size.

Loaders deliver each image once, resized to the run's square size, as uint8 RGB; the
SimCLR views are drawn from that batch on the training device by kornia, with independent
random parameters per image (batched, so a CPU or GPU is not starved by per-image Python).

Small images (<= 64 px, CIFAR-like) follow the SimCLR paper's CIFAR recipe: colour-jitter
strength 0.5 and no blur; larger ones get strength 1.0 and a blur whose kernel is 10% of
the image side. The classifier's clean input is the same image, normalised like the views.
"""

from __future__ import annotations

import kornia.augmentation as K
import torch
from torch import nn

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
    """A random SimCLR view of each image in a batch."""

    def __init__(self, size: int) -> None:
        super().__init__()
        small = size <= SMALL
        strength = 0.5 if small else 1.0
        ops: list[nn.Module] = [
            K.RandomResizedCrop((size, size), scale=(0.08, 1.0)),
            K.RandomHorizontalFlip(p=0.5),
            K.ColorJitter(0.8 * strength, 0.8 * strength, 0.8 * strength, 0.2 * strength, p=0.8),
            K.RandomGrayscale(p=0.2),
        ]
        if not small:
            kernel = max(3, int(0.1 * size) // 2 * 2 + 1)
            ops.append(K.RandomGaussianBlur((kernel, kernel), sigma=(0.1, 2.0), p=0.5))
        self.ops = nn.Sequential(*ops)
        self.normalize = Normalize()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.normalize(self.ops(to_float(images)))


def denormalize(batch: torch.Tensor) -> torch.Tensor:
    """Back to [0, 1] for display (Grad-CAM grids, sample plots)."""
    mean = torch.tensor(MEAN, device=batch.device).view(-1, 1, 1)
    std = torch.tensor(STD, device=batch.device).view(-1, 1, 1)
    return (batch * std + mean).clamp(0, 1)
